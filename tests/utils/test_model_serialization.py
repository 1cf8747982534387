"""Fine-tuning to another class count: the class-dependent predictors of every head are skipped (and
keep their initialisation), everything else loads; other shape mismatches stay errors."""
import logging
import math
import os

import pytest
import torch

from maskrcnn_benchmark.config import cfg as default_cfg
from maskrcnn_benchmark.modeling.dense_heads import DENSE_HEADS, set_num_classes
from maskrcnn_benchmark.modeling.detector import build_detection_model
from maskrcnn_benchmark.utils.checkpoint import Checkpointer
from maskrcnn_benchmark.utils.model_serialization import class_dependent_keys, load_state_dict_flexible

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SMALL = os.path.join(ROOT, "configs", "atss", "atss_R_18_FPN_small.yaml")


def _cfg(head="ATSS", num_classes=5, channels=64):
    cfg = default_cfg.clone()
    cfg.merge_from_file(SMALL)
    cfg.MODEL.HEAD = head
    cfg.MODEL.RESNETS.BACKBONE_OUT_CHANNELS = channels
    for node in ("ATSS", "RETINANET", "FCOS"):
        if node in cfg.MODEL and "NUM_CONVS" in cfg.MODEL[node]:
            cfg.MODEL[node].NUM_CONVS = 1
    set_num_classes(cfg, num_classes)  # foreground classes + 1
    return cfg


def _model(seed, **kw):
    torch.manual_seed(seed)
    return build_detection_model(_cfg(**kw))


@pytest.mark.parametrize("head", sorted(DENSE_HEADS.keys()))
def test_class_dependent_keys_are_exactly_the_tensors_that_change_with_the_class_count(head):
    """Independent check of each head's declaration: the keys whose shape differs between a 3- and a
    6-class model (built from the config) are the declared ones."""
    a, b = _model(0, head=head, num_classes=4), _model(0, head=head, num_classes=7)
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    differing = {k for k in sa if sa[k].shape != sb[k].shape}
    assert differing and set(class_dependent_keys(a)) == differing
    for k in differing:  # the class count is the first dimension
        assert sa[k].shape[1:] == sb[k].shape[1:] and sa[k].shape[0] != sb[k].shape[0]


def test_fine_tune_from_7_to_4_classes(tmp_path, caplog):
    source = _model(0, num_classes=8)  # 7 foreground classes
    path = str(tmp_path / "seven.pth")
    torch.save({"model": source.state_dict(), "iteration": 100}, path)

    target = _model(1, num_classes=5)  # 4 foreground classes
    fresh = {k: v.clone() for k, v in target.state_dict().items()}
    with caplog.at_level(logging.INFO):
        Checkpointer(target).load_weights(path, allow_class_change=True)
    skipped = set(class_dependent_keys(target))
    assert skipped == {"rpn.head.cls_logits.weight", "rpn.head.cls_logits.bias"}
    loaded, src = target.state_dict(), source.state_dict()
    for k, v in loaded.items():
        if k in skipped:
            assert torch.equal(v, fresh[k]), k  # kept the new model's initialisation
        else:
            assert torch.equal(v, src[k]), k  # every other tensor from the checkpoint
    bias = next(v for k, v in loaded.items() if k in skipped and k.endswith("bias"))
    assert bias.shape == (4,)
    assert torch.allclose(bias, torch.full((4,), -math.log((1 - 0.01) / 0.01)))  # prior-probability init
    warning = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "class" in r.getMessage()]
    assert len(warning) == 1 and "another number of classes" in warning[0]
    for k in skipped:
        assert k in warning[0]
    assert "(8, 64, 3, 3)" not in warning[0] and "(7, 64, 3, 3)" in warning[0]  # checkpoint shape: 7 classes x 1 anchor


def test_class_change_is_an_error_unless_allowed(tmp_path):
    path = str(tmp_path / "seven.pth")
    torch.save({"model": _model(0, num_classes=8).state_dict()}, path)
    with pytest.raises(ValueError, match="cls_logits.weight.*\\(4, 64, 3, 3\\).*\\(7, 64, 3, 3\\)"):
        Checkpointer(_model(1, num_classes=5)).load_weights(path)  # test_net / Predictor: no class change


def test_other_architecture_is_still_an_error(tmp_path):
    """A checkpoint of a model with other FPN / head channels and another class count: the predictors
    differ in more than the class dimension and the other tensors mismatch too, so loading fails."""
    path = str(tmp_path / "wide.pth")
    torch.save({"model": _model(0, num_classes=8, channels=128).state_dict()}, path)
    target = _model(1, num_classes=5, channels=64)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(ValueError, match="shape mismatch") as e:
        Checkpointer(target).load_weights(path, allow_class_change=True)
    assert "fpn" in str(e.value) and "cls_logits.weight" in str(e.value)
    assert all(torch.equal(v, before[k]) for k, v in target.state_dict().items())  # nothing loaded


def test_same_class_count_loads_the_predictors():
    source, target = _model(0, num_classes=5), _model(1, num_classes=5)
    report = load_state_dict_flexible(target, source.state_dict(), allow_class_change=True)
    assert report.skipped == () and not report.missing
    assert all(torch.equal(v, source.state_dict()[k]) for k, v in target.state_dict().items())
