"""Load a state dict into a model whose key prefixes differ from the checkpoint's.

Keys are matched by the longest dot-separated suffix, as maskrcnn-benchmark's
``align_and_update_state_dicts``: a checkpoint key ``layer1.0.conv1.weight`` loads into
``body.layer1.0.conv1.weight``, ``stem.conv1.weight`` into ``body.stem.conv1.weight``. A suffix
must start at a ``.`` boundary (``conv1.weight`` never matches ``xconv1.weight``).
"""
import logging
from collections import OrderedDict
from typing import Collection, Dict, List, Mapping, NamedTuple, Tuple

import torch
from torch import nn

logger = logging.getLogger(__name__)


class LoadReport(NamedTuple):
    """matched: model key -> checkpoint key (loaded); missing: model keys left as they were;
    unused: checkpoint keys that matched nothing; skipped: class-dependent model keys whose checkpoint
    tensor has another class count, left as they were (``"key (model shape) <- checkpoint shape"``)."""

    matched: Dict[str, str]
    missing: List[str]
    unused: List[str]
    skipped: Tuple[str, ...] = ()


def class_dependent_keys(model: nn.Module) -> List[str]:
    """State-dict keys of ``model`` whose first dimension is the number of classes (the predictors).

    The modules that own such tensors name them in a class attribute ``class_dependent_tensors``:
    every dense conv head must (the ``DenseConvHead`` contract of ``modeling/dense_heads/base.py``,
    e.g. ``("cls_logits.weight", "cls_logits.bias")``); other modules may (AutoAssign's centre prior
    ``("mean", "sigma")``). The keys are those names under the module's path.

    Raises:
        ValueError: when no module of ``model`` declares any (fine-tuning to another class count
            would then load a checkpoint's predictors of the wrong shape, or skip nothing), or a
            declared name is not a tensor of its module.
    """
    keys, state = [], set(model.state_dict().keys())
    for name, module in model.named_modules():
        if "class_dependent_tensors" not in dir(type(module)):
            continue
        for tensor_name in type(module).class_dependent_tensors:
            key = f"{name}.{tensor_name}" if name else tensor_name
            if key not in state:
                raise ValueError(f"{type(module).__name__}.class_dependent_tensors names {tensor_name!r}, "
                                 f"which is no tensor of the module ({key} is not in the state dict)")
            keys.append(key)
    if not keys:
        raise ValueError(f"no module of {type(model).__name__} declares class_dependent_tensors: the "
                         "dense head contract (DenseConvHead in modeling/dense_heads/base.py) requires "
                         "its conv head to name its class-dependent tensors")
    return keys


def _differs_only_in_classes(model_shape, loaded_shape) -> bool:
    return (len(model_shape) == len(loaded_shape) and len(model_shape) > 0
            and tuple(model_shape[1:]) == tuple(loaded_shape[1:]))


def strip_prefix_if_present(state_dict: Mapping[str, torch.Tensor], prefix: str) -> "OrderedDict":
    """Remove ``prefix`` from every key when all keys start with it (e.g. "module.")."""
    keys = list(state_dict.keys())
    if not keys or not all(key.startswith(prefix) for key in keys):
        return OrderedDict(state_dict)
    return OrderedDict((key[len(prefix):], value) for key, value in state_dict.items())


