"""Benchmark: ATSS / Dynamic ATSS assignment time and peak memory per image on the CPU.

Workload: one 800 x 1333 image, anchors of strides 8..128 (one square anchor of 8 x stride per
location, 22,300 anchors), 10 / 100 / 500 random GT boxes (log-uniform sides 8..640 px, fixed
seed); Dynamic ATSS gets the anchors with every side perturbed as predicted boxes.

Compared: ``ATSSAssigner`` / ``DynamicATSSAssigner`` against a straightforward implementation in
the style of the original releases (written below): a full ``[N, G]`` IoU matrix (two for
Dynamic ATSS) and a full ``[N, G]`` distance matrix by broadcasting, a Python loop over GTs to
offset candidate indices, ``[G * N]`` expanded centre tensors and a dense ``[N, G]`` "-INF" matrix
to resolve anchors claimed by several GTs.

Time: best (minimum) of ``--repeats`` calls after one warm-up call (the minimum is the
least disturbed by other processes on a shared machine). Peak memory: every (method, #GT) runs
in a fresh subprocess; after imports, inputs and a warm-up assignment on a 2-GT image, the
increase of the process's peak resident set (``resource.getrusage(RUSAGE_SELF).ru_maxrss``)
during the first full-size call is reported. The script also checks that both implementations
give the same ``gt_inds``.

    python tools/benchmarks/bench_assign.py [--repeats 7] [--threads 1]
"""
from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from a checkout, uninstalled

INF = 100000000
IMAGE_HW = (800, 1333)
STRIDES = (8, 16, 32, 64, 128)
GT_COUNTS = (10, 100, 500)
METHODS = ("atss", "atss_ref", "dynamic", "dynamic_ref")


# ---- workload -------------------------------------------------------------------------------
def make_anchors():
    h, w = IMAGE_HW
    levels = []
    for s in STRIDES:
        ys, xs = torch.meshgrid(torch.arange(math.ceil(h / s)), torch.arange(math.ceil(w / s)),
                                indexing="ij")
        cx, cy = ((xs + 0.5) * s).reshape(-1).float(), ((ys + 0.5) * s).reshape(-1).float()
        half = 4.0 * s
        levels.append(torch.stack((cx - half, cy - half, cx + half, cy + half), dim=1))
    return levels


def make_gts(num, seed=0):
    g = torch.Generator().manual_seed(seed)
    h, w = IMAGE_HW
    wh = torch.exp(torch.rand(num, 2, generator=g) * math.log(80.0)) * 8.0
    xy = torch.rand(num, 2, generator=g) * (torch.tensor([w, h]) - wh).clamp(min=1)
    return torch.cat((xy, xy + wh), dim=1), torch.randint(1, 81, (num,), generator=g)


def make_preds(anchors, seed=1):
    g = torch.Generator().manual_seed(seed)
    size = (anchors[:, 2:] - anchors[:, :2]).repeat(1, 2)
    return anchors + (torch.rand(anchors.shape, generator=g) - 0.5) * 0.4 * size


