"""Convert pretrained ResNet/ResNeXt weights to this project's parameter names.

Two source formats, both read from a local file (nothing is downloaded):

- Detectron / caffe2 ``.pkl`` (MSRA R-50.pkl, R-101.pkl, FAIR X-101-32x8d.pkl, ...): a pickle of
  numpy blobs (optionally under "blobs") named ``conv1_w``, ``res_conv1_bn_s``,
  ``res2_0_branch2a_w``, ``res2_0_branch1_bn_b``, ``fpn_inner_res5_2_sum_w``, ``fpn_6_w`` ...
  BN is stored folded into an affine scale/shift (``_s``/``_b``), which FrozenBatchNorm2d with
  identity statistics and eps 0 reproduces. These weights expect BGR 0-255 input and
  MODEL.RESNETS.STRIDE_IN_1X1 True (MSRA ResNets) / False (FAIR ResNeXt).
- torchvision-style ResNet state dicts (``conv1.weight``, ``bn1.*``, ``layer1.0.conv1.weight``,
  ``fc.*``): ``fc`` and ``num_batches_tracked`` are dropped and torchvision's BN eps (1e-5) is
  folded into ``running_var`` so FrozenBatchNorm2d (eps 0) gives the same output. These expect
  RGB 0-1 input normalised with the ImageNet mean/std (INPUT.TO_BGR255 False) and
  STRIDE_IN_1X1 False.

A ``.pkl`` is read with a restricted unpickler (:func:`load_c2_pickled_weights`) that builds only
dicts, lists, tuples, strings, bytes, numbers, booleans, None and numpy arrays / scalars / dtypes:
a plain ``pickle.load`` would run whatever code a crafted file names.

The converted names (``stem.conv1.weight``, ``layer1.0.bn1.weight``, ``fpn.fpn_inner4.weight``)
are suffixes of the model's, so ``load_state_dict_flexible`` puts them in place.
"""
import logging
import os
import pickle
import re
from collections import OrderedDict
from typing import Dict, List, Mapping, Optional, Sequence

import numpy as np
import torch

from maskrcnn_benchmark.utils.model_serialization import strip_prefix_if_present

logger = logging.getLogger(__name__)

_PARAM = {"w": "weight", "b": "bias", "s": "weight", "rm": "running_mean", "riv": "running_var"}
_CONV = {"1": "downsample.0", "2a": "conv1", "2b": "conv2", "2c": "conv3"}
_NORM = {"1": "downsample.1", "2a": "bn1", "2b": "bn2", "2c": "bn3"}

_STEM_CONV = re.compile(r"^conv1_(w|b)$")
_STEM_NORM = re.compile(r"^(?:res_conv1_bn|conv1_gn)_(s|b|rm|riv)$")
_BLOCK_CONV = re.compile(r"^res(\d+)_(\d+)_branch(1|2a|2b|2c)_(w|b)$")
_BLOCK_NORM = re.compile(r"^res(\d+)_(\d+)_branch(1|2a|2b|2c)_(?:bn|gn)_(s|b|rm|riv)$")
_FC = re.compile(r"^fc1000_(w|b)$")
_FPN_INNER = re.compile(r"^fpn_inner_res(\d+)_\d+_sum(?:_lateral)?(_gn)?_(w|b|s)$")
_FPN_LAYER = re.compile(r"^fpn_res(\d+)_\d+_sum(_gn)?_(w|b|s)$")
_FPN_TOP = re.compile(r"^fpn_(6|7)_(w|b)$")


def rename_basic_resnet_weights(names: Sequence[str]) -> List[str]:
    """Map caffe2 ResNet blob names to ours (names it does not know are returned unchanged).

    ``conv1_w`` -> ``stem.conv1.weight``; ``res_conv1_bn_s``/``conv1_gn_s`` -> ``stem.bn1.weight``;
    ``res{s}_{i}_branch2{a,b,c}_w`` -> ``layer{s-1}.{i}.conv{1,2,3}.weight``;
    ``res{s}_{i}_branch1_w`` -> ``layer{s-1}.{i}.downsample.0.weight``; the matching ``_bn_``/``_gn_``
    blobs -> ``bn{1,2,3}`` / ``downsample.1`` with ``_s``/``_b``/``_rm``/``_riv`` ->
    ``weight``/``bias``/``running_mean``/``running_var``; ``fc1000_w`` -> ``fc.weight``.
    """
    out = []
    for name in names:
        m = _STEM_CONV.match(name)
        if m:
            out.append(f"stem.conv1.{_PARAM[m.group(1)]}")
            continue
        m = _STEM_NORM.match(name)
        if m:
            out.append(f"stem.bn1.{_PARAM[m.group(1)]}")
            continue
        m = _BLOCK_CONV.match(name) or _BLOCK_NORM.match(name)
        if m:
            stage, index, branch, param = m.groups()
            module = (_CONV if m.re is _BLOCK_CONV else _NORM)[branch]
            out.append(f"layer{int(stage) - 1}.{index}.{module}.{_PARAM[param]}")
            continue
        m = _FC.match(name)
        out.append(f"fc.{_PARAM[m.group(1)]}" if m else name)
    return out


