import numpy as np
import pytest
import torch

from maskrcnn_benchmark.config import cfg as base_cfg
from maskrcnn_benchmark.data.transforms import (Compose, Normalize, RandomHorizontalFlip, Resize, ToTensor,
                                                build_transforms, get_size)
from maskrcnn_benchmark.structures.bounding_box import BoxList


def _target(w=40, h=20):
    t = BoxList(torch.tensor([[2.0, 3.0, 12.0, 13.0], [30.0, 0.0, 40.0, 20.0]]), (w, h))
    t.add_field("labels", torch.tensor([1, 2]))
    return t


@pytest.mark.parametrize("wh, min_size, max_size, expected_hw", [
    ((640, 480), 800, 1333, (800, 1066)),      # shorter side -> 800; 640*800/480 = 1066.67 truncated
    ((480, 640), 800, 1333, (1066, 800)),
    ((1000, 200), 800, 1333, (267, 1335)),     # capped: round(1333*200/1000) = 267, int(267*1000/200) = 1335
    ((500, 500), 500, 1333, (500, 500)),       # already the right size
    ((300, 100), 50, None, (50, 150)),
])
def test_get_size_matches_hand_computed(wh, min_size, max_size, expected_hw):
    assert get_size(wh, min_size, max_size) == expected_hw


def test_resize_image_and_boxes():
    image = np.zeros((20, 40, 3), np.uint8)
    out, t = Resize(10, 1000)(image, _target())
    assert out.shape == (10, 20, 3)
    assert t.size == (20, 10)
    torch.testing.assert_close(t.bbox, _target().bbox * 0.5)
    ten, t2 = Resize(10, 1000)(torch.zeros(3, 20, 40), _target())
    assert ten.shape == (3, 10, 20) and t2.size == (20, 10)


def test_resize_range_draws_every_size():
    torch.manual_seed(0)
    r = Resize(tuple(range(10, 13)), None)
    sizes = {r(np.zeros((20, 40, 3), np.uint8), None)[0].shape[0] for _ in range(60)}
    assert sizes == {10, 11, 12}


def test_flip_boxes_and_pixels():
    image = np.zeros((20, 40, 3), np.uint8)
    image[0, 0] = 255
    out, t = RandomHorizontalFlip(1.0)(image, _target())
    assert out[0, 39, 0] == 255 and out[0, 0, 0] == 0
    torch.testing.assert_close(t.bbox, torch.tensor([[28.0, 3.0, 38.0, 13.0], [0.0, 0.0, 10.0, 20.0]]))
    assert torch.equal(t.get_field("labels"), torch.tensor([1, 2]))
    same, t0 = RandomHorizontalFlip(0.0)(image, _target())
    assert same is image and torch.equal(t0.bbox, _target().bbox)


def test_to_tensor_and_normalize_values():
    image = np.zeros((2, 3, 3), np.uint8)
    image[..., 0], image[..., 1], image[..., 2] = 10, 20, 30  # B, G, R
    x, _ = ToTensor()(image, None)
    assert x.shape == (3, 2, 3) and x.dtype == torch.float32
    assert x[:, 0, 0].tolist() == [10.0, 20.0, 30.0]
    bgr, _ = Normalize([1.0, 2.0, 3.0], [1.0, 2.0, 3.0], to_bgr255=True)(x, None)
    assert bgr[:, 1, 2].tolist() == pytest.approx([9.0, 9.0, 9.0])
    rgb, _ = Normalize([0.1, 0.0, 0.0], [0.5, 1.0, 1.0], to_bgr255=False)(x, None)
    assert rgb[:, 0, 0].tolist() == pytest.approx([(30 / 255 - 0.1) / 0.5, 20 / 255, 10 / 255])


def test_to_tensor_uint8_is_a_chw_view_and_normalize_takes_uint8():
    """ToTensor(torch.uint8) gives the HWC array's CHW view (no copy; values unchanged), and
    Normalize of it equals Normalize of the float ToTensor (the former loader's values)."""
    image = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    x, _ = ToTensor(torch.uint8)(image, None)
    assert x.dtype == torch.uint8 and x.shape == (3, 5, 7)
    assert x.data_ptr() == image.ctypes.data  # a view
    assert np.array_equal(x.numpy(), image.transpose(2, 0, 1))
    xf, _ = ToTensor()(image, None)
    for bgr in (True, False):
        norm = Normalize([0.4, 0.5, 0.6], [0.2, 0.3, 0.25], to_bgr255=bgr)
        assert torch.equal(norm(x, None)[0], norm(xf, None)[0])
    with pytest.raises(ValueError, match="uint8 image"):
        ToTensor()(image.astype(np.float32), None)
    with pytest.raises(ValueError, match="dtype"):
        ToTensor(torch.int64)


def test_build_transforms_from_config():
    cfg = base_cfg.clone()
    cfg.merge_from_list(["INPUT.MIN_SIZE_TRAIN", (16,), "INPUT.MAX_SIZE_TRAIN", 64, "INPUT.MIN_SIZE_TEST", 8,
                         "INPUT.MAX_SIZE_TEST", 64, "INPUT.FLIP_PROB_TRAIN", 0.5])
    train = build_transforms(cfg, True)
    assert [type(t) for t in train.transforms] == [Resize, RandomHorizontalFlip, ToTensor]
    test = build_transforms(cfg, False)
    assert [type(t) for t in test.transforms] == [Resize, ToTensor]
    img, t = test(np.full((20, 40, 3), 100, np.uint8), _target())
    # uint8 BGR 0..255: the model normalises (layers/pixel_norm.py)
    assert img.shape == (3, 8, 16) and img.dtype == torch.uint8 and t.size == (16, 8)
    assert img[:, 0, 0].tolist() == [100, 100, 100]
    cfg.merge_from_list(["INPUT.MIN_SIZE_RANGE_TRAIN", (10, 12)])
    assert build_transforms(cfg, True).transforms[0].min_size == (10, 11, 12)


def test_compose_passes_target_through():
    seen = []
    t = Compose([lambda im, tg: (im + 1, tg), lambda im, tg: (seen.append(tg) or im * 2, tg)])
    out, tg = t(1, "target")
    assert out == 4 and tg == "target" and seen == ["target"]


def test_normalize_builds_its_statistics_once_per_device_and_dtype():
    norm = Normalize([1.0, 2.0, 3.0], [0.5, 1.0, 4.0], to_bgr255=True)
    x = torch.rand(3, 4, 5) * 255
    mean, std = norm.stats(x)
    assert mean.shape == std.shape == (3, 1, 1) and mean.flatten().tolist() == [1.0, 2.0, 3.0]
    out, _ = norm(x, None)
    assert torch.equal(out, (x - torch.tensor([1.0, 2.0, 3.0])[:, None, None]) / torch.tensor([0.5, 1.0, 4.0])[:, None, None])
    assert norm.stats(x * 2)[0] is mean  # the same tensors on the next call
    assert norm.stats(x.double())[0].dtype == torch.float64 and norm.stats(x.double())[0] is not mean
