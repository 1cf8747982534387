#!/usr/bin/env python
"""The data and evaluation paths at COCO size (CPU): train json load, loader-worker memory, evaluation.

    python tools/benchmarks/bench_coco_scale.py [--scale 1.0] [--repeats 3] [--workers 2]
        [--batches 15000] [--batch-size 16] [--dir /tmp/coco_scale] [--skip-load] [--skip-workers] [--skip-eval]

Data made to COCO-2017's shape (``--scale 1``): a train json of 118,287 images and 860,161 annotations
(80 categories with COCO's id gaps, 1% crowd, an 8-point polygon each, ~1% of the images without
annotations as COCO), and a val json of 5,000 images with 100 detections each (500,000).
``--scale 0.01`` makes a quick run. The files are written once into ``--dir`` and reused.

Each measurement runs in a fresh subprocess (``multiprocessing`` spawn), so peak RSS is its own:

- **load**: seconds, peak RSS and the RSS kept after ``gc.collect()`` (MiB, over the interpreter
  with the imports) of ``json.load``, pycocotools ``COCO`` and the project's ``COCODataset``
  (training: images without annotations dropped; no image-file check). Median of ``--repeats``.
- **workers**: ``COCODataset`` built in the parent, a ``DataLoader`` with ``--workers`` forked workers
  (with the project's ``worker_init_fn``) reads ``get_img_info`` + ``get_groundtruth`` (no image decoding: the images do not exist) of
  ``--batches`` batches; per worker its private memory (``Private_Clean + Private_Dirty`` of
  ``/proc/self/smaps_rollup``, MiB) after its first batch and at the end, and the seconds of one full
  ``gc.collect()`` in the worker at the end (with the private memory it adds). Linux only.
- **eval**: seconds and peak RSS of the project's ``evaluate`` (bbox.json written, no PR curves; the
  backend it picks: faster-coco-eval when installed; and again with pycocotools, as where
  faster-coco-eval is not installed), of plain pycocotools (``COCO`` of the json,
  ``loadRes`` of the result list, evaluate / accumulate / summarize) and of plain faster-coco-eval
  (if installed), on the same detections; the 12 statistics of each are compared (printed).

Prints markdown tables. Do not trust numbers from a loaded machine.
"""
from __future__ import annotations

import argparse
import gc
import json
import multiprocessing as mp
import os
import resource
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402

TRAIN_IMAGES, TRAIN_ANNS = 118_287, 860_161
VAL_IMAGES, DETS_PER_IMAGE = 5_000, 100
COCO_CAT_IDS = [i for i in range(1, 91) if i not in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83)]  # 80 ids


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _private_mib() -> float:
    total = 0
    with open("/proc/self/smaps_rollup") as f:
        for line in f:
            if line.startswith(("Private_Clean:", "Private_Dirty:")):
                total += int(line.split()[1])
    return total / 1024


def make_json(path: str, num_images: int, num_anns: int, seed: int) -> None:
    """A COCO-shaped json (see the module docstring); ``num_anns`` 0 writes no annotations."""
    rng = np.random.default_rng(seed)
    heights = rng.integers(240, 641, num_images)
    widths = rng.integers(320, 641, num_images)
    images = [{"license": 1, "file_name": f"{100000 + i:012d}.jpg", "coco_url": "", "height": int(h),
               "width": int(w), "date_captured": "2013-11-14 11:18:45", "flickr_url": "", "id": 100000 + i}
              for i, (h, w) in enumerate(zip(heights.tolist(), widths.tolist()))]
    # ~1% of the images (as COCO train) get no annotation
    owners = rng.choice(np.flatnonzero(rng.random(num_images) > 0.01), size=num_anns)
    w, h = widths[owners], heights[owners]
    bw = rng.uniform(0.02, 0.6, num_anns) * w
    bh = rng.uniform(0.02, 0.6, num_anns) * h
    x, y = rng.uniform(0, 1, num_anns) * (w - bw), rng.uniform(0, 1, num_anns) * (h - bh)
    cats = rng.choice(COCO_CAT_IDS, size=num_anns)
    crowd = rng.random(num_anns) < 0.01
    anns = []
    for k, (o, c, cr, bx, by, ww, hh) in enumerate(zip(owners.tolist(), cats.tolist(), crowd.tolist(), x.round(2).tolist(),
                                                          y.round(2).tolist(), bw.round(2).tolist(), bh.round(2).tolist())):
        poly = [bx, by, bx + ww, by, bx + ww, by + hh, bx, by + hh]
        anns.append({"segmentation": [[round(v, 2) for v in poly]], "area": round(ww * hh, 4), "iscrowd": int(cr),
                     "image_id": 100000 + o, "bbox": [bx, by, ww, hh], "category_id": c, "id": k + 1})
    data = {"info": {"description": "synthetic COCO-shaped"}, "licenses": [], "images": images,
            "annotations": anns, "categories": [{"supercategory": "thing", "id": c, "name": f"class{c}"}
                                                for c in COCO_CAT_IDS]}
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(json.dumps(data))
    os.replace(tmp, path)


