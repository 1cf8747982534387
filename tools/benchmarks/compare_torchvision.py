#!/usr/bin/env python
"""The project's dense detectors against torchvision's RetinaNet and FCOS, side by side on the CPU.

    python tools/benchmarks/compare_torchvision.py [--size 512 768] [--batch 1] [--iters 5] \
        [--models retinanet,fcos,atss,dynamic_atss,tv_retinanet,tv_fcos] [--threads N] [--no-memory] \
        [--amp bf16] [--tv-channels-last] [--device cuda --amp fp16 --batch 8 --size 800 1344]

Needs torchvision (``pip install -c <(echo torch==<your torch>) torchvision``, e.g. a venv with
torch 2.14.1 + torchvision 0.29.1) and the project's compiled ops built for that torch.

Workload: random weights, ResNet-50-FPN (P3-P7, P6 from P5), one batch of ``--batch`` random
images of ``--size`` (a multiple of 32, so nothing is padded or resized), 80 classes, ``--num-gt``
random GT boxes per image. Inference = forward under ``torch.inference_mode`` (backbone, head,
decoding, post-processing) of the model as the inference tools prepare it: torchvision's
``model.eval()``; the project's ``prepare_for_inference`` (FrozenBN folded into the convs and
channels-last on the CPU; ``--opts TEST.FOLD_FROZEN_BN False TEST.MEMORY_FORMAT contiguous`` gives
the unprepared model). Train step = forward with targets (assignment,
losses) + backward + SGD step (momentum 0.9, lr 0 so that every repetition sees the same
weights; SGD does the same work for any lr). The models run interleaved (A B C ... A B C ...),
``--iters`` rounds after ``--warmup`` warm-up rounds (default 1; bf16 needs about 3: oneDNN's
bf16 kernels and the allocator settle over the first few steps); the table gives the median per
model and its ratio to the torchvision model of the same family (> 1: the project is faster). ``--amp bf16`` runs
every model's inference and training-step forward under the same
``torch.autocast("cpu", dtype=torch.bfloat16)`` (weights stay float32; on CPUs with AMX / AVX-512
BF16 the convolutions run in bf16), so both codebases get the same mixed precision.
``--tv-channels-last`` runs torchvision's models channels-last too (parameters and input batch,
what ``MODEL.CHANNELS_LAST True`` does for the project's; torchvision has no switch for it).

``--device cuda`` runs everything on the GPU (models, inputs, targets): each timed call is
bracketed by ``torch.cuda.synchronize()``, ``--amp fp16|bf16`` is CUDA autocast (fp16 training
steps go through one ``torch.amp.GradScaler`` per model, as the trainer does), and the peak memory
is ``torch.cuda.max_memory_allocated`` during the first step over the allocation before it. The
issue's GPU comparison: ``--device cuda --amp fp16 --batch 8 --size 800 1344`` (800 x 1333
rounded up to a multiple of 32).

Matched settings: FrozenBatchNorm in the backbone with the stem and res2 frozen (torchvision:
``trainable_layers=3``), the stride of every ResNet stage in the 3x3 conv (torchvision's layout;
``MODEL.RESNETS.STRIDE_IN_1X1 False`` for the project), 9 anchors (RetinaNet), no norm in the
RetinaNet head, GroupNorm(32) in the FCOS / ATSS towers, score threshold 0.05, 1000 candidates per
level before NMS, class-aware NMS at 0.5 (RetinaNet) / 0.6 (FCOS, ATSS), 100 detections.

Settings that differ, and why:
- torchvision's ``GeneralizedRCNNTransform`` (normalise + resize to 800 px + pad) is replaced by a
  pass-through: the project normalises and resizes in the data loader, not in the model, so the
  model forward is compared on the same already-prepared tensor.
- The classification bias is set to ``logit(--prior-prob)`` (0.05) in both instead of
  ``logit(0.01)``: with random weights and the 0.01 prior no score passes the 0.05 threshold, and
  post-processing would not run at all; at 0.05 about half of the (anchor, class) pairs pass and
  every level fills its 1000 candidates, a trained model's load or more.
- FCOS thresholds: the project (as the ATSS code) thresholds ``sigmoid(cls)``, torchvision
  ``sqrt(sigmoid(cls) * sigmoid(ctr))``; both then keep the top 1000 per level.
- Loss formulas follow each codebase (RetinaNet: project smooth-L1 on (10, 10, 5, 5) deltas,
  torchvision L1 on (1, 1, 1, 1) deltas; FCOS: both GIoU + centerness BCE); their cost is small.
- ATSS and Dynamic ATSS have no torchvision counterpart; their ratio is against torchvision's
  RetinaNet (the same backbone with a 9 x heavier classification output).

Peak memory: each (model, mode) runs once more in a fresh subprocess; the value is the increase of
the process's peak resident set during its first step over the resident set before it, after the
model and inputs exist (``utils.metric_logger.peak_rss_increase_mib``: the peak is reset first, so
loading CUDA libraries of a CUDA wheel does not hide it; weights not counted, allocator caching is).
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import functools
import json
import math
import os
import statistics
import subprocess
import sys
import time
from typing import Dict, List, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import torch  # noqa: E402
from torch import nn  # noqa: E402

NUM_FG = 80
PROJECT_CONFIGS = {
    "retinanet": "configs/retinanet/retinanet_R_50_FPN_1x.yaml",
    "fcos": "configs/fcos/fcos_R_50_FPN_1x.yaml",
    "atss": "configs/atss/atss_R_50_FPN_1x.yaml",
    "dynamic_atss": "configs/dynamic_atss/dynamic_atss_R_50_FPN_1x.yaml",
}
TORCHVISION_MODELS = ("tv_retinanet", "tv_fcos")
ALL_MODELS = tuple(PROJECT_CONFIGS) + TORCHVISION_MODELS
# the torchvision model each project model is compared with
REFERENCE = {"retinanet": "tv_retinanet", "fcos": "tv_fcos", "atss": "tv_retinanet",
             "dynamic_atss": "tv_retinanet"}


def require_torchvision():
    try:
        import torchvision  # noqa: F401
    except ImportError as e:
        raise SystemExit("compare_torchvision.py needs torchvision: install it for your torch, e.g. "
                         "`pip install -c <(echo torch==$(python -c 'import torch; print(torch.__version__)')) "
                         f"torchvision` ({e})")


def logit(p: float) -> float:
    return -math.log((1 - p) / p)


# ---- inputs -------------------------------------------------------------------------------------
def make_inputs(batch: int, h: int, w: int, num_gt: int, seed: int = 0, device: str = "cpu"):
    """(images Tensor[B, 3, H, W], boxes list of Tensor[G, 4] xyxy, labels list of Tensor[G] in 0..79),
    drawn on the CPU (the same values for every device) and moved to ``device``."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(batch, 3, h, w, generator=g)
    boxes, labels = [], []
    for _ in range(batch):
        xy = torch.rand(num_gt, 2, generator=g) * torch.tensor([w * 0.8, h * 0.8])
        wh = 16 + torch.rand(num_gt, 2, generator=g) * torch.tensor([w * 0.4, h * 0.4])
        boxes.append(torch.cat([xy, (xy + wh).minimum(torch.tensor([float(w), float(h)]))], 1))
        labels.append(torch.randint(0, NUM_FG, (num_gt,), generator=g))
    return images.to(device), [b.to(device) for b in boxes], [lab.to(device) for lab in labels]


