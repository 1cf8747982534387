"""How MODEL.LEGACY_PLUS_ONE is chosen (utils/legacy_plus_one.py)."""
import logging

import pytest
import torch

from maskrcnn_benchmark.config import cfg as default_cfg
from maskrcnn_benchmark.config import setup_cfg
from maskrcnn_benchmark.utils.legacy_plus_one import (has_release_anchors, legacy_plus_one_from_config,
                                                      rename_release_anchor_keys, resolve_legacy_plus_one)

RELEASE = {"module.rpn.anchor_generator.cell_anchors.0": torch.tensor([[-27.5, -27.5, 35.5, 35.5]]),
           "module.rpn.head.cls_logits.bias": torch.zeros(80)}
OURS = {"rpn.head.cls_logits.bias": torch.zeros(80)}


def test_default_is_auto_and_unresolved_auto_means_continuous():
    assert default_cfg.MODEL.LEGACY_PLUS_ONE is None
    assert legacy_plus_one_from_config(default_cfg) is False


@pytest.mark.parametrize("state,expected", [(RELEASE, True), (OURS, False), (None, False),
                                            (rename_release_anchor_keys(RELEASE), True)])
def test_auto_follows_the_release_anchor_buffers(state, expected, caplog):
    with caplog.at_level(logging.INFO):
        cfg = resolve_legacy_plus_one(default_cfg, state, "MODEL.WEIGHT x.pth")
    assert cfg.MODEL.LEGACY_PLUS_ONE is expected and cfg.is_frozen()
    assert legacy_plus_one_from_config(cfg) is expected
    text = caplog.text
    assert "Box geometry" in text and "MODEL.LEGACY_PLUS_ONE auto" in text
    assert ("\"+1\" conventions" in text) == expected and ("cell_anchors" in text)


@pytest.mark.parametrize("value", [True, False])
def test_explicit_value_wins_and_a_mismatch_warns(value, caplog):
    cfg = setup_cfg(opts=["MODEL.LEGACY_PLUS_ONE", str(value)])
    with caplog.at_level(logging.INFO):
        out = resolve_legacy_plus_one(cfg, RELEASE, "MODEL.WEIGHT r.pth")
    assert out.MODEL.LEGACY_PLUS_ONE is value
    assert ("0.5 px off" in caplog.text) == (not value)
    assert "(set in the config)" in caplog.text


def test_auto_string_and_bad_value():
    assert setup_cfg(opts=["MODEL.LEGACY_PLUS_ONE", "auto"]).MODEL.LEGACY_PLUS_ONE == "auto"
    bad = setup_cfg(opts=["MODEL.LEGACY_PLUS_ONE", "yes"])
    with pytest.raises(ValueError, match="MODEL.LEGACY_PLUS_ONE"):
        legacy_plus_one_from_config(bad)


def test_deprecated_resize_key_is_an_alias(caplog):
    with caplog.at_level(logging.WARNING):
        cfg = setup_cfg(opts=["TEST.LEGACY_PLUS_ONE_RESIZE", "True"])
    assert cfg.MODEL.LEGACY_PLUS_ONE is True and "deprecated" in caplog.text
    with pytest.raises(ValueError, match="contradicts"):
        setup_cfg(opts=["TEST.LEGACY_PLUS_ONE_RESIZE", "True", "MODEL.LEGACY_PLUS_ONE", "False"])


def test_has_release_anchors_and_rename():
    assert has_release_anchors(RELEASE) and not has_release_anchors(OURS) and not has_release_anchors(None)
    renamed = rename_release_anchor_keys(RELEASE)
    assert list(renamed) == ["module.rpn.prior_generator.cell_anchors.0", "module.rpn.head.cls_logits.bias"]
