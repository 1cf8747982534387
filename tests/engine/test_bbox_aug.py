"""Test-time augmentation: exact flip / scale mapping, merges against plain re-derivations, caps, config errors,
and test_net / distributed evaluation with TTA."""
import importlib.util
import os

import pytest
import torch
from torch import nn

from dist_helpers import run_ranks
from plain_boxes import iou
from maskrcnn_benchmark.config import cfg as default_cfg
from maskrcnn_benchmark.engine.bbox_aug import (Augmentation, BBoxAugmentor, box_voting,
                                                build_bbox_augmentor, detect_augmented,
                                                keep_size_range, merge_detections)
from maskrcnn_benchmark.data.transforms import transforms as T
from maskrcnn_benchmark.structures.bounding_box import BoxList

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
IDENTITY = T.Normalize((0.0, 0.0, 0.0), (1.0, 1.0, 1.0), True)


def _boxlist(boxes, scores, labels, size):
    b = BoxList(torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4), size)
    b.add_field("scores", torch.as_tensor(scores, dtype=torch.float32))
    b.add_field("labels", torch.as_tensor(labels, dtype=torch.int64))
    return b


class BrightRegionDetector(nn.Module):
    """Flip-equivariant by construction: channel c's pixels > 0.5 give one box of label c + 1 (the
    pixel-edge bounding box, continuous no-"+1" frame), score = the channel's mean over the box."""

    def forward(self, images):
        out = []
        for t, (h, w) in zip(images.tensors, images.image_sizes):
            boxes, scores, labels = [], [], []
            for c in range(3):
                ys, xs = torch.nonzero(t[c, :h, :w] > 0.5, as_tuple=True)
                if len(xs):
                    boxes.append([xs.min().item(), ys.min().item(), xs.max().item() + 1.0, ys.max().item() + 1.0])
                    scores.append(0.5 + 0.1 * c)
                    labels.append(c + 1)
            out.append(_boxlist(boxes, scores, labels, (w, h)))
        return out


class RelativeBoxDetector(nn.Module):
    """One box at fixed fractions of its (unpadded) input image: maps back to the same fractions."""

    FRAC = (0.1, 0.2, 0.45, 0.9)

    def forward(self, images):
        return [_boxlist([[f * s for f, s in zip(self.FRAC, (w, h, w, h))]], [0.9], [2], (w, h))
                for h, w in images.image_sizes]


def _images():
    a = torch.zeros(3, 30, 50)
    a[0, 3:9, 4:20] = 1.0
    a[1, 10:25, 30:47] = 1.0
    b = torch.zeros(3, 41, 37)
    b[2, 0:7, 0:11] = 1.0
    b[0, 20:40, 5:36] = 1.0
    return [a, b]


def test_flipped_detections_flipped_back_equal_the_unflipped():
    model, images = BrightRegionDetector(), _images()
    plain = detect_augmented(model, images, Augmentation(30, 1000), IDENTITY)
    flipped = detect_augmented(model, images, Augmentation(30, 1000, hflip=True), IDENTITY)
    for p, f, img in zip(plain, flipped, images):
        assert p.size == f.size == (img.shape[-1], img.shape[-2])
        assert len(p) == 2
        assert torch.equal(p.bbox, f.bbox)
        assert torch.equal(p.get_field("labels"), f.get_field("labels"))
    # the first image is already 30 px tall: the boxes are the regions' own pixel edges
    assert plain[0].bbox.tolist() == [[4.0, 3.0, 20.0, 9.0], [30.0, 10.0, 47.0, 25.0]]
    # merged (NMS) flip TTA == the unflipped detections (each pair overlaps with IoU 1)
    tta = BBoxAugmentor([Augmentation(30, 1000), Augmentation(30, 1000, hflip=True)], "nms", 0.5,
                               pixel_mean=(0, 0, 0), pixel_std=(1, 1, 1))
    for merged, p in zip(tta(model, images), plain):
        order = torch.argsort(p.get_field("scores"), descending=True)
        assert torch.equal(merged.bbox, p.bbox[order])


