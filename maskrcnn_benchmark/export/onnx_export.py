"""ONNX export of a dense detector (TorchScript exporter), FP16 conversion, simplification and the
check against PyTorch.

The exporter: ``torch.onnx.export(..., dynamo=False)``. The graph is a trace of plain torch ops of
fixed shapes (:mod:`.graph`); the TorchScript exporter maps them one to one to standard ONNX
operators and exports :class:`~.graph.NonMaxSuppressionOp` through its ``symbolic`` as
``NonMaxSuppression``, with node names that follow the module tree (``/backbone/...``,
``/dense_head/head/...``), which is what the FP16 conversion uses to keep everything after the
convolutions in float32. (The dynamo exporter needs a custom translation for the NMS and renames
nodes.)

Graph inputs / outputs:

- ``--postprocess none``: inputs ``images`` [B, 3, H, W] float32 and (batch-invariant graphs,
  ``TEST.BATCH_INVARIANT``) ``image_sizes`` [B, 2] float32 (h, w of each image before padding:
  each image then sees only its canvas, as in ``test_net``); outputs ``scores`` [B, N, C],
  ``boxes`` [B, N, 4] (input pixels, not clipped), ``candidate_mask`` [B, N, C] bool (the (prior,
  class) pairs above the head's ``INFERENCE_TH``; what the post-processing may report).
- ``--postprocess nms``: inputs ``images`` and ``image_sizes`` [B, 2] float32 (h, w of each
  image before padding: boxes are clipped to it, and each image sees only its canvas); outputs
  ``boxes`` [B, K, 4], ``scores`` [B, K], ``labels`` [B, K] int64 (1..C; 0 marks the padding
  rows), ``K = TEST.DETECTIONS_PER_IMG``.

The file's metadata (``metadata_props``) records ``num_classes`` (C), ``size_divisibility``,
``postprocess`` and ``batch_invariant``; ``infer_onnx`` refuses a graph whose C differs from the
dataset's.
"""
from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from .deps import require
from .graph import DenseDetectorGraph, DetectorWithDetections, FixedSizeDetections

__all__ = ["resolve_opset", "MIN_OPSET", "MAX_OPSET", "DCN_OPSET", "ExportResult", "check_opset",
           "build_export_module", "export_onnx", "convert_fp16", "simplify_onnx",
           "preprocessing_description", "find_dcn_modules", "FP16_REGIONS", "default_input_hw",
           "export_detector", "verify_export"]

logger = logging.getLogger("maskrcnn_benchmark.export")

#: Opsets the export supports (TopK with ``largest``/``sorted`` needs 11; GroupNormalization is
#: decomposed below 18; DeformConv needs 19; 20 is the TorchScript exporter's newest).
MIN_OPSET, MAX_OPSET, DCN_OPSET = 13, 20, 19
#: Node-name prefixes of the part converted to float16 by ``--fp16`` (backbone, FPN and the head's
#: convolutions); scores, decoding and post-processing stay float32. (``DenseHead.predict`` is
#: not a ``forward``, so the TorchScript exporter names its conv module's nodes ``/head/...``.)
FP16_REGIONS = tuple(f"{root}{part}/" for root in ("/", "/graph/")
                     for part in ("backbone", "head", "dense_head/head"))
_DCN_KEYS = ("MODEL.RESNETS.STAGE_WITH_DCN", "MODEL.ATSS.USE_DCN_IN_TOWER",
             "MODEL.FCOS.USE_DCN_IN_TOWER")


def resolve_opset(opset: int, uses_dcn: bool) -> int:
    """``opset``, or for 0 the default: 17, :data:`DCN_OPSET` for a model with DCN."""
    return int(opset) if opset else (DCN_OPSET if uses_dcn else 17)


def check_opset(opset: int, uses_dcn: bool = False) -> int:
    """``opset`` if the export supports it, else ValueError naming the supported range (a DCN
    model needs at least :data:`DCN_OPSET` for the standard ``DeformConv``)."""
    opset = int(opset)
    low = DCN_OPSET if uses_dcn else MIN_OPSET
    if not low <= opset <= MAX_OPSET:
        why = (f" (the model has deformable convolutions: ONNX DeformConv exists from opset "
               f"{DCN_OPSET}; or turn them off: {', '.join(_DCN_KEYS)})") if uses_dcn else ""
        raise ValueError(f"--opset {opset} is not supported: use {low}..{MAX_OPSET}{why}")
    return opset