# ---- the project's models -----------------------------------------------------------------------
def build_project(name: str, prior_prob: float, opts: List[str], device: str = "cpu"):
    from maskrcnn_benchmark.modeling.detector import build_detection_model
    from maskrcnn_benchmark.config import setup_cfg

    node = {"retinanet": "RETINANET", "fcos": "FCOS", "atss": "ATSS", "dynamic_atss": "ATSS"}[name]
    cfg = setup_cfg(os.path.join(ROOT, PROJECT_CONFIGS[name]), [
        "MODEL.DEVICE", device, "MODEL.WEIGHT", "", "MODEL.RESNETS.STRIDE_IN_1X1", False,
        f"MODEL.{node}.NUM_CLASSES", NUM_FG + 1, f"MODEL.{node}.INFERENCE_TH", 0.05,
        f"MODEL.{node}.PRE_NMS_TOP_N", 1000, "TEST.DETECTIONS_PER_IMG", 100] + list(opts))
    model = build_detection_model(cfg).to(device)
    nn.init.constant_(model.rpn.head.cls_logits.bias, logit(prior_prob))
    return model, cfg


def project_adapter(model, images, boxes, labels):
    """(infer(), loss_dict()) closures for a project model."""
    from maskrcnn_benchmark.structures.bounding_box import BoxList

    h, w = images.shape[-2:]
    targets = []
    for b, lab in zip(boxes, labels):
        t = BoxList(b, (w, h))
        t.add_field("labels", lab + 1)  # 1..80 (0 = background)
        targets.append(t)

    def infer():
        return [len(d) for d in model(images)]

    def losses():
        return model(images, targets)
    return infer, losses