@pytest.mark.parametrize("aug", [Augmentation(60, 1000), Augmentation(17, 1000, True), Augmentation(90, 70),
                                 Augmentation(45, 4000, True, (0.0, 1e4))])
def test_scaled_and_flipped_views_map_back_exactly(aug):
    images = _images()
    out = detect_augmented(RelativeBoxDetector(), images, aug, IDENTITY)
    for img, p in zip(images, out):
        h, w = img.shape[-2:]
        f = RelativeBoxDetector.FRAC
        expect = torch.tensor([[f[0] * w, f[1] * h, f[2] * w, f[3] * h]])
        if aug.hflip:
            expect = torch.tensor([[w - f[2] * w, f[1] * h, w - f[0] * w, f[3] * h]])
        assert p.size == (w, h)
        torch.testing.assert_close(p.bbox, expect, rtol=1e-5, atol=1e-4)


def test_size_range_filters_in_the_view_frame():
    boxes = torch.tensor([[0, 0, 10, 10], [0, 0, 20, 20], [0, 0, 30, 40.0], [0, 0, 5, 5]])
    assert keep_size_range(boxes, 10, 30).tolist() == [False, True, False, False]  # exclusive ends
    assert keep_size_range(boxes, 0, 1e4).tolist() == [True] * 4
    # a view at twice the size: a 10x10 original box is 20x20 there, kept by (15, 25)
    images = [torch.zeros(3, 30, 50)]

    class Fixed(nn.Module):
        def forward(self, il):
            h, w = il.image_sizes[0]
            return [_boxlist([[0, 0, 20, 20], [0, 0, 40, 40]], [0.9, 0.8], [1, 1], (w, h))]

    out = detect_augmented(Fixed(), images, Augmentation(60, 1000, False, (15.0, 25.0)), IDENTITY)[0]
    assert out.bbox.tolist() == [[0.0, 0.0, 10.0, 10.0]]


def _plain_vote(boxes, scores, labels, th, soft_th=None):
    """The original greedy loop, per class, in plain Python (continuous IoU, no "+1")."""
    out = []
    for c in sorted(set(labels)):
        dets = sorted([(s, b) for b, s, l in zip(boxes, scores, labels) if l == c], key=lambda d: -d[0])
        while dets:
            head = dets[0]
            members = [(s, b, iou(head[1], b)) for s, b in dets if iou(head[1], b) >= th]
            dets = [(s, b) for s, b in dets if iou(head[1], b) < th]
            wsum = sum(s for s, _, _ in members)
            mean = [sum(s * b[k] for s, b, _ in members) / wsum for k in range(4)]
            out.append((head[0], mean, c))
            if soft_th is not None and len(members) > 1:
                out.extend((s * (1 - o), b, c) for s, b, o in members[1:] if s * (1 - o) >= soft_th)
    return sorted(out, key=lambda d: -d[0])


def _plain_nms(boxes, scores, labels, th):
    out = []
    order = sorted(range(len(boxes)), key=lambda i: -scores[i])
    for i in order:
        if all(labels[j] != labels[i] or iou(boxes[i], boxes[j]) <= th for j in out):
            out.append(i)
    return out


HAND_BOXES = [[10, 10, 50, 50], [12, 11, 52, 49], [9, 12, 48, 53], [30, 30, 70, 70], [100, 100, 140, 150],
              [101, 98, 139, 152], [10, 10, 50, 50], [11, 9, 51, 50], [200, 5, 220, 40]]
HAND_SCORES = [0.9, 0.8, 0.6, 0.7, 0.95, 0.5, 0.85, 0.3, 0.4]
HAND_LABELS = [1, 1, 1, 1, 2, 2, 3, 3, 1]


