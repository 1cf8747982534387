"""Saved outputs of the six synthetic detectors, for the before/after refactoring check.

For each ``configs/*/*_synthetic.yaml`` (ATSS, DYNAMIC_ATSS, AUTOASSIGN, FREEANCHOR, RETINANET,
FCOS), with a fixed seed and one CPU thread:

- the loss dict of the first 3 SGD steps (lr 0.01, momentum 0.9) on a fixed batch of three
  synthetic images: two 128 x 160 images with a few boxes and one 96 x 128 image without any;
- the detections (boxes, scores, labels) of the resulting model in eval mode on the same images,
  with the inference score threshold lowered to 0.001 so that every head reports boxes.

``python3 tests/modeling/golden/make_golden_outputs.py`` rewrites ``dense_heads_golden.pt``
(only do that for an intended change of behaviour); ``tests/modeling/test_golden_outputs.py``
compares the current code against it with ``torch.equal``.
"""
from __future__ import annotations

import glob
import os
import sys
from typing import Dict, List

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from maskrcnn_benchmark.config import cfg as default_cfg  # noqa: E402
from maskrcnn_benchmark.modeling.detector import build_detection_model  # noqa: E402
from maskrcnn_benchmark.structures.bounding_box import BoxList  # noqa: E402
from maskrcnn_benchmark.structures.image_list import to_image_list  # noqa: E402

GOLDEN_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "dense_heads_golden.pt")
CONFIGS = sorted(glob.glob(os.path.join(ROOT, "configs", "*", "*_synthetic.yaml")))
NUM_STEPS = 3
INFERENCE_NODES = ("ATSS", "RETINANET", "FCOS", "AUTOASSIGN")


def make_batch():
    """Three images (Tensor[3, H, W]) and their targets (BoxList (w, h) with ``labels``)."""
    g = torch.Generator().manual_seed(1234)
    images = [torch.randn(3, 128, 160, generator=g), torch.randn(3, 128, 160, generator=g),
              torch.randn(3, 96, 128, generator=g)]
    boxes = [torch.tensor([[10.0, 12.0, 70.0, 80.0], [60.0, 20.0, 150.0, 60.0], [5.0, 90.0, 30.0, 120.0]]),
             torch.tensor([[40.0, 30.0, 120.0, 110.0], [100.0, 5.0, 130.0, 25.0]]),
             torch.zeros(0, 4)]
    labels = [torch.tensor([1, 3, 6]), torch.tensor([2, 2]), torch.zeros(0, dtype=torch.int64)]
    targets = []
    for img, b, lab in zip(images, boxes, labels):
        t = BoxList(b, (img.shape[2], img.shape[1]))
        t.add_field("labels", lab)
        targets.append(t)
    return images, targets


def run_config(path: str) -> Dict[str, object]:
    """Losses of the first steps and the detections after them, for one config file."""
    cfg = default_cfg.clone()
    cfg.merge_from_file(path)
    for node in INFERENCE_NODES:
        cfg.MODEL[node].INFERENCE_TH = 0.001
    # the releases' inference (padding in the GroupNorm statistics of the mixed-size batch): what
    # was saved; batch-invariant inference is tested against batch-1 runs (tests/modeling/test_detector.py)
    cfg.TEST.BATCH_INVARIANT = False
    cfg.freeze()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        model = build_detection_model(cfg)
        images, targets = make_batch()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        model.train()
        losses: List[Dict[str, torch.Tensor]] = []
        for _ in range(NUM_STEPS):
            loss_dict = model(to_image_list(images, 32), targets)
            losses.append({k: v.detach().clone() for k, v in loss_dict.items()})
            optimizer.zero_grad(set_to_none=True)
            sum(loss_dict.values()).backward()
            optimizer.step()
        model.eval()
        with torch.no_grad():
            dets = model(to_image_list(images, 32))
        detections = [{"boxes": d.bbox.clone(), "scores": d.get_field("scores").clone(),
                       "labels": d.get_field("labels").clone()} for d in dets]
    finally:
        torch.set_num_threads(threads)
    return {"losses": losses, "detections": detections}


def key_of(path: str) -> str:
    return os.path.relpath(path, ROOT)


def main() -> None:
    out = {key_of(p): run_config(p) for p in CONFIGS}
    tmp = GOLDEN_FILE + ".tmp"
    torch.save(out, tmp)
    os.replace(tmp, GOLDEN_FILE)
    for k, v in out.items():
        n = [len(d["scores"]) for d in v["detections"]]
        print(k, {name: float(x) for name, x in v["losses"][-1].items()}, "detections", n)
    print("wrote", GOLDEN_FILE, os.path.getsize(GOLDEN_FILE), "bytes")


if __name__ == "__main__":
    main()
