#!/usr/bin/env python
"""Check that every inference path of a detector gives the same detections (issue 27).

    python tools/check_deploy_equality.py --config-file CFG --work-dir out/ MODEL.WEIGHT w.pth
    python tools/check_deploy_equality.py --config-file CFG --work-dir out/ --random-weights 0 \\
        --batches 1,4 --paths test_net,onnx_fixed_nms --fixed-hw 800 1344   # random weights

The same weights are evaluated on DATASETS.TEST (one dataset) along these paths, each with the
project's own code and written as tools/test_net.py writes it (``<work-dir>/<path>/inference/
<dataset>/{bbox.json,metrics.json}``):

  test_net_b<B>     ``run_test`` at TEST.IMS_PER_BATCH B (for each ``--batches`` entry)
  predictor         the ``Predictor``, one image per call, then the dataset's ``evaluate``
  onnx_dyn_nms      onnxruntime fp32, dynamic batch / H / W graph, ``--postprocess nms``
  onnx_dyn_none     the same graph with ``--postprocess none`` (PyTorch post-processing)
  onnx_fixed_nms    onnxruntime fp32, fixed H x W graph (``--fixed-hw``), ``--postprocess nms``
  onnx_fixed_none   the same with ``--postprocess none``
  onnx_fp16         onnxruntime, the ``--fp16`` dynamic-shape ``nms`` graph
  aoti              the AOTInductor package (``--runtime aoti``; minutes to compile)

The exported paths run at the largest ``--batches`` entry. Every path is compared, image by image,
with the first ``--batches`` entry (the reference): after pairing the detections of each (image,
label) (an assignment minimising the box difference, so that the order of equal scores does not
matter) boxes within ``--box-tol`` px and scores within ``--score-tol``, every detection paired
except "cut swaps" (two candidates whose scores tie to float rounding at the
TEST.DETECTIONS_PER_IMG cut or at the score threshold: each path keeps another one; counted in the
table); the AP within ``--ap-tol`` (fp16: AP within ``--fp16-ap-tol``; its boxes and scores are
reported, not checked). Prints a markdown table; exit status 1 when a check fails.
``--reuse`` keeps the results of a path already in the work dir (e.g. add ``aoti`` later).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections import defaultdict
from typing import Dict, List, Optional, Sequence, Tuple

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from maskrcnn_benchmark.config import add_config_args, cfg_from_args  # noqa: E402

#: The exported paths: name -> (dynamic shape, postprocess, fp16, runtime).
EXPORTED = {
    "onnx_dyn_nms": (True, "nms", False, "onnxruntime"),
    "onnx_dyn_none": (True, "none", False, "onnxruntime"),
    "onnx_fixed_nms": (False, "nms", False, "onnxruntime"),
    "onnx_fixed_none": (False, "none", False, "onnxruntime"),
    "onnx_fp16": (True, "nms", True, "onnxruntime"),
    "aoti": (True, "none", False, "aoti"),
}
FP16_PATHS = ("onnx_fp16",)

logger = logging.getLogger("maskrcnn_benchmark.check_deploy")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(parser)
    parser.add_argument("--work-dir", required=True, help="folder for the exports and every path's results")
    parser.add_argument("--batches", default="1,2,8",
                        help="TEST.IMS_PER_BATCH values of the test_net paths; the first is the reference")
    parser.add_argument("--paths", default="",
                        help="comma-separated subset of: test_net, predictor, " + ", ".join(EXPORTED)
                        + " (default: all)")
    parser.add_argument("--skip-aoti", action="store_true", help="leave out the AOTInductor package")
    parser.add_argument("--fixed-hw", type=int, nargs=2, metavar=("H", "W"), default=None,
                        help="the fixed-size graph's input (default: INPUT.MAX_SIZE_TEST rounded up to "
                             "DATALOADER.SIZE_DIVISIBILITY on both sides, so both orientations fit)")
    parser.add_argument("--random-weights", type=int, default=None, metavar="SEED",
                        help="no MODEL.WEIGHT: a model initialised with this seed, saved to the work dir")
    parser.add_argument("--reuse", action="store_true",
                        help="do not re-run a path whose bbox.json and metrics.json are in the work dir")
    parser.add_argument("--box-tol", type=float, default=1e-3, help="px")
    parser.add_argument("--score-tol", type=float, default=1e-5)
    parser.add_argument("--ap-tol", type=float, default=1e-4)
    parser.add_argument("--fp16-ap-tol", type=float, default=0.01)
    parser.add_argument("opts", nargs=argparse.REMAINDER, default=[],
                        help="config overrides as KEY VALUE pairs, e.g. MODEL.WEIGHT model_final.pth")
    return parser


# ---------------------------------------------------------------------------------------------
# comparison
# ---------------------------------------------------------------------------------------------

def read_detections(bbox_json: str) -> Dict[int, Tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """``{image_id: (boxes [K, 4] x1y1x2y2 float64, scores [K], category ids [K])}`` of a COCO
    results file (bbox.json, full precision)."""
    with open(bbox_json) as f:
        results = json.load(f)
    rows: Dict[int, list] = defaultdict(list)
    for r in results:
        x, y, w, h = r["bbox"]
        rows[int(r["image_id"])].append((x, y, x + w, y + h, r["score"], r["category_id"]))
    out = {}
    for image_id, r in rows.items():
        a = np.asarray(r, dtype=np.float64)
        out[image_id] = (a[:, :4], a[:, 4], a[:, 5].astype(np.int64))
    return out


class Comparison:
    """Detections of a path against the reference's: ``max_box`` (px) and ``max_score`` over the
    paired detections; ``cut_swaps``, the unpaired detections at a cut (see
    :func:`compare_detections`); ``unmatched``, ``(image id, label, score)`` of the other unpaired
    detections (a real difference)."""

    def __init__(self):
        self.max_box = 0.0
        self.max_score = 0.0
        self.cut_swaps = 0
        self.unmatched: List[Tuple[int, int, float]] = []

    def ok(self, box_tol: float, score_tol: float) -> bool:
        return not self.unmatched and self.max_box <= box_tol and self.max_score <= score_tol


def compare_detections(ref: Dict[int, tuple], got: Dict[int, tuple], box_tol: float = 1e-3,
                       score_tol: float = 1e-5, threshold: Optional[float] = None) -> Comparison:
    """Compare two :func:`read_detections` results image by image.

    Per image and label the detections are paired by an assignment
    (``scipy.optimize.linear_sum_assignment``) minimising ``max(|box diff|) / box_tol +
    |score diff| / score_tol``, so that near-equal scores in another order do not count as
    differences. A detection left unpaired (its label has more detections on its side) is a
    *cut swap* when its score is within ``score_tol`` of the lowest score the other side kept in
    that image (two candidates tied to float rounding at the TEST.DETECTIONS_PER_IMG cut) or of
    the score ``threshold``; any other is a real difference (``unmatched``).
    """
    from scipy.optimize import linear_sum_assignment

    result = Comparison()
    empty = (np.zeros((0, 4)), np.zeros(0), np.zeros(0, np.int64))

    def at_cut(score: float, other_scores: np.ndarray) -> bool:
        near_min = other_scores.size > 0 and abs(score - float(other_scores.min())) <= score_tol
        return near_min or (threshold is not None and abs(score - threshold) <= score_tol)

    for image_id in sorted(set(ref) | set(got)):
        rb, rs, rl = ref.get(image_id, empty)
        gb, gs, gl = got.get(image_id, empty)
        for label in np.union1d(rl, gl):
            i, j = np.flatnonzero(rl == label), np.flatnonzero(gl == label)
            rows, cols = np.zeros(0, np.int64), np.zeros(0, np.int64)
            if len(i) and len(j):
                box = np.abs(rb[i][:, None, :] - gb[j][None, :, :]).max(-1)  # [n, m]
                score = np.abs(rs[i][:, None] - gs[j][None, :])
                rows, cols = linear_sum_assignment(box / box_tol + score / score_tol)
                result.max_box = max(result.max_box, float(box[rows, cols].max()))
                result.max_score = max(result.max_score, float(score[rows, cols].max()))
            for idx, paired, scores, other in ((i, rows, rs, gs), (j, cols, gs, rs)):
                for k in np.setdiff1d(np.arange(len(idx)), paired):
                    s = float(scores[idx[k]])
                    if at_cut(s, other):
                        result.cut_swaps += 1
                    else:
                        result.unmatched.append((int(image_id), int(label), s))
    return result


# ---------------------------------------------------------------------------------------------
# the paths
# ---------------------------------------------------------------------------------------------

def _with(cfg, **keys):
    """A clone of ``cfg`` with dotted ``keys`` (``TEST__IMS_PER_BATCH=8``) set."""
    c = cfg.clone()
    c.defrost()
    for key, value in keys.items():
        node, name = c, key.split("__")
        for part in name[:-1]:
            node = node[part]
        node[name[-1]] = value
    c.freeze()
    return c


def _result_folder(cfg) -> str:
    from maskrcnn_benchmark.engine.inference import dataset_folder_name

    return os.path.join(cfg.OUTPUT_DIR, "inference", dataset_folder_name(cfg.DATASETS.TEST[0]))


def _done(folder: str) -> Optional[dict]:
    """The summary metrics of a finished path in ``folder``, else None."""
    if not (os.path.isfile(os.path.join(folder, "bbox.json"))
            and os.path.isfile(os.path.join(folder, "metrics.json"))):
        return None
    with open(os.path.join(folder, "metrics.json")) as f:
        return json.load(f)["bbox"]


def run_predictor(cfg) -> dict:
    """The ``Predictor`` on every image of DATASETS.TEST[0], one image per call (its files, read
    as a user would), evaluated by the dataset's ``evaluate``; writes bbox.json / metrics.json."""
    from maskrcnn_benchmark.data import make_data_loader
    from maskrcnn_benchmark.data.datasets.evaluation import evaluate
    from maskrcnn_benchmark.engine.predictor import Predictor
    from maskrcnn_benchmark.utils.io import atomic_write_json

    dataset = make_data_loader(cfg, is_train=False)[0].dataset
    predictor = Predictor(cfg=cfg, device="cpu")
    predictions = {}
    for idx in range(len(dataset)):
        path = os.path.join(dataset.root, dataset.get_img_info(idx)["file_name"])
        predictions[idx] = predictor.predict_boxlists([path])[0]
    folder = _result_folder(cfg)
    os.makedirs(folder, exist_ok=True)
    metrics = {k: float(v) for k, v in dict(evaluate(dataset, predictions, folder)).items()}
    atomic_write_json(os.path.join(folder, "metrics.json"),
                      {"dataset": cfg.DATASETS.TEST[0], "num_images": len(predictions), "bbox": metrics})
    return metrics


