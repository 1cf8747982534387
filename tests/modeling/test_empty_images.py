"""Images without boxes (DATALOADER.KEEP_EMPTY_IMAGES): every head's loss stays finite and trains them
as pure negatives (the classification loss pushes every score down)."""
import glob
import os

import pytest
import torch

from maskrcnn_benchmark.config import setup_cfg
from maskrcnn_benchmark.modeling.dense_heads import DENSE_HEADS
from maskrcnn_benchmark.modeling.detector import build_detection_model
from maskrcnn_benchmark.structures.bounding_box import BoxList

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIGS = sorted(glob.glob(os.path.join(ROOT, "configs", "*", "*_synthetic.yaml")))
W, H = 96, 64


def _target(num_boxes: int) -> BoxList:
    boxes = torch.tensor([[5.0, 6.0, 40.0, 50.0], [30.0, 10.0, 90.0, 60.0]])[:num_boxes]
    target = BoxList(boxes, (W, H))
    target.add_field("labels", torch.tensor([1, 3], dtype=torch.int64)[:num_boxes])
    return target


def test_every_head_has_a_synthetic_config():
    heads = {setup_cfg(f, ["MODEL.DEVICE", "cpu"]).MODEL.HEAD for f in CONFIGS}
    assert heads == set(DENSE_HEADS), f"registered heads without a *_synthetic.yaml: {set(DENSE_HEADS) - heads}"


@pytest.mark.parametrize("config", CONFIGS, ids=[os.path.basename(c)[:-5] for c in CONFIGS])
@pytest.mark.parametrize("boxes_per_image", [(2, 0), (0, 0)], ids=["one_empty", "all_empty"])
def test_losses_finite_with_empty_images(config, boxes_per_image):
    cfg = setup_cfg(config, ["MODEL.DEVICE", "cpu"])
    torch.manual_seed(0)
    model = build_detection_model(cfg)
    model.train()
    images = torch.randn(len(boxes_per_image), 3, H, W)
    losses = model(images, [_target(n) for n in boxes_per_image])
    assert losses, "no losses returned"
    for name, value in losses.items():
        assert value.dim() == 0 and torch.isfinite(value), f"{cfg.MODEL.HEAD}: {name} = {value}"
    total = sum(losses.values())
    total.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert grads, "backward reached no parameter"
    for name, grad in grads.items():
        assert torch.isfinite(grad).all(), f"{cfg.MODEL.HEAD}: non-finite gradient of {name}"
    if all(n == 0 for n in boxes_per_image):
        # Pure negatives: a positive loss whose gradient lowers every class logit (d loss / d bias > 0).
        assert float(total.detach()) > 0
        bias_grad = grads["rpn.head.cls_logits.bias"]
        assert (bias_grad > 0).all(), f"{cfg.MODEL.HEAD}: cls bias gradient {bias_grad}"