# ---- torchvision's models -----------------------------------------------------------------------
class PassThroughTransform(nn.Module):
    """Stands in for ``GeneralizedRCNNTransform``: batches the images as given (no normalisation,
    resize or padding; the input is already a multiple of 32; channels-last if ``channels_last``)
    and leaves the detections as they are."""

    def __init__(self, channels_last: bool = False):
        super().__init__()
        self.channels_last = channels_last

    def forward(self, images, targets=None):
        from torchvision.models.detection.image_list import ImageList

        tensors = images if isinstance(images, torch.Tensor) else torch.stack(list(images))
        if self.channels_last:
            tensors = tensors.contiguous(memory_format=torch.channels_last)
        return ImageList(tensors, [tuple(tensors.shape[-2:])] * tensors.shape[0]), targets

    def postprocess(self, result, image_shapes, original_image_sizes):
        return result


def build_torchvision(name: str, prior_prob: float, channels_last: bool = False):
    from torchvision.models import resnet50
    from torchvision.models.detection import FCOS, RetinaNet
    from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
    from torchvision.ops.feature_pyramid_network import LastLevelP6P7
    from torchvision.ops.misc import FrozenBatchNorm2d

    body = resnet50(weights=None, norm_layer=FrozenBatchNorm2d)
    backbone = _resnet_fpn_extractor(body, 3, returned_layers=[2, 3, 4],
                                     extra_blocks=LastLevelP6P7(256, 256))
    if name == "tv_retinanet":
        model = RetinaNet(backbone, NUM_FG, score_thresh=0.05, nms_thresh=0.5, detections_per_img=100,
                          topk_candidates=1000)
    else:
        model = FCOS(backbone, NUM_FG, score_thresh=0.05, nms_thresh=0.6, detections_per_img=100,
                     topk_candidates=1000)
    model.transform = PassThroughTransform(channels_last)
    nn.init.constant_(model.head.classification_head.cls_logits.bias, logit(prior_prob))
    if channels_last:
        model.to(memory_format=torch.channels_last)
    return model


def torchvision_adapter(model, images, boxes, labels):
    targets = [{"boxes": b, "labels": lab} for b, lab in zip(boxes, labels)]
    image_list = list(images)

    def infer():
        return [len(d["scores"]) for d in model(image_list)]

    def losses():
        return model(image_list, targets)
    return infer, losses


