"""Every yaml under configs/ merges into the defaults and builds (big models on the meta device:
construction without memory or initialisation cost)."""
from pathlib import Path

import pytest
import torch

from maskrcnn_benchmark.config import cfg as default_cfg
from maskrcnn_benchmark.config import setup_cfg
from maskrcnn_benchmark.modeling.dense_heads import DENSE_HEADS, get_num_classes, head_name, set_num_classes
from maskrcnn_benchmark.modeling.detector import build_detection_model

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "configs").rglob("*.yaml"))
DCN_MISSING = "is not built or failed to load"  # layers._ops.load_ops


def _alnum(name: str) -> str:
    return "".join(ch for ch in name.lower() if ch.isalnum())


# the head each family folder's files must build (as the tools read them: setup_cfg): the
# registered head the folder is named after ("free_anchor" -> FREEANCHOR, "gfl" -> GFL)
FAMILY_HEADS = {folder.name: head for folder in (ROOT / "configs").iterdir() if folder.is_dir()
                for head in DENSE_HEADS if _alnum(head) == _alnum(folder.name)}


def test_every_config_folder_is_a_registered_head():
    folders = {p.split("/")[1] for p in CONFIGS}
    assert folders <= set(FAMILY_HEADS), f"folders named after no registered head: {folders - set(FAMILY_HEADS)}"


def _load(path):
    cfg = setup_cfg(str(ROOT / path)).clone()
    cfg.defrost()
    return cfg


def test_config_set_is_complete():
    names = {Path(p).stem for p in CONFIGS}
    for family in ("atss", "dynamic_atss"):
        for dcn in ("", "dcnv2_"):
            for v in ("R_50_FPN_1x", "R_101_FPN_1x", "R_101_FPN_2x", "X_101_32x8d_FPN_2x",
                      "X_101_64x4d_FPN_2x"):
                assert f"{family}_{dcn}{v}" in names
        assert f"{family}_R_18_FPN_small" in names


@pytest.mark.parametrize("path", CONFIGS)
def test_config_merges_and_builds(path):
    cfg = _load(path)
    name = head_name(cfg)
    assert name == FAMILY_HEADS[Path(path).parent.name]
    if "dcnv2" in path:
        assert cfg.MODEL.ATSS.USE_DCN_IN_TOWER and cfg.MODEL.RESNETS.WITH_MODULATED_DCN
        expected = (False, False, True, True) if "X_101" in path else (False, True, True, True)
        assert tuple(cfg.MODEL.RESNETS.STAGE_WITH_DCN) == expected
    if get_num_classes(cfg) == 0:  # "from the dataset": resolved by train_net
        set_num_classes(cfg, 81)
    cfg.MODEL.DEVICE = "meta"
    try:
        with torch.device("meta"):
            model = build_detection_model(cfg)
    except (RuntimeError, ImportError) as e:
        if "dcnv2" in path and DCN_MISSING in str(e):
            pytest.skip("DCN op not available yet")
        raise
    num_params = sum(p.numel() for p in model.parameters())
    assert num_params > 1_000_000
    if Path(path).stem in ("atss_R_50_FPN_1x", "dynamic_atss_R_50_FPN_1x"):
        # ResNet-50 (23.5M without fc) + FPN P3-P7 + two 4-conv GN towers with 80 classes
        assert 31_500_000 < num_params < 32_500_000


ORIGINAL_RELEASE_CONFIGS = [p for p in CONFIGS if Path(p).parent.name in ("atss", "dynamic_atss")]


@pytest.mark.parametrize("path", ORIGINAL_RELEASE_CONFIGS)
def test_original_release_files_build_their_release_head(tmp_path, path):
    """Each ATSS / Dynamic ATSS config as its original release wrote it (``ATSS_ON: True`` instead
    of ``MODEL.HEAD``), under its release's name: the head that release built."""
    text = (ROOT / path).read_text()
    text = "\n".join("  ATSS_ON: True" if line.strip().startswith(("HEAD:", "ATSS_ON:")) else line
                     for line in text.splitlines()) + "\n"
    assert "ATSS_ON: True" in text and "HEAD:" not in text
    original = tmp_path / Path(path).parent.name / Path(path).name
    original.parent.mkdir()
    original.write_text(text)
    assert setup_cfg(str(original)).MODEL.HEAD == FAMILY_HEADS[Path(path).parent.name]


def test_unknown_key_raises(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("MODEL:\n  ATSS:\n    NOT_A_KEY: 1\n")
    with pytest.raises(KeyError, match="NOT_A_KEY"):
        default_cfg.clone().merge_from_file(str(bad))
    with pytest.raises((KeyError, AssertionError), match="NOT_A_KEY"):  # yacs asserts here
        default_cfg.clone().merge_from_list(["MODEL.ATSS.NOT_A_KEY", 1])
