"""BoxList and ImageList against hand-computed values."""
import pytest
import torch

from maskrcnn_benchmark.structures.bounding_box import FLIP_LEFT_RIGHT, FLIP_TOP_BOTTOM, BoxList
from maskrcnn_benchmark.structures.image_list import ImageList, to_image_list


def _boxes():
    b = BoxList(torch.tensor([[1.0, 2.0, 5.0, 10.0], [0.0, 0.0, 20.0, 10.0]]), (20, 12))
    b.add_field("labels", torch.tensor([3, 1]))
    return b


def test_construction_size_is_wh_and_empty_reshapes():
    b = _boxes()
    assert b.size == (20, 12) and len(b) == 2 and b.bbox.dtype == torch.float32
    assert len(BoxList([], (4, 3))) == 0 and BoxList([], (4, 3)).bbox.shape == (0, 4)
    assert BoxList([[1, 2, 3, 4]], (5, 5)).bbox.dtype == torch.float32  # ints become float
    with pytest.raises(ValueError, match=r"\[N, 4\]"):
        BoxList(torch.zeros(2, 3), (4, 4))


def test_fields_checked_and_carried():
    b = _boxes()
    with pytest.raises(ValueError, match="labels2.*3 rows, expected 2"):
        b.add_field("labels2", torch.tensor([1, 2, 3]))
    with pytest.raises(KeyError, match="scores"):
        b.get_field("scores")
    assert b.has_field("labels") and not b.has_field("scores")
    sub = b[torch.tensor([False, True])]
    assert sub.bbox.tolist() == [[0.0, 0.0, 20.0, 10.0]] and sub.get_field("labels").tolist() == [1]
    one = b[0]
    assert one.bbox.shape == (1, 4) and one.size == b.size


def test_xywh_resize_and_flips():
    b = _boxes()
    assert b.xywh().tolist() == [[1, 2, 4, 8], [0, 0, 20, 10]]
    r = b.resize((40, 6))  # x2 horizontally, x0.5 vertically
    assert r.size == (40, 6) and r.bbox.tolist() == [[2, 1, 10, 5], [0, 0, 40, 5]]
    assert r.get_field("labels").tolist() == [3, 1]
    lr = b.transpose(FLIP_LEFT_RIGHT)
    assert lr.bbox.tolist() == [[15, 2, 19, 10], [0, 0, 20, 10]]
    tb = b.transpose(FLIP_TOP_BOTTOM)
    assert tb.bbox.tolist() == [[1, 2, 5, 10], [0, 2, 20, 12]]
    with pytest.raises(ValueError, match="unknown method"):
        b.transpose(7)


def test_image_list_pads_and_records_hw():
    a, b = torch.ones(3, 5, 7), 2 * torch.ones(3, 9, 4)
    il = to_image_list([a, b], size_divisible=4)
    assert il.tensors.shape == (2, 3, 12, 8)
    assert il.image_sizes == [(5, 7), (9, 4)]  # (h, w)
    assert torch.equal(il.tensors[0, :, :5, :7], a) and il.tensors[0, :, 5:].abs().sum() == 0
    assert torch.equal(il.tensors[1, :, :9, :4], b) and il.tensors[1, :, :, 4:].abs().sum() == 0
    assert to_image_list(il) is il
    batched = to_image_list(torch.zeros(2, 3, 6, 10))
    assert batched.image_sizes == [(6, 10), (6, 10)]
    # a batch already a multiple of size_divisible is used as it is; another one is padded
    x = torch.randn(2, 3, 8, 12)
    assert to_image_list(x, 4).tensors is x
    padded = to_image_list(x, 8)
    assert padded.tensors.shape == (2, 3, 8, 16) and torch.equal(padded.tensors[..., :12], x)
    assert padded.tensors[..., 12:].abs().sum() == 0 and padded.image_sizes == [(8, 12)] * 2
    moved = ImageList(il.tensors, il.image_sizes).to("cpu")
    assert moved.image_sizes == il.image_sizes
    with pytest.raises(ValueError, match=r"image 1 must be \[C, H, W\]"):
        to_image_list([a, torch.zeros(5, 5)])
    with pytest.raises(ValueError, match="no images"):
        to_image_list([])
