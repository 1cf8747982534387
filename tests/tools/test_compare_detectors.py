"""tools/benchmarks/compare_detectors.py helpers, and the premise of the comparison: every
synthetic config shares the backbone, data, input sizes, schedule and evaluation."""
import importlib.util
import json
from pathlib import Path

import pytest

from maskrcnn_benchmark.config import cfg as default_cfg
from maskrcnn_benchmark.modeling.dense_heads import DENSE_HEADS

ROOT = Path(__file__).resolve().parents[2]
REFERENCE = "configs/dynamic_atss/dynamic_atss_R_18_FPN_synthetic.yaml"
# Keys a detector may set for itself (its head node and its method's own training settings).
# The head nodes are those the registered heads read (RETINANET below: it holds a backbone key).
HEAD_SPECIFIC = (("MODEL.HEAD",)
                 + tuple(sorted({f"MODEL.{n}." for nodes in DENSE_HEADS.nodes_read.values() for n in nodes
                                 if n != "RETINANET"}))
                 + ("MODEL.FPN.RELU_BEFORE_EXTRA_CONVS", "SOLVER.CLIP_GRAD_NORM", "SOLVER.WEIGHT_DECAY_NORM",
                    "OUTPUT_DIR"))


def _load_script():
    spec = importlib.util.spec_from_file_location(
        "compare_detectors", ROOT / "tools" / "benchmarks" / "compare_detectors.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _flat(node, prefix=""):
    out = {}
    for k, v in node.items():
        if hasattr(v, "items"):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _shared_keys(path):
    cfg = default_cfg.clone()
    cfg.merge_from_file(str(ROOT / path))
    flat = _flat(cfg)
    return {k: v for k, v in flat.items()
            if not k.startswith(HEAD_SPECIFIC)
            and not (k.startswith("MODEL.RETINANET.") and k != "MODEL.RETINANET.USE_C5")}


SYNTHETIC = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "configs").rglob("*synthetic*.yaml"))


@pytest.mark.parametrize("path", [p for p in SYNTHETIC if p != REFERENCE])
def test_synthetic_configs_share_everything_but_the_head(path):
    if not (ROOT / REFERENCE).exists():
        pytest.skip(f"{REFERENCE} not there")
    ref, other = _shared_keys(REFERENCE), _shared_keys(path)
    diff = {k: (ref.get(k), other.get(k)) for k in set(ref) | set(other) if ref.get(k) != other.get(k)}
    assert not diff, f"{path} differs from {REFERENCE} outside the head keys: {diff}"


def test_every_detector_has_a_known_config_path():
    script = _load_script()
    assert list(script.DETECTORS)[:6] == ["ATSS", "Dynamic ATSS", "AutoAssign", "FreeAnchor", "RetinaNet",
                                          "FCOS"]
    heads = set()
    for name, path in script.DETECTORS.items():
        assert "synthetic" in path and path.endswith(".yaml") and (ROOT / path).exists(), path
        cfg = default_cfg.clone()
        cfg.merge_from_file(str(ROOT / path))
        heads.add(cfg.MODEL.HEAD)
    assert heads == set(DENSE_HEADS), f"registered heads the script misses: {set(DENSE_HEADS) - heads}"


def test_schedule_overrides():
    script = _load_script()
    assert script.schedule_overrides(None, None, None, None) == []
    opts = script.schedule_overrides(900, None, 0.02, 4)
    pairs = dict(zip(opts[::2], opts[1::2]))
    assert pairs["SOLVER.MAX_ITER"] == "900" and pairs["SOLVER.STEPS"] == "(600,800,)"
    assert pairs["SOLVER.BASE_LR"] == "0.02" and pairs["SOLVER.IMS_PER_BATCH"] == "4"
    tiny = dict(zip(*[iter(script.schedule_overrides(2, None, None, None))] * 2))
    assert tiny["SOLVER.STEPS"] == "(1,)"  # strictly increasing milestones below MAX_ITER
    cfg = default_cfg.clone()
    cfg.merge_from_list(opts)  # the overrides are valid config keys and values
    assert tuple(cfg.SOLVER.STEPS) == (600, 800)


def test_metrics_reading_and_table(tmp_path):
    script = _load_script()
    assert script.read_metrics(tmp_path) is None
    folder = tmp_path / "inference" / "synthetic_coco_val"
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text(json.dumps(
        {"dataset": "synthetic_coco_val", "num_images": 2, "inference_time_s": 1.5,
         "bbox": {"AP": 0.25, "AP50": 0.5, "AP75": 0.125}}))
    assert script.read_metrics(tmp_path)["bbox"]["AP50"] == 0.5
    table = script.markdown_table([
        {"detector": "FCOS", "AP": 0.25, "AP50": 0.5, "AP75": 0.125, "train_s": 10.0, "wall_s": 12.0},
        {"detector": "ATSS", "wall_s": 0.0, "error": "missing config"}])
    lines = table.splitlines()
    assert lines[0].startswith("| detector | AP | AP50 | AP75 | training time")
    assert lines[2] == "| FCOS | 25.0 | 50.0 | 12.5 | 10 | 12 |"
    assert "missing config" in lines[3]
