"""The training step of every dense head (backbone + head forward, batched assignment, losses,
backward) has no host-device synchronisation.

It runs under ``FakeTensorMode``: tensors carry shapes but no data, so every ``.item()`` /
``float()`` / ``bool()`` of a tensor, ``nonzero``, boolean-mask indexing and any other
data-dependent shape raises there (``DataDependentOutputException`` /
``DynamicOutputShapeException``). A step that passes here makes no such read on a GPU either.
(Pageable host-to-device copies are not visible on the CPU: ``../shared/tools/gpu-sim`` counts
them.) Also: ``torch._dynamo.explain`` finds 0 graph breaks in the compiled head step.
"""
import glob
import os

import pytest
import torch
import torch._dynamo
from torch._subclasses.fake_tensor import (DataDependentOutputException,
                                           DynamicOutputShapeException, FakeTensorMode)

from maskrcnn_benchmark.config import cfg as default_cfg
from maskrcnn_benchmark.modeling.assigners import pad_targets
from maskrcnn_benchmark.modeling.dense_heads.registry import DENSE_HEADS, head_name
from maskrcnn_benchmark.modeling.detector import build_detection_model
from maskrcnn_benchmark.structures.bounding_box import BoxList
from maskrcnn_benchmark.structures.image_list import to_image_list

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
SYNTHETIC = sorted(glob.glob(os.path.join(ROOT, "configs", "*", "*_synthetic.yaml")))
SYNC_ERRORS = (DataDependentOutputException, DynamicOutputShapeException)


def _config_of_head():
    """Registered head -> its synthetic config (every head must have one)."""
    out = {}
    for path in SYNTHETIC:
        c = default_cfg.clone()
        c.merge_from_file(path)
        out[head_name(c)] = path
    return out


CONFIG_OF_HEAD = _config_of_head()

# the assignment / loss options that take another code path (sweeps of POSITIVE_TYPE etc.)
VARIANTS = [("ATSS", ["MODEL.ATSS.POSITIVE_TYPE", "SSC"]),
            ("ATSS", ["MODEL.ATSS.POSITIVE_TYPE", "TOPK"]),
            ("ATSS", ["MODEL.ATSS.POSITIVE_TYPE", "IoU"]),
            ("ATSS", ["MODEL.ATSS.KEEP_BEST_CANDIDATE", True]),
            ("FCOS", ["MODEL.FCOS.CENTER_SAMPLING_RADIUS", 1.5]),
            ("FCOS", ["MODEL.FCOS.IOU_LOSS_TYPE", "giou"]),
            ("AUTOASSIGN", ["MODEL.AUTOASSIGN.FORCE_TOPK", True])]


def _batch(with_empty=True):
    """Three images (one without GT, one with a tiny GT and duplicates) and their targets."""
    g = torch.Generator().manual_seed(0)
    sizes = [(128, 160), (128, 160), (96, 128)]
    images = [torch.randn(3, h, w, generator=g) for h, w in sizes]
    boxes = [[[10.0, 12.0, 70.0, 80.0], [60.0, 20.0, 150.0, 60.0], [60.0, 20.0, 150.0, 60.0],
              [5.0, 90.0, 6.0, 91.0]],
             [[40.0, 30.0, 120.0, 110.0], [100.0, 5.0, 130.0, 25.0]],
             [] if with_empty else [[3.0, 3.0, 50.0, 40.0]]]
    labels = [[1, 3, 3, 6], [2, 2], [] if with_empty else [1]]
    targets = []
    for (h, w), b, lab in zip(sizes, boxes, labels):
        t = BoxList(torch.tensor(b, dtype=torch.float32).reshape(-1, 4), (w, h))
        t.add_field("labels", torch.tensor(lab, dtype=torch.int64))
        targets.append(t)
    return to_image_list(images, 32), targets


def _model(head, overrides=()):
    cfg = default_cfg.clone()
    cfg.merge_from_file(CONFIG_OF_HEAD[head])
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", *overrides])
    torch.manual_seed(0)
    model = build_detection_model(cfg)
    model.train()
    return model


