"""Build and install maskrcnn_benchmark with its compiled operators (`maskrcnn_benchmark._C`).

Install torch first, then build in place:

    MAX_JOBS=2 python setup.py build_ext --inplace
    # or: python setup.py build develop   /   python setup.py build_develop
    # or: pip install -e . --no-build-isolation

CPU kernels (csrc/*.cpp, csrc/cpu/*.cpp) and the Autocast kernels (csrc/autocast/*.cpp) are always
built. The CUDA kernels (csrc/cuda/*.cu) are built, for now, only on request: they are compiled and
checked (tools/check_cuda_build.sh) but have not yet run on a GPU. Set, at build time,

    MASKRCNN_BENCHMARK_CUDA_KERNELS=1   and either a CUDA build of torch with nvcc (CUDA_HOME)
                                        or FORCE_CUDA=1 (e.g. a container without a GPU)

(TORCH_CUDA_ARCH_LIST picks the GPU architectures, e.g. "8.0;9.0"). Without it a CUDA machine
builds the CPU kernels only, and CUDA tensors use the portable PyTorch fallbacks
(maskrcnn_benchmark/layers/_fallback.py).
"""
import glob
import os

from setuptools import Command, find_packages, setup

try:
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension
except ImportError as e:  # pragma: no cover - depends on the environment
    raise RuntimeError(
        "maskrcnn_benchmark needs torch at build time: install torch first (see README), then run "
        "`MAX_JOBS=2 python setup.py build_ext --inplace` or `pip install -e . --no-build-isolation`"
    ) from e

ROOT = os.path.dirname(os.path.abspath(__file__))


def _rel(paths):
    return sorted(os.path.relpath(p, ROOT) for p in paths)


def cuda_kernels_requested() -> bool:
    """True when the CUDA kernels are to be compiled (opt-in, see the module docstring)."""
    if os.getenv("MASKRCNN_BENCHMARK_CUDA_KERNELS", "0") != "1":
        if torch.version.cuda is not None and CUDA_HOME is not None:
            print("maskrcnn_benchmark: CUDA torch and nvcc found, but the CUDA kernels are opt-in until they "
                  "have run on a GPU: set MASKRCNN_BENCHMARK_CUDA_KERNELS=1 to build them; building the CPU "
                  "kernels only (CUDA tensors use the portable PyTorch fallbacks)")
        return False
    if (torch.version.cuda is not None and CUDA_HOME is not None) or os.getenv("FORCE_CUDA", "0") == "1":
        return True
    raise RuntimeError("MASKRCNN_BENCHMARK_CUDA_KERNELS=1 needs a CUDA build of torch and nvcc (CUDA_HOME), "
                       f"or FORCE_CUDA=1; found torch {torch.__version__} (CUDA {torch.version.cuda}), "
                       f"CUDA_HOME={CUDA_HOME}")


def get_extensions():
    csrc = os.path.join(ROOT, "csrc")
    sources = _rel(glob.glob(os.path.join(csrc, "*.cpp")) + glob.glob(os.path.join(csrc, "cpu", "*.cpp"))
                   + glob.glob(os.path.join(csrc, "autocast", "*.cpp")))
    cuda_sources = _rel(glob.glob(os.path.join(csrc, "cuda", "*.cu")))

    # -fno-trapping-math lets GCC if-convert the branch-free min/max/select loops (IoU, focal loss)
    # and vectorise them; the kernels never rely on floating point exception flags.
    extra_compile_args = {"cxx": ["-O3", "-fopenmp", "-fno-trapping-math"]}
    extra_link_args = ["-fopenmp"]
    define_macros = []
    extension = CppExtension
    if cuda_kernels_requested():
        extension = CUDAExtension
        sources += cuda_sources
        define_macros.append(("WITH_CUDA", None))
        # No --use_fast_math: it would change exp/log1p/division (focal loss, IoU at the NMS threshold)
        # against the CPU kernels. The architectures come from TORCH_CUDA_ARCH_LIST (torch's
        # cpp_extension reads it; default: the GPUs it sees).
        extra_compile_args["nvcc"] = [
            "-O3",
            "-DCUDA_HAS_FP16=1",
            "-D__CUDA_NO_HALF_OPERATORS__",
            "-D__CUDA_NO_HALF_CONVERSIONS__",
            "-D__CUDA_NO_HALF2_OPERATORS__",
        ]
    return [
        extension(
            "maskrcnn_benchmark._C",
            sources,
            include_dirs=[csrc],
            define_macros=define_macros,
            extra_compile_args=extra_compile_args,
            extra_link_args=extra_link_args,
        )
    ]


class BuildDevelop(Command):
    """`python setup.py build develop` / `build_develop`: build the extension in place.

    Replaces setuptools' deprecated `develop`; the checkout then imports directly (run from the repo
    root or add it to PYTHONPATH; `pip install -e . --no-build-isolation` registers it instead).
    """

    description = "build the C++/CUDA extension in place (build_ext --inplace)"
    user_options = []

    def initialize_options(self):
        pass

    def finalize_options(self):
        pass

    def run(self):
        self.reinitialize_command("build_ext", inplace=1)
        self.run_command("build_ext")


def torch_requirement():
    # Never ask pip for a torch the installed one does not satisfy (it could pull a CUDA wheel).
    major, minor = torch.__version__.split("+")[0].split(".")[:2]
    return f"torch>={major}.{minor}"


setup(
    name="maskrcnn_benchmark",
    version="0.1.0",
    description="Dynamic ATSS / ATSS / AutoAssign / FreeAnchor detectors in PyTorch",
    packages=find_packages(exclude=("configs", "tests*", "tools*")),
    python_requires=">=3.9",
    install_requires=[torch_requirement(), "yacs", "pycocotools", "numpy", "opencv-python-headless"],
    extras_require={
        # evaluation extras: precision-recall plots (pr_curves.png), the faster COCO evaluator and
        # orjson (writes bbox.json several times faster than json)
        "eval": ["matplotlib", "faster-coco-eval", "orjson"],
        # tools/plot_curves.py (training curves from OUTPUT_DIR/metrics.jsonl)
        "plot": ["matplotlib"],
        # TensorBoard event files next to metrics.jsonl (written by the trainer when installed)
        "tensorboard": ["tensorboard"],
        # ONNX export and onnxruntime inference (tools/export_onnx.py, tools/infer_onnx.py);
        # versions tested beside torch 2.13.0
        "deploy": ["onnx>=1.16", "onnxruntime>=1.18", "onnxscript>=0.1", "onnxconverter-common>=1.14",
                   "onnxslim>=0.1.30"],
    },
    ext_modules=get_extensions(),
    cmdclass={
        "build_ext": BuildExtension,
        "develop": BuildDevelop,
        "build_develop": BuildDevelop,
    },
    zip_safe=False,
)
