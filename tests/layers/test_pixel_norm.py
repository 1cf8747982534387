"""The model-side normalisation of uint8 batches (layers/pixel_norm.py) against the former
loader path (ToTensor float + Normalize per image, zero padding in normalised space) and a plain
re-derivation: ``(x - mean) / std`` per image in float32, zero-padded."""
import math

import numpy as np
import pytest
import torch

from maskrcnn_benchmark.config import cfg as base_cfg
from maskrcnn_benchmark.data.collate_batch import BatchCollator
from maskrcnn_benchmark.data.transforms import Normalize, ToTensor, build_transforms
from maskrcnn_benchmark.layers.pixel_norm import PixelNormalizer, normalize_pixels
from maskrcnn_benchmark.structures.image_list import to_image_list

CAFFE = ([102.9801, 115.9465, 122.7717], [1.0, 1.0, 1.0])
TORCHVISION = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
SIZES = [(37, 50), (64, 29), (41, 41)]  # (h, w), mixed


def _images(sizes=SIZES, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in sizes]


def _reference_batch(images, mean, std, to_bgr255, size_divisible):
    """Plain re-derivation: per image float32 (x - mean) / std (RGB 0..1 first when not
    to_bgr255), copied into a zero batch whose sides are rounded up to size_divisible."""
    h = max(im.shape[0] for im in images)
    w = max(im.shape[1] for im in images)
    if size_divisible > 0:
        h, w = (int(math.ceil(v / size_divisible) * size_divisible) for v in (h, w))
    out = torch.zeros(len(images), 3, h, w)
    m = torch.tensor(mean, dtype=torch.float32)
    s = torch.tensor(std, dtype=torch.float32)
    for i, im in enumerate(images):
        x = torch.tensor(im.astype(np.float32))          # [h, w, 3] BGR
        if not to_bgr255:
            x = x[..., [2, 1, 0]] / 255.0
        x = (x - m) / s
        out[i, :, : im.shape[0], : im.shape[1]] = x.permute(2, 0, 1)
    return out


def _old_path_batch(images, mean, std, to_bgr255, size_divisible):
    """The loader before the change: ToTensor (float) -> Normalize per image, then to_image_list."""
    norm = Normalize(mean, std, to_bgr255)
    return to_image_list([norm(*ToTensor()(im, None))[0] for im in images], size_divisible)


def _new_path(images, mean, std, to_bgr255, size_divisible, memory_format=torch.contiguous_format):
    """The loader now (ToTensor(uint8) -> BatchCollator) and the model's PixelNormalizer."""
    samples = [(ToTensor(torch.uint8)(im, None)[0], None, i) for i, im in enumerate(images)]
    batch, _, _ = BatchCollator(size_divisible)(samples)
    assert batch.tensors.dtype == torch.uint8
    out = PixelNormalizer(mean, std, to_bgr255)(batch.tensors, batch.image_sizes, memory_format)
    return batch, out


@pytest.mark.parametrize("size_divisible", [0, 32, 7])
@pytest.mark.parametrize("stats,to_bgr255", [(CAFFE, True), (TORCHVISION, False), (TORCHVISION, True)])
def test_normalised_batch_equals_old_path_bit_for_bit(stats, to_bgr255, size_divisible):
    images = _images()
    mean, std = stats
    batch, new = _new_path(images, mean, std, to_bgr255, size_divisible)
    old = _old_path_batch(images, mean, std, to_bgr255, size_divisible)
    ref = _reference_batch(images, mean, std, to_bgr255, size_divisible)
    assert batch.image_sizes == old.image_sizes == [(h, w) for h, w in SIZES]
    assert new.dtype == torch.float32 and new.shape == old.tensors.shape == ref.shape
    assert torch.equal(new, old.tensors)
    assert torch.equal(new, ref)
    # the padding is +0.0 as the old zero batch (not -0.0 from a multiply by a mask)
    pad = torch.ones_like(new, dtype=torch.bool)
    for i, (h, w) in enumerate(batch.image_sizes):
        pad[i, :, :h, :w] = False
    assert not torch.signbit(new[pad]).any() and (new[pad] == 0).all()


