"""onnxruntime inference of an exported detector (:mod:`.onnx_export`).

- :func:`create_session`: an ``InferenceSession`` on the ``cpu`` / ``cuda`` / ``tensorrt``
  provider (a clear error when onnxruntime lacks it).
- :class:`OnnxDetector`: the session as a detector module, ``detector(ImageList) -> list of
  BoxList``, so the evaluation of :mod:`maskrcnn_benchmark.engine.inference` (``run_test``:
  bbox.json, metrics.json, OUTPUT_DIR/inference/<dataset>/) runs on it unchanged.
- :func:`compare_with_torch`: the largest difference between the ONNX outputs and PyTorch's.
- :func:`benchmark`: images per second of a callable on a fixed batch after a warm-up.
"""
from __future__ import annotations

import logging
import os
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from maskrcnn_benchmark.structures.bounding_box import BoxList
from maskrcnn_benchmark.structures.image_list import ImageList

from .deps import require

__all__ = ["PROVIDERS", "create_session", "OnnxDetector", "compare_with_torch",
           "detections_from_outputs", "benchmark", "build_onnx_detector", "evaluate_onnx",
           "fixed_batch", "graph_num_classes", "level_sizes_of", "build_exported_detector",
           "RUNTIMES"]

logger = logging.getLogger("maskrcnn_benchmark.export")

#: ``--provider`` -> onnxruntime execution providers, in priority order.
PROVIDERS = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}


def create_session(path: str, provider: str = "cpu", intra_op_threads: int = 0):
    """An onnxruntime ``InferenceSession`` of the file ``path`` on ``provider`` (a key of
    :data:`PROVIDERS`); ``intra_op_threads`` 0 = onnxruntime's default."""
    ort = require("onnxruntime", "running ONNX models")
    if provider not in PROVIDERS:
        raise ValueError(f"--provider must be one of {sorted(PROVIDERS)}, got {provider!r}")
    wanted = PROVIDERS[provider][0]
    available = ort.get_available_providers()
    if wanted not in available:
        raise RuntimeError(f"--provider {provider}: onnxruntime {ort.__version__} has no {wanted} "
                           f"(available: {available}); install onnxruntime-gpu for cuda / tensorrt")
    options = ort.SessionOptions()
    if intra_op_threads > 0:
        options.intra_op_num_threads = int(intra_op_threads)
    providers = [p for p in PROVIDERS[provider] if p in available]
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such ONNX model file")
    try:
        return ort.InferenceSession(path, sess_options=options, providers=providers)
    except Exception as e:  # noqa: BLE001  (onnxruntime raises its own exception types)
        raise ValueError(f"{path}: not a loadable ONNX model (corrupt or truncated file, or written "
                         f"by another tool?): {type(e).__name__}: {str(e).strip()[:300]}") from None