# ---- one model's two workloads ------------------------------------------------------------------
class Bench:
    """A model's inference and training-step callables (separate copies of the model, so the
    training steps never change the weights inference sees)."""

    def __init__(self, name: str, args, inputs):
        torch.manual_seed(0)
        if name in PROJECT_CONFIGS:
            from maskrcnn_benchmark.modeling.detector import prepare_for_inference

            # SOLVER.AMP tells the builder that the model runs under autocast (CHANNELS_LAST / WINOGRAD "auto": off)
            amp = ["SOLVER.AMP", args.amp] if args.amp else []
            model, cfg = build_project(name, args.prior_prob, list(args.opts or []) + amp, args.device)
            adapter = project_adapter
            prepare = functools.partial(prepare_for_inference, cfg=cfg)  # what test_net / Predictor do
        else:
            model = build_torchvision(name, args.prior_prob, args.tv_channels_last).to(args.device)
            adapter = torchvision_adapter
            prepare = nn.Module.eval
        self.name = name
        self.train_model = copy.deepcopy(model).train()
        self.eval_model = prepare(model)
        self._infer, _ = adapter(self.eval_model, *inputs)
        _, self._losses = adapter(self.train_model, *inputs)
        params = [p for p in self.train_model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.SGD(params, lr=0.0, momentum=0.9)
        self.num_detections = None
        self.device = torch.device(args.device)
        self.amp_dtype = {"": None, "bf16": torch.bfloat16, "fp16": torch.float16}[args.amp]
        # fp16 training needs loss scaling (as the trainer's SOLVER.AMP fp16); bf16 and fp32 none
        self.scaler = torch.amp.GradScaler("cuda") if self.amp_dtype is torch.float16 else None

    def autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def infer(self):
        with torch.inference_mode(), self.autocast():
            self.num_detections = self._infer()

    def train_step(self):
        with self.autocast():
            loss_dict = self._losses()
            loss = sum(loss_dict.values())
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is None:
            loss.backward()
            self.optimizer.step()
        else:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()

    def synchronize(self):
        """Waits for the GPU's queued work (a no-op on the CPU): brackets every timed call."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def run_interleaved(benches: List[Bench], mode: str, iters: int, warmup: int = 1) -> Dict[str, List[float]]:
    """``warmup`` untimed rounds, then ``iters`` rounds of every model in turn; seconds per call."""
    times: Dict[str, List[float]] = {b.name: [] for b in benches}
    for rnd in range(iters + warmup):
        for b in benches:
            fn = b.infer if mode == "infer" else b.train_step
            b.synchronize()
            t0 = time.perf_counter()
            fn()
            b.synchronize()
            dt = time.perf_counter() - t0
            if rnd >= warmup:
                times[b.name].append(dt)
    return times


def memory_worker(args) -> None:
    """Subprocess body: peak-memory increase (MiB) of one first step (CPU: resident set; CUDA: the
    caching allocator's peak allocation); prints a JSON line."""
    from maskrcnn_benchmark.utils.metric_logger import peak_rss_increase_mib

    inputs = make_inputs(args.batch, args.size[0], args.size[1], args.num_gt, device=args.device)
    bench = Bench(args.memory_worker, args, inputs)
    fn = bench.infer if args.memory_mode == "infer" else bench.train_step
    if bench.device.type == "cuda":
        torch.cuda.synchronize(bench.device)
        torch.cuda.reset_peak_memory_stats(bench.device)
        before = torch.cuda.memory_allocated(bench.device)
        fn()
        torch.cuda.synchronize(bench.device)
        peak = (torch.cuda.max_memory_allocated(bench.device) - before) / 2**20
    else:
        peak = peak_rss_increase_mib(fn)
    print(json.dumps({"peak_mib": peak}))


def measure_memory(name: str, mode: str, args) -> float:
    cmd = [sys.executable, os.path.abspath(__file__), "--memory-worker", name, "--memory-mode", mode,
           "--size", str(args.size[0]), str(args.size[1]), "--batch", str(args.batch),
           "--num-gt", str(args.num_gt), "--prior-prob", str(args.prior_prob),
           "--threads", str(torch.get_num_threads()), "--amp", args.amp, "--device", args.device]
    cmd += (["--tv-channels-last"] if args.tv_channels_last else []) + (["--opts", *args.opts] if args.opts else [])
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT).stdout
    return json.loads(out.strip().splitlines()[-1])["peak_mib"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, nargs=2, default=(512, 768), metavar=("H", "W"))
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--iters", type=int, default=5, help="timed rounds after the warm-up rounds")
    p.add_argument("--warmup", type=int, default=1, help="untimed rounds first (bf16: use 3)")
    p.add_argument("--num-gt", type=int, default=10, help="random GT boxes per image")
    p.add_argument("--models", default=",".join(ALL_MODELS),
                   help=f"comma-separated subset of {','.join(ALL_MODELS)}")
    p.add_argument("--modes", default="infer,train", help="infer, train or both")
    p.add_argument("--prior-prob", type=float, default=0.05,
                   help="classification bias = logit(prior) in every model (see the docstring)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    p.add_argument("--opts", nargs="*", default=[], help="extra project config overrides KEY VALUE ...")
    p.add_argument("--amp", default="", choices=["", "bf16", "fp16"],
                   help="every model under torch.autocast(device, this dtype) (default: float32; fp16: CUDA only)")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    p.add_argument("--tv-channels-last", action="store_true",
                   help="torchvision's models channels-last too (parameters and input)")
    p.add_argument("--memory-worker", default="", help=argparse.SUPPRESS)
    p.add_argument("--memory-mode", default="infer", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.size[0] % 32 or args.size[1] % 32:
        p.error(f"--size {args.size[0]} {args.size[1]}: both sides must be multiples of 32 (no padding)")
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        device = torch.device(args.device)
    except RuntimeError:
        p.error(f"--device {args.device}: expected cpu or cuda[:N]")
    if device.type not in ("cpu", "cuda"):
        p.error(f"--device {args.device}: expected cpu or cuda[:N]")
    if device.type == "cuda" and not torch.cuda.is_available():
        p.error(f"--device {args.device}: this torch ({torch.__version__}) sees no CUDA GPU")
    if args.amp == "fp16" and device.type != "cuda":
        p.error("--amp fp16 is CUDA autocast: use it with --device cuda (on the CPU: --amp bf16)")
    require_torchvision()
    if args.memory_worker:
        memory_worker(args)
        return
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    unknown = sorted(set(names) - set(ALL_MODELS))
    if unknown:
        p.error(f"unknown --models {unknown}; choose from {list(ALL_MODELS)}")
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]

    import torchvision

    where = (torch.cuda.get_device_name(device) if device.type == "cuda"
             else f"CPU, {torch.get_num_threads()} threads")
    print(f"torch {torch.__version__}, torchvision {torchvision.__version__}, {where}, "
          f"input {args.batch} x 3 x {args.size[0]} x {args.size[1]}, {args.num_gt} GTs / image, "
          f"{args.iters} interleaved rounds after {args.warmup} warm-up, {args.amp or 'float32'}, "
          f"torchvision {'channels-last' if args.tv_channels_last else 'default layout'}, "
          f"project opts {args.opts or 'none'}, load average {os.getloadavg()[0]:.2f} at start")
    inputs = make_inputs(args.batch, args.size[0], args.size[1], args.num_gt, device=args.device)
    benches = [Bench(n, args, inputs) for n in names]
    results: Dict[Tuple[str, str], float] = {}
    for mode in modes:
        for name, ts in run_interleaved(benches, mode, args.iters, args.warmup).items():
            results[(name, mode)] = statistics.median(ts)
    memory = {}
    if not args.no_memory:
        for name in names:
            for mode in modes:
                memory[(name, mode)] = measure_memory(name, mode, args)

    def ratio(name, mode):
        ref = REFERENCE.get(name)
        if ref is None or (ref, mode) not in results:
            return "-"
        return f"{results[(ref, mode)] / results[(name, mode)]:.2f}x vs {ref}"

    header = ["model"]
    for mode in modes:
        label = "inference" if mode == "infer" else "train step"
        header += [f"{label} ms", f"{label} speed"] + ([f"{label} peak MiB"] if memory else [])
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for b in benches:
        row = [b.name]
        for mode in modes:
            row += [f"{1000 * results[(b.name, mode)]:.0f}", ratio(b.name, mode)]
            if memory:
                row.append(f"{memory[(b.name, mode)]:.0f}")
        print("| " + " | ".join(row) + " |")
    dets = {b.name: b.num_detections for b in benches if b.num_detections is not None}
    if dets:
        print("detections per image (last inference):", dets)
    print(f"load average {os.getloadavg()[0]:.2f} at the end")


if __name__ == "__main__":
    main()