def export_path(cfg, model, name: str, output: str, fixed_hw: Tuple[int, int]) -> str:
    """Export ``model`` for the exported path ``name`` to ``output`` (an .onnx or .pt2 file)."""
    dynamic, postprocess, fp16, runtime = EXPORTED[name]
    if runtime == "aoti":
        from maskrcnn_benchmark.export.aoti import export_aoti

        return export_aoti(model, output)
    from maskrcnn_benchmark.export.onnx_export import default_input_hw, export_detector

    hw = default_input_hw(cfg) if dynamic else fixed_hw
    result = export_detector(cfg, output, dynamic_batch=True, height=hw[0], width=hw[1], fp16=fp16,
                             postprocess=postprocess, model=model, dynamic_shape=dynamic)
    logger.info("%s: max |onnxruntime - pytorch| %s", name,
                ", ".join(f"{k} {v:.3g}" for k, v in result.max_abs_diff.items()))
    return result.path


def random_weights(cfg, seed: int, folder: str) -> str:
    """Save the detector of ``cfg`` initialised under ``torch.manual_seed(seed)`` to ``folder``;
    returns the weight file (for MODEL.WEIGHT)."""
    from maskrcnn_benchmark.modeling.dense_heads import fill_num_classes_from_data
    from maskrcnn_benchmark.modeling.detector import build_detection_model
    from maskrcnn_benchmark.utils.checkpoint import Checkpointer

    torch.manual_seed(seed)
    model = build_detection_model(fill_num_classes_from_data(cfg))
    return Checkpointer(model, save_dir=folder, save_to_disk=True).save(f"random_seed{seed}")