def graph_num_classes(session, path: str, num_anchors: int) -> Optional[int]:
    """Foreground classes C of an exported detector: its ``num_classes`` metadata (written by
    :func:`~.onnx_export.export_onnx`), else the rows of its ``cls_logits`` convolution weight
    divided by ``num_anchors`` (files written before the metadata); None when neither is found."""
    meta = session.get_modelmeta().custom_metadata_map
    if "num_classes" in meta:
        return int(meta["num_classes"])
    try:
        import onnx
    except ImportError:
        return None
    model = onnx.load(path, load_external_data=False)
    inits = {i.name: i for i in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Conv" and "cls_logits" in node.name and node.input[1] in inits:
            return int(inits[node.input[1]].dims[0]) // max(1, int(num_anchors))
    return None


def _input_spec(session) -> Tuple[Optional[int], Optional[int], Optional[int], bool]:
    """(fixed batch or None, H, W (both None for a dynamic-shape graph), has image_sizes input)
    of an exported detector session."""
    inputs = {i.name: i for i in session.get_inputs()}
    if "images" not in inputs:
        raise ValueError(f"the ONNX model has inputs {sorted(inputs)}; expected 'images' (a model "
                         "written by tools/export_onnx.py)")
    shape = inputs["images"].shape
    fixed = [isinstance(d, int) for d in shape[2:]]
    if len(shape) != 4 or (any(fixed) and not all(fixed)):
        raise ValueError(f"the ONNX model's 'images' input has shape {shape}; expected "
                         "[B, 3, H, W] with H and W both fixed or both dynamic")
    batch = shape[0] if isinstance(shape[0], int) else None
    h, w = (int(shape[2]), int(shape[3])) if all(fixed) else (None, None)
    return batch, h, w, "image_sizes" in inputs


def level_sizes_of(model: nn.Module, image_hw: Tuple[int, int]) -> Tuple[int, ...]:
    """Candidates per level ``N_l = ceil(H / s_l) * ceil(W / s_l) * A`` of ``model``'s backbone
    strides for an ``image_hw`` input (every stride-2 layer rounds up)."""
    a = int(model.rpn.head.num_anchors)
    return tuple(-(-image_hw[0] // s) * -(-image_hw[1] // s) * a for s in model.backbone.strides)


def detections_from_outputs(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray,
                            image_sizes: Sequence[Tuple[int, int]]) -> List[BoxList]:
    """The padded outputs of a ``--postprocess nms`` graph (boxes [B, K, 4], scores [B, K],
    labels [B, K], label 0 = padding) -> per image a BoxList of size ``(w, h)`` (fields
    ``scores``, ``labels``)."""
    out = []
    for i, (h, w) in enumerate(image_sizes):
        keep = labels[i] > 0
        det = BoxList(torch.from_numpy(np.ascontiguousarray(boxes[i][keep], dtype=np.float32)),
                      (int(w), int(h)))
        det.add_field("scores", torch.from_numpy(np.ascontiguousarray(scores[i][keep], dtype=np.float32)))
        det.add_field("labels", torch.from_numpy(labels[i][keep].astype(np.int64)))
        out.append(det)
    return out


def _normalized(images: ImageList, normalizer) -> torch.Tensor:
    """The batch as the graph's float32 CPU input: a uint8 batch normalised by ``normalizer``
    (zero outside each image), a floating one as it is (already normalised)."""
    x = images.tensors.cpu()
    if x.dtype == torch.uint8:
        if normalizer is None:
            raise ValueError("an exported detector got a uint8 batch (the data loaders') but no "
                             "normalizer: pass normalizer=model.normalizer (INPUT.PIXEL_MEAN / "
                             "PIXEL_STD / TO_BGR255), or a normalised float batch")
        x = normalizer(x, images.image_sizes)
    return x.float()


class OnnxDetector(nn.Module):
    """An exported detector on onnxruntime, called like the PyTorch detector in eval mode.

    Args:
        session: from :func:`create_session` (a ``--postprocess nms`` or ``none`` graph).
        post_processor: the PyTorch post-processor to run on a ``none`` graph's candidates
            (``DensePostProcessor``; needs the model's ``level_sizes``, see ``level_sizes``).
        level_sizes: candidates per level of a ``none`` graph: a sequence (fixed-size graph) or
            a function ``(H, W) -> sequence`` (dynamic-shape graph, :func:`level_sizes_of`).
        normalizer: the model's :class:`~maskrcnn_benchmark.layers.pixel_norm.PixelNormalizer`
            (``model.normalizer``): a uint8 batch (the data loaders') is normalised with it before
            the graph, which takes normalised float32 input; a float batch is taken as normalised.

    ``forward(images: ImageList)`` pads the batch to the graph's H x W (an image larger than
    that is scaled down to fit, with a warning, and its boxes scaled back; a dynamic-shape graph
    takes the batch as it is), runs it in chunks of the graph's batch size (padding the last
    one) and returns per image a BoxList in the image's (resized) frame, as ``GeneralizedRCNN``
    does.
    """

    #: smallest H / W a dynamic-shape model takes (a smaller batch is zero-padded up to it; the
    #: batch-invariant masks make that padding invisible). 0 for an ONNX graph.
    min_side = 0

    def __init__(self, session, post_processor=None, level_sizes=None, normalizer=None):
        super().__init__()
        self.session = session
        self.normalizer = normalizer
        self.batch, self.height, self.width, self.takes_sizes = _input_spec(session)
        self.with_nms = "labels" in {o.name for o in session.get_outputs()}
        self._check_post_processing(post_processor, level_sizes)

    def _outputs(self, names: List[str], feeds: Dict[str, np.ndarray]) -> List[np.ndarray]:
        """The outputs ``names`` of one run on ``feeds`` (the runtime's own call)."""
        return self.session.run(names, feeds)

    def _check_post_processing(self, post_processor, level_sizes) -> None:
        if not self.with_nms and (post_processor is None or level_sizes is None):
            raise ValueError("a --postprocess none graph needs the PyTorch post_processor and "
                             "level_sizes")
        self.post_processor = post_processor
        self.level_sizes = level_sizes if callable(level_sizes) else tuple(level_sizes or ())
        self._warned = False

    def _fit(self, images: ImageList) -> Tuple[torch.Tensor, List[Tuple[int, int]], List[float]]:
        """The batch padded (or scaled down) to H x W; per image the size inside it and the
        factor applied."""
        x = _normalized(images, self.normalizer)
        if self.height is None:  # dynamic shape: the batch as the loader padded it
            pad_h, pad_w = (max(0, self.min_side - n) for n in x.shape[-2:])
            if pad_h or pad_w:
                x = torch.nn.functional.pad(x, (0, pad_w, 0, pad_h))
            return x, [tuple(s) for s in images.image_sizes], [1.0] * x.shape[0]
        out = x.new_zeros(x.shape[0], x.shape[1], self.height, self.width)
        sizes, factors = [], []
        for i, (h, w) in enumerate(images.image_sizes):
            f = min(1.0, self.height / h, self.width / w)
            img = x[i, :, :h, :w]
            if f < 1.0:
                if not self._warned:
                    logger.warning("an image of %dx%d does not fit the graph's %dx%d input: scaled "
                                   "down (export with a larger --height/--width to avoid it)",
                                   h, w, self.height, self.width)
                    self._warned = True
                nh, nw = max(1, int(h * f)), max(1, int(w * f))
                img = torch.nn.functional.interpolate(img[None], size=(nh, nw), mode="bilinear",
                                                      align_corners=False)[0]
                f = (nw / w + nh / h) / 2
            out[i, :, :img.shape[1], :img.shape[2]] = img
            sizes.append((img.shape[1], img.shape[2]))
            factors.append(f)
        return out, sizes, factors

    def _run(self, x: np.ndarray, sizes: List[Tuple[int, int]]) -> List[BoxList]:
        feeds = {"images": x}
        if self.takes_sizes:  # clips the detections and (batch-invariant graphs) masks the canvases
            feeds["image_sizes"] = np.asarray(sizes, dtype=np.float32).reshape(-1, 2)
        if self.with_nms:
            boxes, scores, labels = self._outputs(["boxes", "scores", "labels"], feeds)
            return detections_from_outputs(boxes, scores, labels, sizes)
        from maskrcnn_benchmark.modeling.dense_heads.base import DensePrediction

        scores, boxes, mask = self._outputs(["scores", "boxes", "candidate_mask"], feeds)
        level_sizes = self.level_sizes(x.shape[-2:]) if callable(self.level_sizes) else self.level_sizes
        if scores.shape[1] != sum(level_sizes):
            raise ValueError(f"the graph gave {scores.shape[1]} candidates for a {x.shape[-2]}x"
                             f"{x.shape[-1]} input, the config's model has {sum(level_sizes)}: "
                             "export and evaluate with the same config")
        pred = DensePrediction(torch.from_numpy(scores).float(), torch.from_numpy(boxes).float(),
                               torch.from_numpy(mask), tuple(level_sizes))
        return self.post_processor(pred, sizes)

    @torch.no_grad()
    def forward(self, images: ImageList) -> List[BoxList]:
        x, sizes, factors = self._fit(images)
        n = x.shape[0]
        step = self.batch or n
        results: List[BoxList] = []
        for start in range(0, n, step):
            chunk = x[start:start + step]
            real = chunk.shape[0]
            if self.batch and real < self.batch:
                chunk = torch.cat([chunk, chunk.new_zeros(self.batch - real, *chunk.shape[1:])])
            chunk_sizes = sizes[start:start + real]
            padded_sizes = chunk_sizes + [tuple(chunk.shape[-2:])] * (chunk.shape[0] - real)
            results += self._run(chunk.numpy(), padded_sizes)[:real]
        out = []
        for det, (h, w), f in zip(results, images.image_sizes, factors):
            out.append(det if f == 1.0 else det.resize((int(w), int(h))))
        return out


def compare_with_torch(session, module: nn.Module, inputs: Sequence[torch.Tensor]) -> Dict[str, float]:
    """Largest absolute difference per output between the session and ``module`` (the exported
    PyTorch module) on ``inputs``; boolean / integer outputs count the differing entries."""
    feeds = {i.name: t.cpu().numpy() for i, t in zip(session.get_inputs(), inputs)}
    names = [o.name for o in session.get_outputs()]
    onnx_out = session.run(names, feeds)
    with torch.no_grad():
        torch_out = module(*inputs)
    diffs = {}
    for name, a, b in zip(names, onnx_out, torch_out):
        b = b.cpu().numpy()
        if a.dtype.kind in "fc":
            diffs[name] = float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max()) if a.size else 0.0
        else:
            diffs[name] = float((a != b).sum())
    return diffs


def benchmark(fn: Callable[[], object], batch: int, warmup: int = 3, iters: int = 10,
              sync: Optional[Callable[[], None]] = None) -> Dict[str, float]:
    """Time ``fn()`` (one batch of ``batch`` images) ``iters`` times after ``warmup`` calls.

    Returns ``{"img_per_s", "ms_per_batch", "batch", "iters"}`` (median time per batch).
    """
    for _ in range(max(0, warmup)):
        fn()
    if sync is not None:
        sync()
    times = []
    for _ in range(max(1, iters)):
        start = time.perf_counter()
        fn()
        if sync is not None:
            sync()
        times.append(time.perf_counter() - start)
    median = float(np.median(times))
    return {"img_per_s": batch / median, "ms_per_batch": median * 1000.0, "batch": batch,
            "iters": len(times)}


def build_onnx_detector(cfg, path: str, provider: str = "cpu", intra_op_threads: int = 0) -> OnnxDetector:
    """An :class:`OnnxDetector` of the file ``path`` for ``cfg`` (NUM_CLASSES resolved; the
    PyTorch post-processor of the config is used for a ``--postprocess none`` graph).

    Raises ValueError when the graph's classes (both graphs) or candidates (``none``) do not
    match the config.
    """
    from maskrcnn_benchmark.modeling.dense_heads import get_num_classes, num_classes_key

    from .graph import DenseDetectorGraph

    session = create_session(path, provider, intra_op_threads)
    batch, h, w, _ = _input_spec(session)
    cfg, model = _config_model(cfg)
    _check_num_classes(path, graph_num_classes(session, path, model.rpn.head.num_anchors), cfg, model)
    if "labels" in {o.name for o in session.get_outputs()}:
        return OnnxDetector(session, normalizer=model.normalizer)
    if h is None:  # dynamic shape: the candidates per level follow each batch's size
        return OnnxDetector(session, model.rpn.post_processor,
                            lambda hw: level_sizes_of(model, (int(hw[0]), int(hw[1]))),
                            normalizer=model.normalizer)
    graph = DenseDetectorGraph(model, (h, w))
    shape = {o.name: o.shape for o in session.get_outputs()}["scores"]
    n, c = sum(graph.level_sizes), graph.num_classes
    # a --dynamic-batch export may name the candidate / class axes too: only known sizes are
    # compared here, the run checks the candidates again (OnnxDetector._run)
    if any(isinstance(got, int) and got != want for got, want in zip(shape[1:], (n, c))):
        raise ValueError(f"{path}: scores of shape {shape}, but the config's model has {n} "
                         f"candidates and {c} classes at {h}x{w} ({num_classes_key(cfg)} = "
                         f"{get_num_classes(cfg)}): export and evaluate with the same config")
    return OnnxDetector(session, model.rpn.post_processor, graph.level_sizes, normalizer=model.normalizer)


def _config_model(cfg):
    """(cfg with NUM_CLASSES resolved on the CPU, its detector in eval mode: strides, anchors and
    the post-processor of an exported model; its weights are not used)."""
    from maskrcnn_benchmark.modeling.dense_heads import fill_num_classes_from_data
    from maskrcnn_benchmark.modeling.detector import build_detection_model

    cfg = fill_num_classes_from_data(cfg).clone()
    cfg.defrost()
    cfg.MODEL.DEVICE = "cpu"
    cfg.freeze()
    return cfg, build_detection_model(cfg, purpose="export").eval()


def _check_num_classes(path: str, got: Optional[int], cfg, model: nn.Module) -> None:
    """ValueError naming both counts when the exported model's foreground classes ``got`` differ
    from the config's (resolved from the dataset); a warning when ``got`` is unknown (None)."""
    from maskrcnn_benchmark.modeling.dense_heads import get_num_classes, num_classes_key

    want = int(model.rpn.head.num_classes)
    if got is None:
        logger.warning("%s: cannot read the graph's class count (no num_classes metadata, no "
                       "cls_logits convolution); not checked against the config's %d", path, want)
    elif got != want:
        raise ValueError(f"{path}: the graph has {got} foreground classes, the config / dataset "
                         f"{want} ({num_classes_key(cfg)} = {get_num_classes(cfg)}, DATASETS.TRAIN "
                         f"{list(cfg.DATASETS.TRAIN)}): export and evaluate with the same config")


#: ``--runtime`` of tools/infer_onnx.py: onnxruntime (a .onnx graph) or AOTInductor (a .pt2).
RUNTIMES = ("onnxruntime", "aoti")


def build_exported_detector(cfg, path: str, runtime: str = "onnxruntime", provider: str = "cpu",
                            intra_op_threads: int = 0) -> OnnxDetector:
    """The detector of an exported model ``path`` for ``cfg``: :func:`build_onnx_detector`, or
    for ``runtime="aoti"`` an :class:`~.aoti.AotiDetector` of the package (its class count
    checked against the config's, as for ONNX)."""
    if runtime not in RUNTIMES:
        raise ValueError(f"--runtime must be one of {RUNTIMES}, got {runtime!r}")
    if runtime == "onnxruntime":
        return build_onnx_detector(cfg, path, provider, intra_op_threads)
    from .aoti import AotiDetector, load_aoti

    cfg, model = _config_model(cfg)
    detector = AotiDetector(load_aoti(path), model)
    _check_num_classes(path, detector.num_classes(), cfg, model)
    return detector


def evaluate_onnx(cfg, path: str, provider: str = "cpu", intra_op_threads: int = 0,
                  runtime: str = "onnxruntime"):
    """COCO / VOC evaluation of the exported model ``path`` (``runtime``: an ONNX graph on
    onnxruntime, or an AOTInductor package) on every DATASETS.TEST entry, exactly as
    ``tools/test_net.py`` (``run_test``: OUTPUT_DIR/inference/<dataset>/bbox.json, metrics.json).

    Returns ``{dataset: metrics}``.
    """
    from maskrcnn_benchmark.engine.inference import run_test

    if cfg.TEST.BBOX_AUG.ENABLED:
        raise ValueError("TEST.BBOX_AUG.ENABLED: test-time augmentation is not supported with "
                         "ONNX models; set it to False")
    if not cfg.DATASETS.TEST:
        raise ValueError("DATASETS.TEST is empty: nothing to evaluate")
    detector = build_exported_detector(cfg, path, runtime, provider, intra_op_threads)
    cfg = cfg.clone()
    cfg.defrost()
    cfg.MODEL.DEVICE = "cpu"  # the loader's batches stay on the host; onnxruntime places them
    cfg.freeze()
    return run_test(cfg, detector)


def fixed_batch(batch: int, height: int, width: int, seed: int = 0) -> ImageList:
    """The benchmark's input: ``batch`` seeded N(0, 50^2) images of ``height x width`` (about the
    spread of mean-subtracted 0..255 pixels)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 3, height, width, generator=g) * 50.0
    return ImageList(x, [(height, width)] * batch)