def find_dcn_modules(model: nn.Module) -> List[str]:
    """Names of the modulated deformable convolutions of ``model``."""
    from maskrcnn_benchmark.layers import ModulatedDeformConv

    return [name for name, m in model.named_modules() if isinstance(m, ModulatedDeformConv)]


def preprocessing_description(cfg) -> str:
    """How to build the graph's ``images`` input from a photo, for ``cfg``."""
    order = "BGR, 0..255" if cfg.INPUT.TO_BGR255 else "RGB, scaled to 0..1"
    return (f"resize the shorter side to INPUT.MIN_SIZE_TEST={cfg.INPUT.MIN_SIZE_TEST} with the "
            f"longer side at most INPUT.MAX_SIZE_TEST={cfg.INPUT.MAX_SIZE_TEST} (bilinear, aspect "
            f"kept); channels {order} (INPUT.TO_BGR255={cfg.INPUT.TO_BGR255}); subtract "
            f"INPUT.PIXEL_MEAN={list(cfg.INPUT.PIXEL_MEAN)} and divide by INPUT.PIXEL_STD="
            f"{list(cfg.INPUT.PIXEL_STD)} per channel; CHW float32; zero-pad at the bottom/right "
            f"to the graph's H x W (multiples of DATALOADER.SIZE_DIVISIBILITY="
            f"{cfg.DATALOADER.SIZE_DIVISIBILITY}). Boxes come out in the resized image's pixels: "
            f"divide by the resize factor for the original image.")


def build_export_module(model: nn.Module, image_hw: Tuple[int, int], postprocess: str = "none",
                        amp_dtype: Optional[torch.dtype] = None,
                        batch_invariant: Optional[bool] = None, dynamic: bool = False) -> nn.Module:
    """The module to export for ``model`` (a GeneralizedRCNN with a DenseHead) and an input of
    ``image_hw``: :class:`DenseDetectorGraph` (``postprocess="none"``) or
    :class:`DetectorWithDetections` (``"nms"``, the head's post-processor's settings).
    ``batch_invariant`` (default: the model's eval setting, ``TEST.BATCH_INVARIANT``): mask each
    image's canvas from the ``image_sizes`` input. ``dynamic``: any input size (``image_hw`` is
    the example's)."""
    if postprocess not in ("none", "nms"):
        raise ValueError(f"--postprocess must be 'none' or 'nms', got {postprocess!r}")
    if batch_invariant is None:
        batch_invariant = getattr(model, "batch_invariant", (False, False))[1]
    graph = DenseDetectorGraph(model, image_hw, amp_dtype=amp_dtype,
                               batch_invariant=batch_invariant, dynamic=dynamic).eval()
    if postprocess == "none":
        return graph
    post = model.rpn.post_processor
    det = FixedSizeDetections(graph.level_sizes, graph.num_classes, post.pre_nms_top_n,
                              post.nms_thresh, post.detections_per_img)
    return DetectorWithDetections(graph, det).eval()


def _register_deform_conv_symbolic(opset: int) -> None:
    """Export ``maskrcnn_benchmark::deform_conv2d`` as the standard ONNX ``DeformConv``."""
    from torch.onnx import register_custom_op_symbolic
    from torch.onnx.symbolic_helper import parse_args

    @parse_args("v", "v", "v", "v", "v", "i", "i", "i", "i", "i", "i", "i", "i")
    def deform_conv(g, x, weight, offset, mask, bias, sh, sw, ph, pw, dh, dw, groups, dgroups):
        kh, kw = weight.type().sizes()[2:] if weight.type().sizes() else (3, 3)
        return g.op("DeformConv", x, weight, offset, bias, mask, strides_i=[sh, sw],
                    pads_i=[ph, pw, ph, pw], dilations_i=[dh, dw], group_i=groups,
                    offset_group_i=dgroups, kernel_shape_i=[kh, kw])

    register_custom_op_symbolic("maskrcnn_benchmark::deform_conv2d", deform_conv, opset)


def _takes_sizes(module: nn.Module) -> bool:
    """Whether the export module has the ``image_sizes`` input (the ``nms`` graph, or a
    batch-invariant ``none`` graph)."""
    return isinstance(module, DetectorWithDetections) or module.batch_invariant