def _fake_step(model, images, targets, amp_dtype=None):
    """Forward (under autocast with ``amp_dtype``) and backward on fake tensors."""
    with FakeTensorMode(allow_non_fake_inputs=True):
        with torch.autocast("cpu", dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            losses = model(images, targets)
        sum(losses.values()).backward()
    return losses


def test_every_registered_head_has_a_synthetic_config():
    assert set(CONFIG_OF_HEAD) == set(DENSE_HEADS)


@pytest.mark.parametrize("amp_dtype", [None, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("head", sorted(DENSE_HEADS))
def test_training_step_has_no_host_sync(head, amp_dtype):
    images, targets = _batch()
    losses = _fake_step(_model(head), images, targets, amp_dtype)
    assert losses and all(v.dim() == 0 for v in losses.values())


@pytest.mark.parametrize("head,overrides", VARIANTS, ids=[f"{h}-{o[0].split('.')[-1]}-{o[1]}" for h, o in VARIANTS])
def test_assignment_variants_have_no_host_sync(head, overrides):
    images, targets = _batch()
    _fake_step(_model(head, overrides), images, targets)


def test_batch_without_any_gt_has_no_host_sync():
    images, targets = _batch()
    empty = [t[torch.zeros(len(t), dtype=torch.bool)] for t in targets]
    for head in sorted(DENSE_HEADS):
        _fake_step(_model(head), images, empty)


def test_fake_mode_catches_every_kind_of_sync():
    """The check above can fail: each kind of sync raises under the same mode."""
    x = torch.randn(8)
    for sync in (lambda t: t.sum().item(), lambda t: float(t.sum()), lambda t: bool((t > 0).any()),
                 lambda t: t.nonzero(), lambda t: t[t > 0], lambda t: t.tolist()):
        with FakeTensorMode(allow_non_fake_inputs=True):
            with pytest.raises(SYNC_ERRORS):
                sync(x * 2)


@pytest.mark.parametrize("head", ["ATSS", "DYNAMIC_ATSS"])
def test_compiled_head_step_has_no_graph_break(head):
    """``torch._dynamo.explain`` of :meth:`DenseHead.training_losses` (conv head, assignment,
    losses): one graph, 0 breaks (what ``MODEL.COMPILE_TRAIN_STEP`` compiles with fullgraph)."""
    model = _model(head)
    images, targets = _batch()
    with torch.no_grad():
        features = [f.detach() for f in model.backbone(images.tensors)]
    gt = pad_targets(targets, device=features[0].device)
    torch._dynamo.reset()
    explanation = torch._dynamo.explain(model.rpn.training_losses)(features, gt)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1
    # fullgraph=True traces it whole (it raises on a break) and computes the eager losses
    compiled = torch.compile(model.rpn.training_losses, backend="eager", fullgraph=True)
    got, got_stats = compiled(features, gt)
    eager, eager_stats = model.rpn.training_losses(features, gt)
    assert set(got) == set(eager) and set(got_stats) == set(eager_stats)
    for k in eager:
        torch.testing.assert_close(got[k], eager[k])
    for k in eager_stats:
        torch.testing.assert_close(got_stats[k], eager_stats[k])


def test_compile_train_step_key_compiles_the_head_step():
    """``MODEL.COMPILE_TRAIN_STEP True``: the detector's training forward goes through the
    compiled step (here with the eager backend: the same graph capture, no code generation) and
    gives the eager losses."""
    images, targets = _batch()
    eager = _model("DYNAMIC_ATSS")(images, targets)
    model = _model("DYNAMIC_ATSS", ["MODEL.COMPILE_TRAIN_STEP", True])
    assert getattr(model.rpn, "_compiled_step", None) is not None
    torch._dynamo.reset()
    model.rpn.compile_step(backend="eager")
    got = model(images, targets)
    assert set(got) == set(eager)
    for k in eager:
        torch.testing.assert_close(got[k], eager[k])
    assert set(model.rpn.step_metrics) == {"num_gt", "num_gt_unmatched", "min_unmatched_size"}
