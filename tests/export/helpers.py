"""Shared by the export tests: tiny random-weight detectors that do detect, and a tie-tolerant
comparison of detections."""
from __future__ import annotations

import numpy as np
import torch

from maskrcnn_benchmark.config import cfg as default_cfg
from maskrcnn_benchmark.modeling.dense_heads import DENSE_HEADS, config_node, set_num_classes
from maskrcnn_benchmark.modeling.detector import build_detection_model

SMALL = "configs/atss/atss_R_18_FPN_small.yaml"
HEADS = tuple(sorted(DENSE_HEADS))  # every registered head
HW = (128, 160)


def tiny_cfg(head: str, num_classes: int = 4, threshold: float = 0.3, pre_nms_top_n: int = 60,
             detections: int = 30):
    """A narrow R-18-FPN config of ``head`` (1 tower conv, 32 channels) whose post-processing
    keeps ``pre_nms_top_n`` candidates per level above ``threshold``."""
    cfg = default_cfg.clone()
    cfg.merge_from_file(SMALL)
    cfg.MODEL.HEAD = head
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.RESNETS.STEM_OUT_CHANNELS = 16
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 16
    cfg.MODEL.RESNETS.BACKBONE_OUT_CHANNELS = 32
    cfg.MODEL.GROUP_NORM.NUM_GROUPS = 8
    node = cfg.MODEL[config_node(cfg)]
    node.NUM_CONVS = 1
    node.INFERENCE_TH = threshold
    node.PRE_NMS_TOP_N = pre_nms_top_n
    cfg.TEST.DETECTIONS_PER_IMG = detections
    set_num_classes(cfg, num_classes + 1)
    return cfg


def tiny_model(cfg, seed: int = 0):
    """The detector of ``cfg`` in eval mode with random weights that give many candidates (the
    classification bias is reset from the prior-probability init to N(0, 1))."""
    torch.manual_seed(seed)
    model = build_detection_model(cfg).eval()
    with torch.no_grad():
        model.rpn.head.cls_logits.bias.normal_()
    return model


def images(batch: int, hw=HW, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, *hw, generator=g) * 50.0


def assert_same_detections(ref, boxes, scores, labels, box_atol=1e-3, score_atol=1e-5):
    """``ref`` (a BoxList with ``scores`` / ``labels``) against one image's padded graph outputs
    (boxes [K, 4], scores [K], labels [K], label 0 = padding), independent of the order of equal
    scores: same count, and after sorting both by (label, score, box) the same rows."""
    boxes, scores, labels = (np.asarray(t) for t in (boxes, scores, labels))
    keep = labels > 0
    got = np.concatenate([labels[keep, None].astype(np.float64), scores[keep, None], boxes[keep]], 1)
    want = np.concatenate([ref.get_field("labels").numpy()[:, None].astype(np.float64),
                           ref.get_field("scores").numpy()[:, None], ref.bbox.numpy()], 1)
    assert got.shape == want.shape, f"{got.shape[0]} detections, expected {want.shape[0]}"
    order = lambda a: a[np.lexsort(a.T[::-1])]  # noqa: E731  (label, then score, then box)
    got, want = order(got), order(want)
    np.testing.assert_array_equal(got[:, 0], want[:, 0])
    np.testing.assert_allclose(got[:, 1], want[:, 1], atol=score_atol, rtol=0)
    np.testing.assert_allclose(got[:, 2:], want[:, 2:], atol=box_atol, rtol=0)
    assert (scores[keep][:-1] >= scores[keep][1:]).all(), "detections not sorted by score"
    assert (scores[~keep] == 0).all() and (boxes[~keep] == 0).all(), "padding rows not zero"