# ---- subprocess bodies (spawned; return plain dicts) ---------------------------------------------------
def _load_once(kind: str, path: str) -> dict:
    import pycocotools.coco  # noqa: F401  (imports outside the measurement)

    from maskrcnn_benchmark.data.datasets import COCODataset

    gc.collect()
    base = _rss_mib()
    start = time.perf_counter()
    if kind == "json.load":
        with open(path) as f:
            obj = json.load(f)
    elif kind == "pycocotools COCO":
        import contextlib
        import io

        with contextlib.redirect_stdout(io.StringIO()):
            obj = pycocotools.coco.COCO(path)
    else:
        obj = COCODataset(path, os.path.dirname(path), remove_images_without_annotations=True,
                          check_image_files=False)
    seconds = time.perf_counter() - start
    gc.collect()
    kept = _rss_mib() - base
    del obj
    return {"seconds": seconds, "peak_mib": _peak_mib() - base, "kept_mib": kept}


class _TouchTargets:
    """Dataset view that does what a training worker does to the records, without images."""

    def __init__(self, dataset, items_per_worker: int):
        self.dataset = dataset
        self.items_per_worker = items_per_worker
        self.count = 0
        self.first = None

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        info = self.dataset.get_img_info(index)
        target = self.dataset.get_groundtruth(index)
        self.count += 1
        out = {"n": len(target), "height": info["height"], "worker": -1, "first": None, "last": None, "gc_s": None,
               "gc_added": None}
        import torch.utils.data

        out["worker"] = torch.utils.data.get_worker_info().id
        if self.count == 1:
            self.first = _private_mib()
        if self.count == self.items_per_worker:
            last = _private_mib()
            start = time.perf_counter()
            gc.collect()
            out.update(first=self.first, last=last, gc_s=time.perf_counter() - start,
                       gc_added=_private_mib() - last)
        return out


def _workers_once(path: str, workers: int, batches: int, batch_size: int) -> dict:
    import torch

    from maskrcnn_benchmark.data.build import _worker_init
    from maskrcnn_benchmark.data.datasets import COCODataset

    ds = COCODataset(path, os.path.dirname(path), remove_images_without_annotations=True, check_image_files=False)
    batches -= batches % workers
    per_worker = batches * batch_size // workers
    gen = torch.Generator().manual_seed(0)
    sampler = torch.utils.data.RandomSampler(ds, replacement=True, num_samples=batches * batch_size, generator=gen)
    loader = torch.utils.data.DataLoader(_TouchTargets(ds, per_worker), batch_size=batch_size, sampler=sampler,
                                         num_workers=workers, collate_fn=lambda b: b, worker_init_fn=_worker_init,
                                         multiprocessing_context=mp.get_context("fork"))
    rows = {}
    start = time.perf_counter()
    for batch in loader:
        for item in batch:
            if item["gc_s"] is not None:
                rows[item["worker"]] = item
    return {"seconds": time.perf_counter() - start, "batches": batches,
            "workers": [{k: rows[w][k] for k in ("first", "last", "gc_s", "gc_added")} for w in sorted(rows)]}