def align_and_update_state_dicts(model_state_dict: Dict[str, torch.Tensor],
                                 loaded_state_dict: Mapping[str, torch.Tensor],
                                 class_dependent: Collection[str] = ()) -> LoadReport:
    """Copy each loaded tensor into ``model_state_dict`` (in place) under the model key that it is
    the longest suffix of; keys without a match keep their current value.

    ``class_dependent``: model keys (:func:`class_dependent_keys`) that may differ from the checkpoint
    in their first dimension only (another number of classes: fine-tuning to a new dataset); those are
    skipped (listed in ``LoadReport.skipped``) and keep their current value.

    Raises:
        ValueError: when other matched tensors differ in shape; the message lists every such key with
            the model's and the checkpoint's shapes.
    """
    class_dependent = set(class_dependent)
    loaded_keys = set(loaded_state_dict.keys())
    matched: Dict[str, str] = {}
    for key in sorted(model_state_dict.keys()):
        parts = key.split(".")
        for start in range(len(parts)):  # longest suffix first
            candidate = ".".join(parts[start:])
            if candidate in loaded_keys:
                matched[key] = candidate
                break

    mismatched, skipped = [], []
    for key, loaded_key in matched.items():
        value = loaded_state_dict[loaded_key]
        if not isinstance(value, torch.Tensor):
            value = torch.as_tensor(value)
        if tuple(value.shape) != tuple(model_state_dict[key].shape):
            if key in class_dependent and _differs_only_in_classes(model_state_dict[key].shape, value.shape):
                skipped.append(f"{key} (model {tuple(model_state_dict[key].shape)}) <- {loaded_key} "
                               f"(checkpoint {tuple(value.shape)})")
                continue
            mismatched.append(f"{key} (model {tuple(model_state_dict[key].shape)}) <- "
                              f"{loaded_key} (checkpoint {tuple(value.shape)})")
            continue
        model_state_dict[key] = value
    if mismatched:
        raise ValueError("shape mismatch between the model and the checkpoint for "
                         f"{len(mismatched)} key(s):\n  " + "\n  ".join(mismatched))
    skipped_keys = {entry.split(" ", 1)[0] for entry in skipped}
    for key in skipped_keys:
        del matched[key]

    uses: Dict[str, List[str]] = {}
    for key, loaded_key in matched.items():
        uses.setdefault(loaded_key, []).append(key)
    for loaded_key, keys in uses.items():
        if len(keys) > 1:
            logger.warning("checkpoint key %s loaded into %d model keys: %s", loaded_key, len(keys),
                           ", ".join(keys))
    max_len = max((len(k) for k in matched), default=0)
    for key, loaded_key in matched.items():
        logger.debug("%s loaded from %s of shape %s", key.ljust(max_len), loaded_key,
                     tuple(model_state_dict[key].shape))
    missing = sorted(k for k in model_state_dict if k not in matched and k not in skipped_keys)
    unused = sorted(loaded_keys - set(uses))
    return LoadReport(matched, missing, unused, tuple(skipped))


def load_state_dict_flexible(model: nn.Module, loaded_state_dict: Mapping[str, torch.Tensor],
                             allow_class_change: bool = False) -> LoadReport:
    """Load ``loaded_state_dict`` into ``model`` by longest-suffix key matching.

    A "module." prefix (DistributedDataParallel checkpoints) is stripped first. Values may be
    tensors or numpy arrays. Model entries without a match keep their values. Logs how many keys
    matched and lists the model keys not loaded and the checkpoint keys not used.

    ``allow_class_change`` (fine-tuning): the class-dependent predictors (:func:`class_dependent_keys`)
    of a checkpoint with another number of classes are skipped with a warning naming them; they keep
    the model's initialisation (e.g. the prior-probability bias).

    Raises:
        ValueError: on any other shape mismatch (names the key and both shapes).
    """
    loaded_state_dict = strip_prefix_if_present(loaded_state_dict, prefix="module.")
    model_state_dict = model.state_dict()
    class_dependent = class_dependent_keys(model) if allow_class_change else ()
    report = align_and_update_state_dicts(model_state_dict, loaded_state_dict, class_dependent)
    model.load_state_dict(model_state_dict)
    if report.skipped:
        logger.warning("fine-tuning to another number of classes: %d class-dependent tensor(s) of the checkpoint "
                       "have another class count and are not loaded (the model keeps their initialisation): %s",
                       len(report.skipped), "; ".join(report.skipped))
    logger.info("loaded %d of %d model tensors from a checkpoint with %d tensors",
                len(report.matched), len(model_state_dict), len(loaded_state_dict))
    if report.missing:
        logger.info("model keys not found in the checkpoint (kept as initialised): %s",
                    ", ".join(report.missing))
    if report.unused:
        logger.info("checkpoint keys not used by the model: %s", ", ".join(report.unused))
    return report


# maskrcnn-benchmark's name for the same function.
load_state_dict = load_state_dict_flexible
