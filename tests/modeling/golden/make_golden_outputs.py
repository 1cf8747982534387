"""Saved outputs of every registered dense head, for the before/after refactoring check.

For each head of the ``DENSE_HEADS`` registry, on its ``configs/*/*_synthetic.yaml`` (one per
head), with a fixed seed and one CPU thread:

- the loss dict of the first 3 SGD steps (lr 0.01, momentum 0.9) on a fixed batch of three
  synthetic images: two 128 x 160 images with a few boxes and one 96 x 128 image without any;
- the detections (boxes, scores, labels) of the resulting model in eval mode on the same images,
  with the inference score threshold lowered to 0.001 so that every head reports boxes.

Each head's outputs are one file, ``golden/heads/<HEAD>.pt`` (``{"config": path, "losses": ...,
"detections": ...}``), so a new head adds its own entry without rewriting the others':

    python tests/modeling/golden/make_golden_outputs.py --head GFL     # writes heads/GFL.pt only
    python tests/modeling/golden/make_golden_outputs.py --all          # rewrites every entry

(rewrite an existing head's entry only for an intended change of its behaviour);
``tests/modeling/test_golden_outputs.py`` compares the current code against every entry and fails
for a registered head without one, naming the command above.
"""
from __future__ import annotations

import argparse
import glob
import os
import sys
from typing import Dict, List, Optional, Sequence

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from maskrcnn_benchmark.config import cfg as default_cfg  # noqa: E402
from maskrcnn_benchmark.modeling.dense_heads import DENSE_HEADS, config_node, head_name  # noqa: E402
from maskrcnn_benchmark.modeling.detector import build_detection_model  # noqa: E402
from maskrcnn_benchmark.structures.bounding_box import BoxList  # noqa: E402
from maskrcnn_benchmark.structures.image_list import to_image_list  # noqa: E402

GOLDEN_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "heads")
CONFIGS = sorted(glob.glob(os.path.join(ROOT, "configs", "*", "*_synthetic.yaml")))
NUM_STEPS = 3
COMMAND = "python tests/modeling/golden/make_golden_outputs.py --head {}"


def config_of_head() -> Dict[str, str]:
    """Head name (``MODEL.HEAD`` of the file) -> its synthetic config; two files of one head are
    an error (the golden entry and the sweeps need one)."""
    out: Dict[str, str] = {}
    for path in CONFIGS:
        cfg = default_cfg.clone()
        cfg.merge_from_file(path)
        name = head_name(cfg)
        if name in out:
            raise ValueError(f"two synthetic configs of head {name}: {out[name]} and {path}")
        out[name] = path
    return out


def golden_file(head: str) -> str:
    """The saved outputs of ``head``."""
    return os.path.join(GOLDEN_DIR, f"{head}.pt")


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
    cfg.MODEL[config_node(cfg)].INFERENCE_TH = 0.001  # the node of the head's inference keys
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


def write(head: str, path: str) -> Dict[str, object]:
    """Run ``path`` and save it as ``head``'s entry (atomic replace)."""
    out = dict(run_config(path), config=key_of(path))
    os.makedirs(GOLDEN_DIR, exist_ok=True)
    tmp = golden_file(head) + ".tmp"
    torch.save(out, tmp)
    os.replace(tmp, golden_file(head))
    n = [len(d["scores"]) for d in out["detections"]]
    print(head, key_of(path), {name: float(x) for name, x in out["losses"][-1].items()},
          "detections", n, "->", golden_file(head))
    return out


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description="write the golden outputs of dense heads")
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--head", action="append", help="registered head name (repeatable)")
    which.add_argument("--all", action="store_true", help="every registered head")
    args = parser.parse_args(argv)
    configs = config_of_head()
    heads = sorted(DENSE_HEADS.keys()) if args.all else args.head
    for head in heads:
        if head not in configs:
            raise SystemExit(f"head {head!r} has no configs/*/*_synthetic.yaml "
                             f"(registered: {sorted(DENSE_HEADS.keys())})")
        write(head, configs[head])


if __name__ == "__main__":
    main()