def test_channels_last_output_has_the_same_values():
    images = _images(seed=1)
    _, new = _new_path(images, *TORCHVISION, False, 32, torch.channels_last)
    assert new.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(new, _reference_batch(images, *TORCHVISION, False, 32))


def test_collate_pads_uint8_with_zeros_and_never_reads_stale_memory():
    """The batch is allocated uninitialised; everything outside each image must still be 0."""
    images = [np.full((5, 9, 3), 255, np.uint8), np.full((11, 4, 3), 255, np.uint8)]
    for _ in range(3):  # reuse of freed memory would show up as non-zero padding
        batch, _, _ = BatchCollator(8)([(ToTensor(torch.uint8)(im, None)[0], None, i)
                                        for i, im in enumerate(images)])
        x = batch.tensors
        assert x.shape == (2, 3, 16, 16) and x.dtype == torch.uint8
        assert int(x.sum()) == 255 * 3 * (5 * 9 + 11 * 4)
        assert (x[0, :, :5, :9] == 255).all() and (x[1, :, :11, :4] == 255).all()


def test_loader_transforms_then_model_normaliser_equal_the_old_transforms():
    """build_transforms (uint8 now) + the model's normaliser == the former build_transforms with
    Normalize, for the test transforms of the default config and a torchvision-style one."""
    cfg = base_cfg.clone()
    cfg.merge_from_list(["INPUT.MIN_SIZE_TEST", 24, "INPUT.MAX_SIZE_TEST", 40])
    for to_bgr255, (mean, std) in ((True, CAFFE), (False, TORCHVISION)):
        cfg.merge_from_list(["INPUT.TO_BGR255", to_bgr255, "INPUT.PIXEL_MEAN", mean, "INPUT.PIXEL_STD", std])
        transforms = build_transforms(cfg, is_train=False)
        images = _images()
        new_items = [transforms(im, None)[0] for im in images]
        assert all(t.dtype == torch.uint8 for t in new_items)
        batch = to_image_list(new_items, 32)
        new = PixelNormalizer(mean, std, to_bgr255)(batch.tensors, batch.image_sizes)
        norm = Normalize(mean, std, to_bgr255)
        old = to_image_list([norm(t.float(), None)[0] for t in new_items], 32)
        assert torch.equal(new, old.tensors)


def test_normalize_pixels_rule():
    x = torch.tensor([10, 20, 30], dtype=torch.uint8).reshape(3, 1, 1)  # B, G, R
    mean = torch.tensor([1.0, 2.0, 3.0]).reshape(3, 1, 1)
    std = torch.tensor([0.5, 1.0, 2.0]).reshape(3, 1, 1)
    assert normalize_pixels(x, mean, std, True).flatten().tolist() == [18.0, 18.0, 13.5]
    rgb = normalize_pixels(x, mean, std, False).flatten()
    torch.testing.assert_close(rgb, torch.tensor([(30 / 255 - 1) / 0.5, (20 / 255 - 2), (10 / 255 - 3) / 2]))
    xf = x.float()
    assert normalize_pixels(xf, mean, std, True) is not xf and xf.flatten().tolist() == [10.0, 20.0, 30.0]
    with pytest.raises(ValueError, match="3 channels"):
        normalize_pixels(torch.zeros(2, 4, 4), mean, std, True)


def test_normaliser_buffers_and_errors():
    norm = PixelNormalizer(*CAFFE)
    assert dict(norm.state_dict()) == {}  # non-persistent: checkpoints unchanged
    assert norm.mean.shape == norm.std.shape == (3, 1, 1) and norm.mean.dtype == torch.float32
    assert norm.double()(torch.zeros(1, 3, 2, 2, dtype=torch.uint8)).dtype == torch.float64
    with pytest.raises(ValueError, match="uint8"):
        PixelNormalizer(*CAFFE)(torch.zeros(1, 3, 2, 2))
    with pytest.raises(ValueError, match="std must be non-zero"):
        PixelNormalizer([0, 0, 0], [1, 0, 1])
    with pytest.raises(ValueError, match="3 values"):
        PixelNormalizer([0, 0], [1, 1])