@pytest.mark.parametrize("soft", [None, 0.05, 0.2])
@pytest.mark.parametrize("th", [0.5, 0.66, 0.9])
def test_box_voting_matches_the_plain_greedy_loop(th, soft):
    boxes, scores, labels = box_voting(torch.tensor(HAND_BOXES, dtype=torch.float32), torch.tensor(HAND_SCORES),
                                       torch.tensor(HAND_LABELS), th, soft)
    expect = _plain_vote(HAND_BOXES, HAND_SCORES, HAND_LABELS, th, soft)
    assert len(boxes) == len(expect)
    torch.testing.assert_close(scores, torch.tensor([e[0] for e in expect]))
    torch.testing.assert_close(boxes, torch.tensor([e[1] for e in expect]), rtol=1e-5, atol=1e-4)
    assert labels.tolist() == [e[2] for e in expect]


def test_vote_cluster_hand_computed():
    # two boxes of one class with IoU 0.81 merge into their score-weighted mean, the best score
    b, s, l = box_voting(torch.tensor([[0, 0, 10, 10], [1, 1, 10, 10.0]]), torch.tensor([0.75, 0.25]),
                         torch.tensor([1, 1]), 0.66)
    torch.testing.assert_close(b, torch.tensor([[0.25, 0.25, 10.0, 10.0]]))
    assert s.tolist() == [0.75] and l.tolist() == [1]


@pytest.mark.parametrize("th", [0.3, 0.6])
def test_nms_merge_matches_plain_nms_and_caps(th):
    boxes, scores, labels = merge_detections(torch.tensor(HAND_BOXES, dtype=torch.float32),
                                             torch.tensor(HAND_SCORES), torch.tensor(HAND_LABELS), "nms", th,
                                             0.66, 0.05, 100)
    keep = _plain_nms(HAND_BOXES, HAND_SCORES, HAND_LABELS, th)
    assert boxes.tolist() == [[float(v) for v in HAND_BOXES[i]] for i in keep]
    assert labels.tolist() == [HAND_LABELS[i] for i in keep]
    for merge in ("nms", "vote", "soft-vote"):
        b, s, _ = merge_detections(torch.tensor(HAND_BOXES, dtype=torch.float32), torch.tensor(HAND_SCORES),
                                   torch.tensor(HAND_LABELS), merge, th, 0.66, 0.01, 2)
        assert len(b) == 2 and s.tolist() == sorted(s.tolist(), reverse=True)


class RandomBoxes(nn.Module):
    def forward(self, il):
        g = torch.Generator().manual_seed(sum(il.image_sizes[0]))
        out = []
        for h, w in il.image_sizes:
            xy = torch.rand(80, 2, generator=g) * torch.tensor([w, h]) * 0.7
            wh = torch.rand(80, 2, generator=g) * torch.tensor([w, h]) * 0.3 + 1
            out.append(_boxlist(torch.cat([xy, xy + wh], 1), torch.rand(80, generator=g),
                                torch.randint(1, 4, (80,), generator=g), (w, h)))
        return out


@pytest.mark.parametrize("merge", ["nms", "vote", "soft-vote"])
def test_tta_never_returns_more_than_detections_per_img(merge):
    cfg = _tta_cfg(["TEST.DETECTIONS_PER_IMG", 7, "TEST.BBOX_AUG.VOTE", True, "TEST.BBOX_AUG.MERGE_TYPE", merge,
                    "TEST.BBOX_AUG.SCALES", (20, 40, 60), "TEST.BBOX_AUG.SCALE_H_FLIP", True])
    tta = build_bbox_augmentor(cfg)
    assert len(tta.augmentations) == 7 and tta.merge_type == merge
    for out, img in zip(tta(RandomBoxes(), [torch.zeros(3, 30, 50), torch.zeros(3, 64, 33)]),
                        [(50, 30), (33, 64)]):
        assert 0 < len(out) <= 7 and out.size == img


def _tta_cfg(opts=()):
    cfg = default_cfg.clone()
    cfg.merge_from_list(["MODEL.HEAD", "ATSS", "TEST.BBOX_AUG.ENABLED", True, "INPUT.MIN_SIZE_TEST", 30,
                         "INPUT.MAX_SIZE_TEST", 100, *opts])
    return cfg