def _example_inputs(module: nn.Module, batch: int, image_hw: Tuple[int, int], device) -> Tuple:
    """A seeded batch and, for a graph with ``image_sizes``, sizes that leave a canvas smaller
    than the input for the second image onwards (the masks then matter in a comparison)."""
    g = torch.Generator().manual_seed(0)
    images = torch.randn(batch, 3, *image_hw, generator=g).to(device)
    if not _takes_sizes(module):
        return (images,)
    h, w = image_hw
    sizes = torch.tensor([[h, w]] + [[max(1, h * 2 // 3), max(1, w // 2)]] * (batch - 1),
                         dtype=torch.float32, device=device)
    return images, sizes


def _names(module: nn.Module) -> Tuple[List[str], List[str]]:
    inputs = ["images", "image_sizes"] if _takes_sizes(module) else ["images"]
    if isinstance(module, DetectorWithDetections):
        return inputs, ["boxes", "scores", "labels"]
    return inputs, ["scores", "boxes", "candidate_mask"]


def _write_metadata(path: str, values: Dict[str, object]) -> None:
    """Set the ONNX file's ``metadata_props`` ``values`` (as strings), in place."""
    onnx = require("onnx", "the ONNX export")
    model = onnx.load(path)
    old = {p.key: p.value for p in model.metadata_props}
    old.update({k: str(v) for k, v in values.items()})
    del model.metadata_props[:]
    for k, v in sorted(old.items()):
        model.metadata_props.add(key=k, value=v)
    _save_atomic(model, path)


def export_onnx(module: nn.Module, path: str, batch: int = 1, dynamic_batch: bool = False,
                opset: int = 17) -> None:
    """Trace ``module`` (from :func:`build_export_module`) with a ``batch`` x 3 x H x W input and
    write the ONNX file ``path`` atomically (batch axis symbolic with ``dynamic_batch``; height,
    width and the candidate axis symbolic for a ``dynamic`` graph)."""
    require("onnx", "the ONNX export")
    graph = module.graph if isinstance(module, DetectorWithDetections) else module
    uses_dcn = bool(find_dcn_modules(graph))
    check_opset(opset, uses_dcn)
    if uses_dcn:
        _register_deform_conv_symbolic(opset)
    if batch < 1:
        raise ValueError(f"--batch must be >= 1, got {batch}")
    postprocess = "nms" if isinstance(module, DetectorWithDetections) else "none"
    inputs, outputs = _names(module)
    device = next(module.parameters()).device
    example = _example_inputs(module, batch, graph.image_hw, device)
    dynamic_axes = {n: {0: "batch"} for n in inputs + outputs} if dynamic_batch else {}
    if graph.dynamic:
        dynamic_axes.setdefault("images", {}).update({2: "height", 3: "width"})
        if postprocess == "none":
            for name in outputs:
                dynamic_axes.setdefault(name, {})[1] = "candidates"
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".onnx", dir=folder)
    os.close(fd)
    try:
        with torch.no_grad():
            torch.onnx.export(module, example, tmp, input_names=inputs, output_names=outputs,
                              dynamic_axes=dynamic_axes or None, opset_version=int(opset), dynamo=False,
                              do_constant_folding=True)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    _unshare_initializers_of_file(path)
    _check_no_project_ops(path)
    _write_metadata(path, {"num_classes": graph.num_classes, "postprocess": postprocess,
                           "size_divisibility": graph.size_divisibility,
                           "batch_invariant": int(graph.batch_invariant),
                           "dynamic_shape": int(graph.dynamic)})


def _check_no_project_ops(path: str) -> None:
    """RuntimeError when the graph holds a node outside the standard ONNX domain."""
    onnx = require("onnx", "the ONNX export")
    model = onnx.load(path, load_external_data=False)
    custom = sorted({f"{n.domain}::{n.op_type}" for n in model.graph.node if n.domain not in ("", "ai.onnx")})
    if custom:
        raise RuntimeError(f"{path}: the exported graph has non-standard operators {custom}")


def simplify_onnx(path: str) -> None:
    """Simplify ``path`` in place with onnxslim (constant folding, dead-node removal)."""
    onnxslim = require("onnxslim", "--simplify")
    onnx = require("onnx", "--simplify")
    slim = onnxslim.slim(onnx.load(path))
    _save_atomic(slim, path)


def convert_fp16(path: str, regions: Sequence[str] = FP16_REGIONS) -> None:
    """Convert ``path`` in place to float16 with onnxconverter-common: the nodes whose names start
    with one of ``regions`` (backbone, FPN, head convolutions) run in float16, every other node
    (scores, box decoding, post-processing) and the graph's inputs and outputs stay float32."""
    onnx = require("onnx", "--fp16")
    float16 = require("onnxconverter_common", "--fp16").float16
    model = onnx.load(path)
    _unshare_initializers(model)
    del model.graph.value_info[:]  # stale after the conversion's casts; ORT re-infers the shapes
    # Casts to float32 (the padding masks made from the image sizes) stay as they are: the
    # converter would leave their ``to`` float32 but declare their output float16
    keep = [n.name for n in model.graph.node if not n.name.startswith(tuple(regions))
            or (n.op_type == "Cast" and any(a.name == "to" and a.i == onnx.TensorProto.FLOAT
                                            for a in n.attribute))]
    if len(keep) == len(model.graph.node):
        raise RuntimeError(f"{path}: no node is named under {list(regions)}; cannot tell the "
                           "network from the post-processing for --fp16")
    float_outputs = {o.name for o in model.graph.output
                     if o.type.tensor_type.elem_type == onnx.TensorProto.FLOAT}
    converted = float16.convert_float_to_float16(model, keep_io_types=True, node_block_list=keep)
    _restore_float_outputs(converted, float_outputs)
    _save_atomic(converted, path)


def _unshare_initializers(model) -> None:
    """Give every node its own copy of the initializers it reads (in place).

    The exporters share equal tensors (e.g. all-zero biases) between layers, directly or through
    ``Identity`` nodes; the FP16 converter then leaves a tensor float32 when one of its readers
    is kept float32, and the float16 readers fail to load. Identity nodes of an initializer (or
    of such an Identity) become initializers themselves.
    """
    onnx = require("onnx")
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    while True:  # chains too: an Identity of an Identity of an initializer
        identities = [n for n in graph.node if n.op_type == "Identity" and n.input[0] in inits]
        if not identities:
            break
        for node in identities:
            copy = onnx.TensorProto()
            copy.CopyFrom(inits[node.input[0]])
            copy.name = node.output[0]
            graph.initializer.append(copy)
            inits[copy.name] = copy
            graph.node.remove(node)
    seen = set()
    for node in graph.node:
        for j, name in enumerate(node.input):
            if name not in inits:
                continue
            if name in seen:
                copy = onnx.TensorProto()
                copy.CopyFrom(inits[name])
                copy.name = f"{name}__{node.name or node.output[0]}_{j}"
                graph.initializer.append(copy)
                node.input[j] = copy.name
            seen.add(name)


def _unshare_initializers_of_file(path: str) -> None:
    """:func:`_unshare_initializers` of the ONNX file ``path``, rewritten atomically where it had
    shared initializers. onnxruntime's graph optimizations (any level above "disable all") can
    drop the ``Identity`` node through which the TorchScript exporter shares an equal constant
    (e.g. the all-ones GroupNorm weights of an untrained model) while a reader still names its
    output: the session then refuses the graph ("... is not a graph input, initializer, or
    output of a previous node")."""
    onnx = require("onnx")
    model = onnx.load(path)
    inits = {i.name for i in model.graph.initializer}
    if not any(n.op_type == "Identity" and n.input[0] in inits for n in model.graph.node):
        return
    _unshare_initializers(model)
    _save_atomic(model, path)


def _restore_float_outputs(model, names) -> None:
    """Make the graph outputs ``names`` float32 again (in place): the converter declares an
    output float16 when its producer was kept float32, and may end it with a float16 Cast."""
    onnx = require("onnx")
    producer = {o: n for n in model.graph.node for o in n.output}
    for out in model.graph.output:
        if out.name not in names or out.type.tensor_type.elem_type == onnx.TensorProto.FLOAT:
            continue
        out.type.tensor_type.elem_type = onnx.TensorProto.FLOAT
        node = producer.get(out.name)
        if node is not None and node.op_type == "Cast":
            for attr in node.attribute:
                if attr.name == "to":
                    attr.i = onnx.TensorProto.FLOAT
        else:
            raw = f"{out.name}__float16"
            for n in model.graph.node:
                n.output[:] = [raw if o == out.name else o for o in n.output]
            model.graph.node.append(onnx.helper.make_node("Cast", [raw], [out.name],
                                                          to=onnx.TensorProto.FLOAT,
                                                          name=f"{out.name}__to_float"))


def _save_atomic(model, path: str) -> None:
    onnx = require("onnx")
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(suffix=".onnx", dir=folder)
    os.close(fd)
    try:
        onnx.save(model, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


@dataclass
class ExportResult:
    """What :func:`verify_onnx` found: ``max_abs_diff`` per output name (ONNX vs PyTorch)."""

    path: str
    max_abs_diff: Dict[str, float] = field(default_factory=dict)


def default_input_hw(cfg) -> Tuple[int, int]:
    """``(MIN_SIZE_TEST, MAX_SIZE_TEST)`` rounded up to DATALOADER.SIZE_DIVISIBILITY (800 x 1344
    for the COCO settings): the largest landscape image of the test transforms."""
    div = max(1, int(cfg.DATALOADER.SIZE_DIVISIBILITY))
    up = lambda v: int(-(-int(v) // div) * div)  # noqa: E731
    return up(cfg.INPUT.MIN_SIZE_TEST), up(cfg.INPUT.MAX_SIZE_TEST)


def export_detector(cfg, output: str, batch: int = 1, dynamic_batch: bool = False,
                    height: int = 0, width: int = 0, opset: int = 0, simplify: bool = False,
                    fp16: bool = False, postprocess: str = "none", model: Optional[nn.Module] = None,
                    verify: bool = True, dynamic_shape: bool = False) -> ExportResult:
    """Export the detector of ``cfg`` (weights: MODEL.WEIGHT, see ``build_test_model``) to
    ``output``; then ``onnx.checker``, one onnxruntime run on a random batch and the largest
    difference from PyTorch (with TEST.AMP's autocast) per output.

    Args:
        batch: the example (and, without ``dynamic_batch``, the fixed) batch size.
        height, width: the input size (0: :func:`default_input_hw`).
        opset: ONNX opset (0: 17, or 19 for a model with deformable convolutions).
        simplify: onnxslim; fp16: float16 network, float32 scores / boxes / post-processing.
        postprocess: ``"none"`` (all candidates) or ``"nms"`` (fixed-size detections).
        model: an already built detector (else built from ``cfg``).
        dynamic_shape: symbolic height and width (any multiple of DATALOADER.SIZE_DIVISIBILITY;
            ``height`` x ``width`` is the example traced), priors computed in the graph.
    Raises:
        ImportError naming the missing package; ValueError for a bad opset / size / option or
        weights that do not fit the config.
    """
    require("onnx", "the ONNX export")
    if postprocess not in ("none", "nms"):
        raise ValueError(f"--postprocess must be 'none' or 'nms', got {postprocess!r}")
    if simplify:
        require("onnxslim", "--simplify")
    if fp16:
        require("onnxconverter_common", "--fp16")
    if verify:
        require("onnxruntime", "checking the export")
    if opset:
        check_opset(opset)
    if model is None:
        from maskrcnn_benchmark.engine.inference import build_test_model

        cfg, model = build_test_model(cfg, logger, purpose="export")
    model.eval()
    dcn = find_dcn_modules(model)
    opset = check_opset(resolve_opset(opset, bool(dcn)), uses_dcn=bool(dcn))
    hw = (int(height), int(width)) if height and width else default_input_hw(cfg)
    module = build_export_module(model, hw, postprocess, dynamic=dynamic_shape)
    export_onnx(module, output, batch=batch, dynamic_batch=dynamic_batch, opset=opset)
    if simplify:
        simplify_onnx(output)
    if fp16:
        convert_fp16(output)
    result = ExportResult(output)
    if verify:
        result.max_abs_diff = verify_export(output, model, hw, postprocess, batch,
                                            amp_dtype=getattr(model, "inference_amp", None),
                                            uses_dcn=bool(dcn), dynamic=dynamic_shape)
    return result


def verify_export(path: str, model: nn.Module, image_hw: Tuple[int, int], postprocess: str,
                  batch: int, amp_dtype: Optional[torch.dtype] = None,
                  uses_dcn: bool = False, dynamic: bool = False) -> Dict[str, float]:
    """``onnx.checker`` on ``path``, one onnxruntime run on a random batch and the largest
    difference per output from the PyTorch module (autocast ``amp_dtype``)."""
    onnx = require("onnx", "checking the export")
    from .runtime import compare_with_torch, create_session

    onnx.checker.check_model(path)
    try:
        session = create_session(path, "cpu")
    except Exception as e:  # noqa: BLE001  (onnxruntime raises its own exception types)
        if uses_dcn:
            raise RuntimeError(f"onnxruntime cannot run the exported DeformConv ({e}); export without "
                               f"deformable convolutions: set {', '.join(_DCN_KEYS)} off") from e
        raise
    reference = build_export_module(model, image_hw, postprocess, amp_dtype=amp_dtype,
                                    dynamic=dynamic)
    device = next(model.parameters()).device
    inputs = _example_inputs(reference, batch, image_hw, device)
    return compare_with_torch(session, reference, inputs)