# ---- straightforward (original-style) implementations --------------------------------------
def _iou_matrix(a, b):
    """[N, M] IoU by broadcasting."""
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    lt = torch.max(a[:, None, :2], b[None, :, :2])
    rb = torch.min(a[:, None, 2:], b[None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    return inter / (area_a[:, None] + area_b[None] - inter).clamp(min=1e-7)


def _candidates_ref(levels, anchors, gt_boxes, topk):
    gt_points = torch.stack(((gt_boxes[:, 2] + gt_boxes[:, 0]) / 2,
                             (gt_boxes[:, 3] + gt_boxes[:, 1]) / 2), dim=1)
    anchor_points = torch.stack(((anchors[:, 2] + anchors[:, 0]) / 2,
                                 (anchors[:, 3] + anchors[:, 1]) / 2), dim=1)
    distances = (anchor_points[:, None, :] - gt_points[None, :, :]).pow(2).sum(-1).sqrt()
    candidate_idxs, start = [], 0
    for level in levels:
        end = start + level.shape[0]
        k = min(topk, level.shape[0])
        _, idx = distances[start:end, :].topk(k, dim=0, largest=False)
        candidate_idxs.append(idx + start)
        start = end
    return torch.cat(candidate_idxs, dim=0), anchor_points       # [K, G]


def _in_gts_and_flat_ref(candidate_idxs, anchor_points, gt_boxes):
    num_gt, anchor_num = gt_boxes.shape[0], anchor_points.shape[0]
    candidate_idxs = candidate_idxs.clone()
    for ng in range(num_gt):
        candidate_idxs[:, ng] += ng * anchor_num
    e_cx = anchor_points[:, 0].view(1, -1).expand(num_gt, anchor_num).contiguous().view(-1)
    e_cy = anchor_points[:, 1].view(1, -1).expand(num_gt, anchor_num).contiguous().view(-1)
    candidate_idxs = candidate_idxs.view(-1)
    l = e_cx[candidate_idxs].view(-1, num_gt) - gt_boxes[:, 0]
    t = e_cy[candidate_idxs].view(-1, num_gt) - gt_boxes[:, 1]
    r = gt_boxes[:, 2] - e_cx[candidate_idxs].view(-1, num_gt)
    b = gt_boxes[:, 3] - e_cy[candidate_idxs].view(-1, num_gt)
    is_in_gts = torch.stack([l, t, r, b], dim=1).min(dim=1)[0] > 0.01
    return is_in_gts, candidate_idxs


def _resolve_ref(score, is_pos, flat_idxs):
    num_gt = score.shape[1]
    score_inf = torch.full_like(score, -INF).t().contiguous().view(-1)
    index = flat_idxs[is_pos.view(-1)]
    score_inf[index] = score.t().contiguous().view(-1)[index]
    score_inf = score_inf.view(num_gt, -1).t()
    values, gt_inds = score_inf.max(dim=1)
    gt_inds[values == -INF] = -1
    return gt_inds


@torch.no_grad()
def atss_ref(levels, gt_boxes, gt_labels, topk=9):
    anchors = torch.cat(levels)
    num_gt = gt_boxes.shape[0]
    ious = _iou_matrix(anchors, gt_boxes)                                        # [N, G]
    candidate_idxs, anchor_points = _candidates_ref(levels, anchors, gt_boxes, topk)
    candidate_ious = ious[candidate_idxs, torch.arange(num_gt)]
    thresh = candidate_ious.mean(0) + candidate_ious.std(0)
    is_pos = candidate_ious >= thresh[None, :]
    is_in_gts, flat_idxs = _in_gts_and_flat_ref(candidate_idxs, anchor_points, gt_boxes)
    return _resolve_ref(ious, is_pos & is_in_gts, flat_idxs)


@torch.no_grad()
def dynamic_atss_ref(levels, gt_boxes, gt_labels, pred_boxes, topk=9):
    anchors = torch.cat(levels)
    num_gt = gt_boxes.shape[0]
    p = _iou_matrix(pred_boxes, gt_boxes)                                        # [N, G]
    q = _iou_matrix(anchors, gt_boxes)                                           # [N, G]
    candidate_idxs, anchor_points = _candidates_ref(levels, anchors, gt_boxes, topk)
    cols = torch.arange(num_gt)
    cp, cq = p[candidate_idxs, cols], q[candidate_idxs, cols]
    thresh = cp.mean(0) + cq.mean(0) + cp.std(0) + cq.std(0)
    is_pos = (cp + cq) >= thresh[None, :]
    is_in_gts, flat_idxs = _in_gts_and_flat_ref(candidate_idxs, anchor_points, gt_boxes)
    return _resolve_ref(p + q, is_pos & is_in_gts, flat_idxs)


# ---- one measurement (subprocess) ------------------------------------------------------------
def _runner(method):
    from maskrcnn_benchmark.modeling.assigners import ATSSAssigner, DynamicATSSAssigner

    if method == "atss":
        a = ATSSAssigner()
        return lambda lv, g, lb, pr: a(lv, g, lb).gt_inds
    if method == "dynamic":
        a = DynamicATSSAssigner()
        return lambda lv, g, lb, pr: a(lv, g, lb, pred_boxes=pr).gt_inds
    if method == "atss_ref":
        return lambda lv, g, lb, pr: atss_ref(lv, g, lb)
    return lambda lv, g, lb, pr: dynamic_atss_ref(lv, g, lb, pr)


def worker(method, num_gt, repeats, threads):
    torch.set_num_threads(threads)
    run = _runner(method)
    levels = make_anchors()
    preds = make_preds(torch.cat(levels))
    small_g, small_l = make_gts(2, seed=7)
    run(levels, small_g, small_l, preds)                                          # warm-up
    gts, labels = make_gts(num_gt)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    gt_inds = run(levels, gts, labels, preds)
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        run(levels, gts, labels, preds)
        times.append(time.perf_counter() - t0)
    return {"method": method, "num_gt": num_gt, "num_anchors": preds.shape[0],
            "ms": 1000 * min(times), "peak_mib": peak_kib / 1024,
            "num_pos": int((gt_inds >= 0).sum()), "gt_inds": gt_inds.tolist()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--worker", nargs=2, metavar=("METHOD", "NUM_GT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker[0], int(args.worker[1]), args.repeats, args.threads)))
        return
    res = {}
    for g in GT_COUNTS:
        for m in METHODS:
            out = subprocess.run([sys.executable, __file__, "--worker", m, str(g),
                                  "--repeats", str(args.repeats), "--threads", str(args.threads)],
                                 check=True, capture_output=True, text=True).stdout
            res[m, g] = json.loads(out.strip().splitlines()[-1])
    n = res["atss", GT_COUNTS[0]]["num_anchors"]
    print(f"Anchors: {n}; image {IMAGE_HW[1]}x{IMAGE_HW[0]}; threads {args.threads}; "
          f"best of {args.repeats} calls; peak = ru_maxrss increase during the first call "
          f"(fresh process per row)\n")
    print("| assigner | GTs | ours ms | original-style ms | speed-up | ours peak MiB | "
          "original-style peak MiB | memory ratio | positives | same gt_inds |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, ours, ref in (("ATSS", "atss", "atss_ref"), ("Dynamic ATSS", "dynamic", "dynamic_ref")):
        for g in GT_COUNTS:
            a, b = res[ours, g], res[ref, g]
            same = a["gt_inds"] == b["gt_inds"]
            print(f"| {name} | {g} | {a['ms']:.2f} | {b['ms']:.2f} | {b['ms'] / a['ms']:.1f}x | "
                  f"{a['peak_mib']:.1f} | {b['peak_mib']:.1f} | "
                  f"{a['peak_mib'] / max(b['peak_mib'], 1e-9):.3f} | {a['num_pos']} | "
                  f"{'yes' if same else 'NO'} |")


if __name__ == "__main__":
    main()