@pytest.mark.parametrize("opts, match", [
    (["TEST.BBOX_AUG.MERGE_TYPE", "avg"], "TEST.BBOX_AUG.MERGE_TYPE"),
    (["TEST.BBOX_AUG.VOTE_TH", 0.0], "TEST.BBOX_AUG.VOTE_TH"),
    (["TEST.BBOX_AUG.SCALES", (400, -1)], "TEST.BBOX_AUG.SCALES"),
    (["TEST.BBOX_AUG.SCALES", (400, 500), "TEST.BBOX_AUG.SCALE_RANGES", [[0, 100]]], "one \\[lo, hi\\] per scale"),
    (["TEST.BBOX_AUG.SCALES", (400,), "TEST.BBOX_AUG.SCALE_RANGES", [[100, 10]]], "0 <= lo < hi"),
    (["TEST.BBOX_AUG.MAX_SIZE", 0], "TEST.BBOX_AUG.MAX_SIZE"),
])
def test_bad_keys_give_clear_errors(opts, match):
    with pytest.raises(ValueError, match=match):
        build_bbox_augmentor(_tta_cfg(opts))


def test_disabled_is_none_and_the_original_yaml_builds():
    assert build_bbox_augmentor(default_cfg) is None
    cfg = default_cfg.clone()
    cfg.merge_from_file(os.path.join(ROOT, "configs/dynamic_atss/dynamic_atss_dcnv2_X_101_32x8d_FPN_2x.yaml"))
    cfg.merge_from_list(["TEST.BBOX_AUG.ENABLED", True])
    tta = build_bbox_augmentor(cfg)
    a = cfg.TEST.BBOX_AUG
    assert tta.merge_type == "soft-vote" and tta.vote_thresh == pytest.approx(0.66)
    assert tta.nms_thresh == cfg.MODEL.ATSS.NMS_TH and tta.soft_score_thresh == cfg.MODEL.ATSS.INFERENCE_TH
    views = tta.augmentations
    assert views[0] == Augmentation(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST)
    assert views[1].hflip == a.H_FLIP
    scaled = views[1 + int(a.H_FLIP):]
    assert len(scaled) == len(a.SCALES) * (2 if a.SCALE_H_FLIP else 1)
    assert [v.min_size for v in scaled[:: 2 if a.SCALE_H_FLIP else 1]] == list(a.SCALES)
    assert scaled[0].size_range == tuple(float(v) for v in a.SCALE_RANGES[0])


def _load_test_net():
    spec = importlib.util.spec_from_file_location("tools_test_net", os.path.join(ROOT, "tools", "test_net.py"))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    return tool


def test_test_net_rejects_bad_tta_keys_before_any_work(capsys):
    with pytest.raises(SystemExit):
        _load_test_net().main(["--config-file", os.path.join(ROOT, "configs/atss/atss_R_18_FPN_small.yaml"), "MODEL.DEVICE", "cpu",
                   "TEST.BBOX_AUG.ENABLED", "True", "TEST.BBOX_AUG.MERGE_TYPE", "avg"])
    assert "TEST.BBOX_AUG.MERGE_TYPE" in capsys.readouterr().err


TTA_WORKER = r'''
import os, sys
import torch
sys.path.insert(0, os.environ["MB_ROOT"])
torch.set_num_threads(1)
import importlib.util
spec = importlib.util.spec_from_file_location("test_net", os.path.join(os.environ["MB_ROOT"], "tools", "test_net.py"))
tool = importlib.util.module_from_spec(spec)
spec.loader.exec_module(tool)
rank = int(os.environ["RANK"])
tool.main([f"--local-rank={rank}", *sys.argv[1:]])
'''


