"""Load a state dict into a model whose key prefixes differ from the checkpoint's.

Keys are matched by the longest dot-separated suffix, as maskrcnn-benchmark's
``align_and_update_state_dicts``: a checkpoint key ``layer1.0.conv1.weight`` loads into
``body.layer1.0.conv1.weight``, ``stem.conv1.weight`` into ``body.stem.conv1.weight``. A suffix
must start at a ``.`` boundary (``conv1.weight`` never matches ``xconv1.weight``).
"""
import logging
from collections import OrderedDict
from typing import Dict, List, Mapping, NamedTuple

import torch
from torch import nn

logger = logging.getLogger(__name__)


class LoadReport(NamedTuple):
    """matched: model key -> checkpoint key; missing: model keys left as they were;
    unused: checkpoint keys that matched nothing."""

    matched: Dict[str, str]
    missing: List[str]
    unused: List[str]


def strip_prefix_if_present(state_dict: Mapping[str, torch.Tensor], prefix: str) -> "OrderedDict":
    """Remove ``prefix`` from every key when all keys start with it (e.g. "module.")."""
    keys = list(state_dict.keys())
    if not keys or not all(key.startswith(prefix) for key in keys):
        return OrderedDict(state_dict)
    return OrderedDict((key[len(prefix):], value) for key, value in state_dict.items())


def align_and_update_state_dicts(model_state_dict: Dict[str, torch.Tensor],
                                 loaded_state_dict: Mapping[str, torch.Tensor]) -> LoadReport:
    """Copy each loaded tensor into ``model_state_dict`` (in place) under the model key that it is
    the longest suffix of; keys without a match keep their current value.

    Raises:
        ValueError: when matched tensors differ in shape; the message lists every such key with
            the model's and the checkpoint's shapes.
    """
    loaded_keys = set(loaded_state_dict.keys())
    matched: Dict[str, str] = {}
    for key in sorted(model_state_dict.keys()):
        parts = key.split(".")
        for start in range(len(parts)):  # longest suffix first
            candidate = ".".join(parts[start:])
            if candidate in loaded_keys:
                matched[key] = candidate
                break

    mismatched = []
    for key, loaded_key in matched.items():
        value = loaded_state_dict[loaded_key]
        if not isinstance(value, torch.Tensor):
            value = torch.as_tensor(value)
        if tuple(value.shape) != tuple(model_state_dict[key].shape):
            mismatched.append(f"{key} (model {tuple(model_state_dict[key].shape)}) <- "
                              f"{loaded_key} (checkpoint {tuple(value.shape)})")
            continue
        model_state_dict[key] = value
    if mismatched:
        raise ValueError("shape mismatch between the model and the checkpoint for "
                         f"{len(mismatched)} key(s):\n  " + "\n  ".join(mismatched))

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
    missing = sorted(k for k in model_state_dict if k not in matched)
    unused = sorted(loaded_keys - set(uses))
    return LoadReport(matched, missing, unused)


def load_state_dict_flexible(model: nn.Module,
                             loaded_state_dict: Mapping[str, torch.Tensor]) -> LoadReport:
    """Load ``loaded_state_dict`` into ``model`` by longest-suffix key matching.

    A "module." prefix (DistributedDataParallel checkpoints) is stripped first. Values may be
    tensors or numpy arrays. Model entries without a match keep their values. Logs how many keys
    matched and lists the model keys not loaded and the checkpoint keys not used.

    Raises:
        ValueError: on a shape mismatch (names the key and both shapes).
    """
    loaded_state_dict = strip_prefix_if_present(loaded_state_dict, prefix="module.")
    model_state_dict = model.state_dict()
    report = align_and_update_state_dicts(model_state_dict, loaded_state_dict)
    model.load_state_dict(model_state_dict)
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