def _detections(val_path: str, seed: int):
    """dataset index -> BoxList: DETS_PER_IMAGE boxes per image, a third of them jittered GT boxes."""
    import torch

    from maskrcnn_benchmark.structures.bounding_box import BoxList

    with open(val_path) as f:
        data = json.load(f)
    rng = np.random.default_rng(seed)
    gt = {}
    for a in data["annotations"]:
        gt.setdefault(a["image_id"], []).append((a["bbox"], a["category_id"]))
    cat_to_contiguous = {c: i + 1 for i, c in enumerate(sorted(c["id"] for c in data["categories"]))}
    preds = {}
    for idx, im in enumerate(data["images"]):
        w, h = im["width"], im["height"]
        boxes = rng.uniform(0, 1, (DETS_PER_IMAGE, 4)) * [w, h, w, h]
        boxes[:, 2:] = np.minimum(boxes[:, :2] + rng.uniform(4, 200, (DETS_PER_IMAGE, 2)), [w, h])
        labels = rng.integers(1, len(cat_to_contiguous) + 1, DETS_PER_IMAGE)
        for k, (b, c) in enumerate(gt.get(im["id"], [])[:DETS_PER_IMAGE // 3]):
            boxes[k] = np.clip(np.array([b[0], b[1], b[0] + b[2], b[1] + b[3]]) + rng.normal(0, 3, 4), 0, [w, h, w, h])
            labels[k] = cat_to_contiguous[c]
        p = BoxList(torch.as_tensor(boxes, dtype=torch.float32), (w, h))
        p.add_field("labels", torch.as_tensor(labels, dtype=torch.int64))
        p.add_field("scores", torch.as_tensor(rng.uniform(0.05, 1, DETS_PER_IMAGE), dtype=torch.float32))
        preds[idx] = p
    return preds


def _eval_once(kind: str, val_path: str, out_dir: str) -> dict:
    import contextlib
    import io

    from maskrcnn_benchmark.data.datasets import COCODataset
    from maskrcnn_benchmark.data.datasets.evaluation import coco_eval

    ds = COCODataset(val_path, os.path.dirname(val_path), remove_images_without_annotations=False,
                     check_image_files=False)
    preds = _detections(val_path, seed=1)
    project = kind.startswith("project evaluate")
    results = None if project else coco_eval.prepare_for_coco_detection(ds, preds)
    if kind == "project evaluate, pycocotools":  # as where faster-coco-eval is not installed
        coco_eval.coco_backend = lambda prefer_faster=True: "pycocotools"
    gc.collect()
    base = _rss_mib()
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        if project:
            captured = {}
            real = coco_eval._run_cocoeval

            def spy(*args):
                ev, text = real(*args)
                captured["stats"] = list(map(float, ev.stats))
                return ev, text

            coco_eval._run_cocoeval = spy
            res = coco_eval.evaluate(ds, preds, out_dir, pr_curves=False)
            stats, backend = captured["stats"], res.info["backend"]
        elif kind == "pycocotools":
            from pycocotools.coco import COCO
            from pycocotools.cocoeval import COCOeval

            gt = COCO(val_path)
            ev = COCOeval(gt, gt.loadRes(results), "bbox")
            ev.evaluate(), ev.accumulate(), ev.summarize()
            stats, backend = list(map(float, ev.stats)), kind
        else:
            from faster_coco_eval import COCO, COCOeval_faster

            gt = COCO(val_path)
            ev = COCOeval_faster(gt, gt.loadRes(results), "bbox", print_function=print)
            ev.evaluate(), ev.accumulate(), ev.summarize()
            stats, backend = list(map(float, ev.stats)), kind
    return {"seconds": time.perf_counter() - start, "peak_mib": _peak_mib() - base, "stats": stats,
            "backend": backend}


def _child(queue, fn, args):
    try:
        queue.put(("ok", fn(*args)))
    except BaseException as e:  # report it to the parent instead of hanging it
        queue.put(("error", f"{type(e).__name__}: {e}"))
        raise


def _spawn(fn, *args):
    """``fn(*args)`` in a fresh (spawned, non-daemonic: it may start loader workers) process."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(queue, fn, args))
    proc.start()
    status, value = queue.get()
    proc.join()
    if status != "ok":
        raise RuntimeError(f"{fn.__name__}{args}: {value}")
    return value


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of COCO-2017's sizes (0.01: quick run)")
    parser.add_argument("--repeats", type=int, default=3, help="load measurements per loader (median)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batches", type=int, default=15000)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--dir", default="/tmp/coco_scale", help="where the synthetic jsons are written / reused")
    parser.add_argument("--skip-load", action="store_true")
    parser.add_argument("--skip-workers", action="store_true")
    parser.add_argument("--skip-eval", action="store_true")
    args = parser.parse_args(argv)

    os.makedirs(args.dir, exist_ok=True)
    n_train, n_ann = max(10, round(TRAIN_IMAGES * args.scale)), max(10, round(TRAIN_ANNS * args.scale))
    n_val = max(10, round(VAL_IMAGES * args.scale))
    train = os.path.join(args.dir, f"train_{n_train}_{n_ann}.json")
    val = os.path.join(args.dir, f"val_{n_val}.json")
    for path, n_img, n_a, seed in ((train, n_train, n_ann, 0), (val, n_val, round(n_ann * n_val / n_train), 1)):
        if not os.path.isfile(path):
            print(f"writing {path} ({n_img} images, {n_a} annotations)", flush=True)
            make_json(path, n_img, n_a, seed)
    print(f"train json {os.path.getsize(train) / 2 ** 20:.0f} MiB ({n_train} images, {n_ann} annotations); "
          f"val {n_val} images, {n_val * DETS_PER_IMAGE} detections\n")

    if not args.skip_load:
        print("| train json load | seconds | peak RSS MiB | RSS kept MiB |\n|---|---|---|---|")
        for kind in ("json.load", "pycocotools COCO", "COCODataset"):
            runs = [_spawn(_load_once, kind, train) for _ in range(args.repeats)]
            med = {k: statistics.median(r[k] for r in runs) for k in ("seconds", "peak_mib", "kept_mib")}
            print(f"| {kind} | {med['seconds']:.2f} | {med['peak_mib']:.0f} | {med['kept_mib']:.0f} |", flush=True)
        print()
    if not args.skip_workers:
        r = _spawn(_workers_once, train, args.workers, args.batches, args.batch_size)
        print(f"{args.workers} workers, {r['batches']} batches of {args.batch_size} "
              f"(get_img_info + get_groundtruth), {r['seconds']:.1f} s")
        print("| worker | private MiB after batch 1 | at the end | growth | gc.collect() s | MiB it adds |\n"
              "|---|---|---|---|---|---|")
        for i, w in enumerate(r["workers"]):
            print(f"| {i} | {w['first']:.1f} | {w['last']:.1f} | {w['last'] - w['first']:.1f} | {w['gc_s']:.3f} | "
                  f"{w['gc_added']:.1f} |", flush=True)
        print()
    if not args.skip_eval:
        kinds = ["project evaluate", "project evaluate, pycocotools", "pycocotools"]
        try:
            import faster_coco_eval  # noqa: F401
            kinds.append("faster-coco-eval")
        except ImportError:
            print("faster-coco-eval is not installed: its row is left out (pip install faster-coco-eval)")
        out_dir = os.path.join(args.dir, "eval_out")
        rows = {k: _spawn(_eval_once, k, val, out_dir) for k in kinds}
        print("| evaluation | backend | seconds | peak MiB | 12 statistics equal pycocotools' |\n|---|---|---|---|---|")
        ref = np.asarray(rows["pycocotools"]["stats"])
        for k, r in rows.items():
            same = np.allclose(r["stats"], ref, rtol=0, atol=1e-9)
            print(f"| {k} | {r['backend']} | {r['seconds']:.2f} | {r['peak_mib']:.0f} | {same} |")
        print(f"\nAP (pycocotools) {ref[0]:.4f}")


if __name__ == "__main__":
    main()