@pytest.mark.slow
def test_distributed_tta_evaluation_equals_one_process(tmp_path):
    """Two processes (gloo) evaluating with flip + scale TTA and voting give rank 0 the detections of one process."""
    import json

    import cv2
    import numpy as np

    from maskrcnn_benchmark.modeling.detector import build_detection_model
    from maskrcnn_benchmark.utils.checkpoint import Checkpointer
    from maskrcnn_benchmark.config import setup_cfg

    rng = np.random.default_rng(0)
    (tmp_path / "img").mkdir()
    images, anns = [], []
    for i in range(4):
        img = np.full((64, 64, 3), 40, np.uint8)
        img[10 + 4 * i:40, 8:30 + 5 * i] = rng.integers(150, 255, 3)
        cv2.imwrite(str(tmp_path / "img" / f"{i}.png"), img)
        images.append({"id": i + 1, "file_name": f"{i}.png", "height": 64, "width": 64})
        anns.append({"id": i + 1, "image_id": i + 1, "category_id": 1, "bbox": [8, 10 + 4 * i, 22 + 5 * i, 30 - 4 * i],
                     "area": 1.0, "iscrowd": 0})
    (tmp_path / "ann.json").write_text(json.dumps({"images": images, "annotations": anns,
                                                   "categories": [{"id": 1, "name": "a"}]}))
    config = os.path.join(ROOT, "configs/atss/atss_R_18_FPN_small.yaml")
    dataset = f"{tmp_path / 'ann.json'}:{tmp_path / 'img'}"
    cfg = setup_cfg(config, ["MODEL.DEVICE", "cpu", "MODEL.ATSS.NUM_CLASSES", "2"])
    torch.manual_seed(0)
    weights = Checkpointer(build_detection_model(cfg), save_dir=str(tmp_path / "w"), save_to_disk=True).save("m")
    opts = ["--config-file", config, "MODEL.DEVICE", "cpu", "MODEL.WEIGHT", weights, "DATASETS.TEST", f"('{dataset}',)",
            "DATALOADER.NUM_WORKERS", "0", "TEST.IMS_PER_BATCH", "2", "INPUT.MIN_SIZE_TEST", "64",
            "INPUT.MAX_SIZE_TEST", "96", "MODEL.ATSS.INFERENCE_TH", "0.0", "MODEL.ATSS.NUM_CLASSES", "2",
            "TEST.BBOX_AUG.ENABLED", "True", "TEST.BBOX_AUG.H_FLIP", "True", "TEST.BBOX_AUG.SCALES", "(48,)",
            "TEST.BBOX_AUG.VOTE", "True", "TEST.DETECTIONS_PER_IMG", "20"]
    script = tmp_path / "worker.py"
    script.write_text(TTA_WORKER)
    run_ranks([script, *opts, "OUTPUT_DIR", tmp_path / "two"], timeout=240)
    _load_test_net().main([*opts, "OUTPUT_DIR", str(tmp_path / "one")])

    def load(run):
        folder = tmp_path / run / "inference" / "ann"
        dets = sorted(json.loads((folder / "bbox.json").read_text()), key=lambda d: (d["image_id"], -d["score"]))
        return dets, json.loads((folder / "metrics.json").read_text())

    (two, m2), (one, m1) = load("two"), load("one")
    assert m2["num_images"] == m1["num_images"] == 4 and m2["test_time_augmentation"] == m1["test_time_augmentation"]
    assert len(two) == len(one) and {d["image_id"] for d in two} == {1, 2, 3, 4}
    for a, b in zip(two, one):
        assert a["image_id"] == b["image_id"] and a["category_id"] == b["category_id"]
        assert a["score"] == pytest.approx(b["score"], abs=1e-4)
        assert a["bbox"] == pytest.approx(b["bbox"], abs=1e-2)
    assert max(sum(d["image_id"] == i for d in one) for i in range(1, 5)) <= 20


class FixedPixelBox(nn.Module):
    """The box [10, 10, 30, 30] in the pixels of every input, score = input width / 100."""

    def forward(self, il):
        return [_boxlist([[10.0, 10.0, 30.0, 30.0]], [w / 100.0], [1], (w, h)) for h, w in il.image_sizes]


