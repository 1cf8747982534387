import pytest
import torch
import torch.nn.functional as F
from torch import nn

from maskrcnn_benchmark.layers.padding_mask import (PaddingMask, canvas_size, masked_forward,
                                                    masked_group_norm, reads_neighbours)


def test_canvas_size_rounds_up_to_the_divisibility():
    assert canvas_size((70, 100), 32) == (96, 128)
    assert canvas_size((64, 33), 32) == (64, 64)
    assert canvas_size((70, 100), 0) == (70, 100)


def test_masks_at_each_stride_are_the_ceil_of_the_canvas():
    masks = PaddingMask.for_batch([(70, 100), (128, 64)], (128, 128), 32)
    assert masks.canvas_hw.tolist() == [[96, 128], [128, 64]]
    for stride, (h, w) in ((8, (16, 16)), (64, (2, 2)), (128, (1, 1))):
        m = masks.at(stride, torch.zeros(2, 5, h, w, dtype=torch.float64))
        assert m.shape == (2, 1, h, w) and m.dtype == torch.float64
        for i, (ch, cw) in enumerate(((96, 128), (128, 64))):
            vh, vw = -(-ch // stride), -(-cw // stride)  # ceil
            assert m[i, 0, :vh, :vw].eq(1).all() and m[i, 0].sum() == vh * vw


def test_no_mask_when_every_image_fills_the_tensor():
    assert PaddingMask.for_batch([(70, 100)], (96, 128), 32) is None
    assert PaddingMask.for_batch([(70, 100), (96, 110)], (96, 128), 32) is None
    assert PaddingMask.for_batch([(70, 100), (96, 110)], (96, 160), 32) is not None


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("affine", [True, False])
def test_masked_group_norm_is_group_norm_of_the_cropped_canvas(affine, channels_last):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 8, 6, 7, generator=g) * 3 + 1
    weight = torch.randn(8, generator=g) if affine else None
    bias = torch.randn(8, generator=g) if affine else None
    masks = PaddingMask(torch.tensor([[4, 5], [6, 7]]))
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = masked_group_norm(x, masks.at(1, x), 4, weight, bias, eps=1e-5)
    assert y.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    for i, (h, w) in enumerate(((4, 5), (6, 7))):
        ref = F.group_norm(x[i:i + 1, :, :h, :w].double(), 4,
                           None if weight is None else weight.double(),
                           None if bias is None else bias.double(), eps=1e-5)
        torch.testing.assert_close(y[i:i + 1, :, :h, :w].double(), ref, rtol=1e-5, atol=1e-5)
        out = torch.ones_like(y[i, 0], dtype=torch.bool)
        out[:h, :w] = False
        assert y[i][:, out].eq(0).all()


def test_masked_forward_equals_the_cropped_image_with_zero_padding():
    """A tower (conv 3x3, GN, ReLU, conv 3x3) on a padded batch with garbage in the padding gives,
    inside each canvas, the tower's output on the cropped image (batch 1, zero padding)."""
    torch.manual_seed(0)
    tower = nn.Sequential(nn.Conv2d(4, 8, 3, padding=1), nn.GroupNorm(2, 8), nn.ReLU(),
                          nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 3, 1))
    sizes = ((5, 9), (9, 4))
    crops = [torch.randn(1, 4, h, w) for h, w in sizes]
    batch = torch.randn(2, 4, 9, 9) * 5  # garbage outside the canvases
    for i, c in enumerate(crops):
        batch[i, :, :c.shape[2], :c.shape[3]] = c[0]
    mask = PaddingMask(torch.tensor(sizes)).at(1, batch)
    with torch.no_grad():
        out = masked_forward(tower, batch, mask)
        plain = tower(batch)
        for i, (c, (h, w)) in enumerate(zip(crops, sizes)):
            torch.testing.assert_close(out[i:i + 1, :, :h, :w], tower(c), rtol=1e-5, atol=1e-5)
            assert not torch.allclose(plain[i:i + 1, :, :h, :w], tower(c), atol=1e-3)
    assert masked_forward(tower, batch, None).equal(plain)


def test_reads_neighbours():
    assert reads_neighbours(nn.Conv2d(2, 2, 3)) and reads_neighbours(nn.Conv2d(2, 2, (1, 3)))
    assert not reads_neighbours(nn.Conv2d(2, 2, 1)) and not reads_neighbours(nn.ReLU())