def rename_fpn_weights(names: Sequence[str]) -> List[str]:
    """Map Detectron FPN blob names to ours (others unchanged).

    ``fpn_inner_res{s}_{i}_sum[_lateral]_w`` -> ``fpn.fpn_inner{s-1}.weight`` (C3 -> fpn_inner2);
    ``fpn_res{s}_{i}_sum_w`` -> ``fpn.fpn_layer{s-1}.weight``; ``fpn_6_w``/``fpn_7_w`` ->
    ``fpn.top_blocks.p6/p7.weight``. With GroupNorm (``..._sum_gn_s``) the conv becomes ``.0`` and
    the norm ``.1`` of the Sequential.
    """
    gn_bases = {re.sub(r"_gn_[sb]$", "", n) for n in names if re.search(r"_gn_[sb]$", n)}
    out = []
    for name in names:
        m = _FPN_INNER.match(name) or _FPN_LAYER.match(name)
        if m:
            stage, gn, param = m.groups()
            kind = "inner" if m.re is _FPN_INNER else "layer"
            module = f"fpn.fpn_{kind}{int(stage) - 1}"
            if gn:
                module += ".1"
            elif re.sub(r"_[wb]$", "", name) in gn_bases:
                module += ".0"
            out.append(f"{module}.{_PARAM[param]}")
            continue
        m = _FPN_TOP.match(name)
        out.append(f"fpn.top_blocks.p{m.group(1)}.{_PARAM[m.group(2)]}" if m else name)
    return out


def rename_conv_weights_for_deformable_conv_layers(
        state_dict: Mapping[str, torch.Tensor],
        stage_with_dcn: Sequence[bool]) -> "OrderedDict[str, torch.Tensor]":
    """Rename ``layer{k}.{i}.conv2.{weight,bias}`` to ``layer{k}.{i}.conv2.conv.*`` for the stages
    (res2..res5 = k 1..4) that use DFConv2d, whose conv lives in a ``conv`` submodule. The
    offset convs are not in ImageNet weights and keep their zero initialisation."""
    pattern = re.compile(r"(^|\.)layer(\d)\.(\d+)\.conv2\.(weight|bias)$")
    out = OrderedDict()
    for key, value in state_dict.items():
        m = pattern.search(key)
        if m and stage_with_dcn[int(m.group(2)) - 1]:
            key = key[:m.start()] + f"{m.group(1)}layer{m.group(2)}.{m.group(3)}.conv2.conv.{m.group(4)}"
        out[key] = value
    return out


class UnsafePickleError(pickle.UnpicklingError):
    """A weight pickle names a global that a Detectron/caffe2 weight file never holds."""


def _numpy_multiarray():
    try:
        from numpy._core import multiarray  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core import multiarray
    return multiarray


# (module, name) -> object: everything a Detectron/caffe2 ``.pkl`` of numpy blobs refers to.
# Python 2 pickles (the original MSRA / FAIR files) name ``numpy.core.multiarray``, numpy 2
# writes ``numpy._core.multiarray``; python 3 protocol-2 pickles encode ``bytes`` with
# ``_codecs.encode``. Anything else (``os.system``, ``builtins.eval``, a user class) is refused.
def _allowed_globals() -> Dict[tuple, object]:
    multiarray = _numpy_multiarray()
    allowed = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype,
               ("_codecs", "encode"): _latin1_encode, ("collections", "OrderedDict"): OrderedDict}
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(module, "_reconstruct")] = multiarray._reconstruct
        allowed[(module, "scalar")] = multiarray.scalar
    return allowed


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    """``_codecs.encode`` restricted to what pickle uses it for (str -> bytes)."""
    if not isinstance(text, str) or not isinstance(encoding, str):
        raise UnsafePickleError("_codecs.encode called with non-string arguments")
    import codecs

    return codecs.encode(text, encoding)