def test_scale_merge_hand_computed():
    # a 40x40 image at shorter sides 40, 80, 50: the box maps back to A = [10, 10, 30, 30] (score 0.4),
    # B = [5, 5, 15, 15] (0.8), C = [8, 8, 24, 24] (0.5); IoU(A, C) = 196 / 460 = 0.426, the others < 0.2
    views = [Augmentation(40, 1000), Augmentation(80, 1000), Augmentation(50, 1000)]
    image = [torch.zeros(3, 40, 40)]
    kw = dict(pixel_mean=(0, 0, 0), pixel_std=(1, 1, 1), nms_thresh=0.4, vote_thresh=0.4)
    nms = BBoxAugmentor(views, "nms", **kw)(FixedPixelBox(), image)[0]
    assert nms.bbox.tolist() == [[5, 5, 15, 15], [8, 8, 24, 24]]
    torch.testing.assert_close(nms.get_field("scores"), torch.tensor([0.8, 0.5]))
    vote = BBoxAugmentor(views, "vote", **kw)(FixedPixelBox(), image)[0]
    merged = [(0.5 * c + 0.4 * a) / 0.9 for a, c in zip([10, 10, 30, 30], [8, 8, 24, 24])]
    torch.testing.assert_close(vote.bbox, torch.tensor([[5.0, 5, 15, 15], merged]))
    torch.testing.assert_close(vote.get_field("scores"), torch.tensor([0.8, 0.5]))
    # soft vote adds A back with 0.4 * (1 - 0.426) = 0.2296 when that clears the threshold
    soft = BBoxAugmentor(views, "soft-vote", soft_score_thresh=0.2, **kw)(FixedPixelBox(), image)[0]
    torch.testing.assert_close(soft.get_field("scores"), torch.tensor([0.8, 0.5, 0.4 * (1 - 196 / 460)]))
    assert soft.bbox[2].tolist() == [10, 10, 30, 30]
    assert len(BBoxAugmentor(views, "soft-vote", soft_score_thresh=0.3, **kw)(FixedPixelBox(), image)[0]) == 2


def test_batched_views_of_a_dense_detector_equal_one_view_at_a_time():
    """A dense detector's views share one NMS call and one host copy (``detect_views_batched``):
    the same detections, bit for bit, as running each view through ``model(images)``."""
    from maskrcnn_benchmark.engine.bbox_aug import detect_views_batched
    from maskrcnn_benchmark.modeling.dense_heads import set_num_classes
    from maskrcnn_benchmark.modeling.detector import build_detection_model

    cfg = default_cfg.clone()
    cfg.merge_from_file(os.path.join(ROOT, "configs/atss/atss_R_18_FPN_small.yaml"))
    cfg.merge_from_list(["MODEL.RESNETS.BACKBONE_OUT_CHANNELS", 64, "MODEL.ATSS.NUM_CONVS", 1,
                         "MODEL.ATSS.INFERENCE_TH", 0.0, "MODEL.ATSS.PRE_NMS_TOP_N", 50, "TEST.DETECTIONS_PER_IMG", 20])
    set_num_classes(cfg, 4)
    torch.manual_seed(0)
    model = build_detection_model(cfg).eval()
    g = torch.Generator().manual_seed(3)
    images = [torch.rand(3, 40, 56, generator=g) * 255, torch.rand(3, 48, 36, generator=g) * 255]
    views = [Augmentation(40, 1000), Augmentation(40, 1000, hflip=True), Augmentation(64, 1000),
             Augmentation(48, 1000, True, (4.0, 40.0))]
    normalize = T.Normalize((102.9801, 115.9465, 122.7717), (1.0, 1.0, 1.0), True)
    batched = detect_views_batched(model, images, views, normalize, 32)
    for aug, got in zip(views, batched):
        for a, b in zip(got, detect_augmented(model, images, aug, normalize, 32)):
            assert a.size == b.size and len(b) > 0
            assert torch.equal(a.bbox, b.bbox)
            assert torch.equal(a.get_field("scores"), b.get_field("scores"))
            assert torch.equal(a.get_field("labels"), b.get_field("labels"))