def selected_paths(args, batches: Sequence[int]) -> List[str]:
    known = ["test_net", "predictor", *EXPORTED]
    wanted = [p for p in args.paths.split(",") if p] or known
    bad = [p for p in wanted if p not in known]
    if bad:
        raise ValueError(f"--paths: unknown {bad}; choose from {known}")
    if args.skip_aoti:
        wanted = [p for p in wanted if p != "aoti"]
    out = []
    for p in known:  # the documented order
        if p in wanted:
            out += [f"test_net_b{b}" for b in batches] if p == "test_net" else [p]
    return out


def run_paths(cfg, args, paths: List[str], batches: Sequence[int]) -> Dict[str, dict]:
    """Run (or, ``--reuse``, read back) every path; ``{path: summary metrics}``."""
    from maskrcnn_benchmark.engine.inference import build_test_model, run_test
    from maskrcnn_benchmark.export.runtime import evaluate_onnx

    div = max(1, int(cfg.DATALOADER.SIZE_DIVISIBILITY))
    side = -(-int(cfg.INPUT.MAX_SIZE_TEST) // div) * div
    fixed_hw = tuple(args.fixed_hw) if args.fixed_hw else (side, side)
    cfg, model = build_test_model(cfg)
    metrics: Dict[str, dict] = {}
    for name in paths:
        batch = int(name[len("test_net_b"):]) if name.startswith("test_net_b") else max(batches)
        c = _with(cfg, OUTPUT_DIR=os.path.join(args.work_dir, name), TEST__IMS_PER_BATCH=batch)
        done = _done(_result_folder(c)) if args.reuse else None
        if done is not None:
            logger.info("%s: reusing %s", name, _result_folder(c))
            metrics[name] = done
            continue
        logger.info("%s: running", name)
        if name.startswith("test_net_b"):
            metrics[name] = run_test(c, model)[c.DATASETS.TEST[0]]
        elif name == "predictor":
            metrics[name] = run_predictor(c)
        else:
            runtime = EXPORTED[name][3]
            output = os.path.join(args.work_dir, "models", name + (".pt2" if runtime == "aoti" else ".onnx"))
            os.makedirs(os.path.dirname(output), exist_ok=True)
            export_path(c, model, name, output, fixed_hw)
            metrics[name] = evaluate_onnx(c, output, runtime=runtime)[c.DATASETS.TEST[0]]
    return metrics


def report(args, cfg, paths: List[str], metrics: Dict[str, dict]) -> Tuple[List[str], bool]:
    """The markdown table's lines and whether every check passed."""
    folders = {p: _result_folder(_with(cfg, OUTPUT_DIR=os.path.join(args.work_dir, p))) for p in paths}
    ref_name = paths[0]
    ref = read_detections(os.path.join(folders[ref_name], "bbox.json"))
    ref_ap = metrics[ref_name]["AP"]
    from maskrcnn_benchmark.modeling.dense_heads import config_node

    threshold = float(cfg.MODEL[config_node(cfg)].INFERENCE_TH)
    lines = ["| path | AP | detections | max box diff (px) | max score diff | cut swaps | check |",
             "|---|---|---|---|---|---|---|"]
    all_ok = True
    for p in paths:
        got = read_detections(os.path.join(folders[p], "bbox.json"))
        cmp = compare_detections(ref, got, args.box_tol, args.score_tol, threshold)
        ap = metrics[p]["AP"]
        if p in FP16_PATHS:
            ok = abs(ap - ref_ap) <= args.fp16_ap_tol
            why = f"AP within {args.fp16_ap_tol:g}"
        else:
            ok = cmp.ok(args.box_tol, args.score_tol) and abs(ap - ref_ap) <= args.ap_tol
            why = "equal"
        if cmp.unmatched and p not in FP16_PATHS:
            image_id, label, score = cmp.unmatched[0]
            why = (f"{len(cmp.unmatched)} detection(s) without a partner, e.g. image id {image_id} "
                   f"label {label} score {score:.4f}")
        all_ok &= ok
        n = sum(len(v[1]) for v in got.values())
        lines.append(f"| {p} | {ap:.4f} | {n} | {cmp.max_box:.2e} | {cmp.max_score:.2e} | {cmp.cut_swaps} | "
                     f"{'ok' if ok else 'FAIL'} ({why}) |")
    return lines, all_ok


def main(argv: Optional[List[str]] = None) -> int:
    import maskrcnn_benchmark.modeling.dense_heads  # noqa: F401  (registers MODEL.GFL etc.: before the config)
    from maskrcnn_benchmark.utils.logger import setup_logger

    parser = build_parser()
    args = parser.parse_args(argv)
    cfg = cfg_from_args(parser, args)
    setup_logger("maskrcnn_benchmark", None, 0)
    try:
        batches = [int(b) for b in args.batches.split(",") if b]
    except ValueError:
        parser.error(f"--batches {args.batches!r}: comma-separated integers expected")
    if not batches or min(batches) < 1:
        parser.error(f"--batches {args.batches!r}: at least one batch size >= 1")
    if len(cfg.DATASETS.TEST) != 1:
        parser.error(f"DATASETS.TEST has {len(cfg.DATASETS.TEST)} entries; give exactly one")
    try:
        paths = selected_paths(args, batches)
    except ValueError as e:
        parser.error(str(e))
    if not paths[0].startswith("test_net_b"):
        parser.error("--paths must include test_net (the reference)")
    os.makedirs(args.work_dir, exist_ok=True)
    if args.random_weights is not None:
        if cfg.MODEL.WEIGHT:
            parser.error("--random-weights and MODEL.WEIGHT: give one")
        cfg = _with(cfg, MODEL__WEIGHT=random_weights(cfg, args.random_weights,
                                                      os.path.join(args.work_dir, "weights")))
    elif not cfg.MODEL.WEIGHT:
        parser.error("MODEL.WEIGHT is empty: give the weights (or --random-weights SEED)")
    cfg = _with(cfg, MODEL__DEVICE="cpu")
    metrics = run_paths(cfg, args, paths, batches)
    lines, ok = report(args, cfg, paths, metrics)
    print(f"\nreference: {paths[0]}; tolerances: boxes {args.box_tol:g} px, scores {args.score_tol:g}, "
          f"AP {args.ap_tol:g} (fp16 AP {args.fp16_ap_tol:g})")
    print("\n".join(lines))
    print("all paths agree" if ok else "SOME PATHS DISAGREE")
    return 0 if ok else 1


if __name__ == "__main__":
    from maskrcnn_benchmark.utils.errors import run_tool  # user-input errors: status 2, no traceback

    sys.exit(run_tool(main))