class _RestrictedUnpickler(pickle.Unpickler):
    """An unpickler whose ``find_class`` admits only :func:`_allowed_globals`."""

    def __init__(self, file, path: str):
        super().__init__(file, encoding="latin1")
        self.path = path
        self.allowed = _allowed_globals()

    def find_class(self, module: str, name: str):
        obj = self.allowed.get((module, name))
        if obj is None:
            raise UnsafePickleError(
                f"refusing to load {self.path}: it contains a pickled '{module}.{name}', which a "
                f"Detectron/caffe2 weight file does not hold (only dicts, lists, tuples, strings, numbers "
                f"and numpy arrays are allowed). The file may be malicious; it was not executed.")
        return obj

    def persistent_load(self, pid):
        raise UnsafePickleError(f"refusing to load {self.path}: it uses pickle persistent ids, which a "
                                f"Detectron/caffe2 weight file does not")


def load_c2_pickled_weights(path: str) -> Dict[str, np.ndarray]:
    """Read a Detectron/caffe2 ``.pkl`` (latin1 pickle of numpy blobs, possibly under "blobs").

    The pickle is read with a restricted unpickler (dicts, lists, tuples, str, bytes, numbers,
    None/bool, numpy arrays, scalars and dtypes only), so a crafted file cannot run code.

    Raises:
        UnsafePickleError: the file names any other global (the message names the file and it).
        ValueError: the file is not a pickle, or not a dict of arrays.
    """
    with open(path, "rb") as f:
        try:
            data = _RestrictedUnpickler(f, path).load()
        except UnsafePickleError:
            raise
        except Exception as e:  # truncated / not a pickle
            raise ValueError(f"cannot read Detectron/caffe2 weight file {path}: {type(e).__name__}: {e}") from e
    if not isinstance(data, dict):
        raise ValueError(f"Detectron/caffe2 weight file {path} holds a {type(data).__name__}, "
                         f"expected a dict of numpy blobs")
    blobs = data["blobs"] if isinstance(data.get("blobs"), dict) else data
    return {k: v for k, v in blobs.items() if isinstance(v, (np.ndarray, np.generic))}


def convert_c2_weights(blobs: Mapping[str, np.ndarray],
                       stage_with_dcn: Optional[Sequence[bool]] = None
                       ) -> "OrderedDict[str, torch.Tensor]":
    """caffe2 blobs -> our state dict (tensors). Drops ``*_momentum`` and ``fc1000_*``."""
    names = sorted(k for k in blobs if not k.endswith("_momentum"))
    new_names = rename_fpn_weights(rename_basic_resnet_weights(names))
    out = OrderedDict()
    for old, new in zip(names, new_names):
        if new.startswith("fc."):
            continue
        out[new] = torch.as_tensor(np.asarray(blobs[old]))
        if old == new:
            logger.info("caffe2 blob %s has no known rename; kept as is", old)
    if stage_with_dcn is not None:
        out = rename_conv_weights_for_deformable_conv_layers(out, stage_with_dcn)
    return out


def is_torchvision_resnet_state_dict(state_dict: Mapping[str, torch.Tensor]) -> bool:
    """True for torchvision's ResNet layout (top-level ``conv1.weight`` and ``layer1.*``)."""
    state_dict = strip_prefix_if_present(state_dict, "module.")
    return "conv1.weight" in state_dict and any(k.startswith("layer1.") for k in state_dict)


def convert_torchvision_resnet_weights(state_dict: Mapping[str, torch.Tensor], bn_eps: float = 1e-5,
                                       stage_with_dcn: Optional[Sequence[bool]] = None
                                       ) -> "OrderedDict[str, torch.Tensor]":
    """torchvision ResNet/ResNeXt state dict -> our names.

    ``conv1.*`` -> ``stem.conv1.*``, ``bn1.*`` -> ``stem.bn1.*``, ``layer*`` unchanged; ``fc.*`` and
    ``num_batches_tracked`` dropped; ``bn_eps`` (torchvision's BatchNorm eps) is added to every
    ``running_var`` so FrozenBatchNorm2d(eps=0) reproduces the eval-mode BatchNorm exactly.
    """
    state_dict = strip_prefix_if_present(state_dict, "module.")
    out = OrderedDict()
    for key, value in state_dict.items():
        if key.startswith("fc.") or key.endswith("num_batches_tracked"):
            continue
        if key.startswith(("conv1.", "bn1.")):
            key = "stem." + key
        if key.endswith("running_var"):
            value = value + bn_eps
        out[key] = value
    if stage_with_dcn is not None:
        out = rename_conv_weights_for_deformable_conv_layers(out, stage_with_dcn)
    return out


def load_c2_format(cfg, path: str) -> Dict[str, "OrderedDict[str, torch.Tensor]"]:
    """maskrcnn-benchmark's entry point: ``{"model": state_dict}`` for a caffe2 ``.pkl``, using
    MODEL.RESNETS.STAGE_WITH_DCN."""
    stage_with_dcn = tuple(cfg.MODEL.RESNETS.STAGE_WITH_DCN)
    return {"model": convert_c2_weights(load_c2_pickled_weights(path), stage_with_dcn)}
