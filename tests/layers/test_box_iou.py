"""box_iou against IoU by formula (float64 loops over pairs); the element-wise IoU / GIoU and
pairwise GIoU against hand-computed values."""
import pytest
import torch

from maskrcnn_benchmark.layers import box_iou, elementwise_giou, elementwise_iou, pairwise_giou
from maskrcnn_benchmark.layers._ops import has_compiled_kernel

OPS = torch.ops.maskrcnn_benchmark


def box_iou_ref(b1: torch.Tensor, b2: torch.Tensor) -> torch.Tensor:
    """IoU of every pair by the formula, in float64 Python arithmetic."""
    out = torch.zeros(len(b1), len(b2), dtype=torch.float64)
    for i, (ax1, ay1, ax2, ay2) in enumerate(b1.double().tolist()):
        for j, (bx1, by1, bx2, by2) in enumerate(b2.double().tolist()):
            inter = max(0.0, min(ax2, bx2) - max(ax1, bx1)) * max(0.0, min(ay2, by2) - max(ay1, by1))
            union = (ax2 - ax1) * (ay2 - ay1) + (bx2 - bx1) * (by2 - by1) - inter
            out[i, j] = inter / union if union > 0 else 0.0
    return out


def random_boxes(n, g, scale=1.0, dtype=torch.float32):
    xy = torch.rand(n, 2, generator=g) * 50
    wh = torch.rand(n, 2, generator=g) * 40
    return (torch.cat([xy, xy + wh], dim=1) * scale).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("scale", [1.0, 1e4 / 50, 1e-2 / 40])
@pytest.mark.parametrize("seed", range(5))
def test_box_iou_matches_formula(seed, scale, dtype):
    g = torch.Generator().manual_seed(seed)
    for n, m in [(1, 1), (7, 13), (40, 3), (1, 50)]:
        b1, b2 = random_boxes(n, g, scale, dtype), random_boxes(m, g, scale, dtype)
        iou = box_iou(b1, b2)
        assert iou.shape == (n, m) and iou.dtype == dtype
        tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(iou.double(), box_iou_ref(b1, b2), **tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_box_iou_empty(dtype):
    assert box_iou(torch.zeros(0, 4, dtype=dtype), torch.zeros(5, 4, dtype=dtype)).shape == (0, 5)
    out = box_iou(torch.zeros(3, 4, dtype=dtype), torch.zeros(0, 4, dtype=dtype))
    assert out.shape == (3, 0) and out.dtype == dtype
    assert box_iou(torch.zeros(0, 4, dtype=dtype), torch.zeros(0, 4, dtype=dtype)).shape == (0, 0)


def test_box_iou_special_cases():
    b = torch.tensor([[0.0, 0, 10, 10], [5.0, 5, 15, 15], [20.0, 20, 30, 30], [3.0, 3, 3, 3]])
    iou = box_iou(b, b)
    assert not torch.isnan(iou).any()
    assert iou[0, 0] == 1 and iou[2, 2] == 1
    assert iou[3, 3] == 0  # zero-area box: union 0 -> 0
    torch.testing.assert_close(iou[0, 1], torch.tensor(25.0 / 175.0))
    assert iou[0, 2] == 0 and iou[1, 2] == 0
    # touching boxes do not overlap
    assert box_iou(torch.tensor([[0.0, 0, 1, 1]]), torch.tensor([[1.0, 0, 2, 1]])).item() == 0
    # all-identical boxes
    same = torch.tensor([[1.0, 2, 3, 4]]).repeat(5, 1)
    assert torch.equal(box_iou(same, same), torch.ones(5, 5))


def test_box_iou_large_matrix_uses_parallel_path():
    g = torch.Generator().manual_seed(0)
    b1, b2 = random_boxes(3000, g), random_boxes(50, g)
    x1 = torch.max(b1[:, None, 0], b2[None, :, 0])
    y1 = torch.max(b1[:, None, 1], b2[None, :, 1])
    x2 = torch.min(b1[:, None, 2], b2[None, :, 2])
    y2 = torch.min(b1[:, None, 3], b2[None, :, 3])
    inter = (x2 - x1).clamp(min=0) * (y2 - y1).clamp(min=0)
    a1 = (b1[:, 2] - b1[:, 0]) * (b1[:, 3] - b1[:, 1])
    a2 = (b2[:, 2] - b2[:, 0]) * (b2[:, 3] - b2[:, 1])
    union = a1[:, None] + a2[None, :] - inter
    expected = torch.where(union > 0, inter / union, torch.zeros_like(union))
    torch.testing.assert_close(box_iou(b1, b2), expected)


def test_box_iou_non_contiguous():
    g = torch.Generator().manual_seed(1)
    b1 = random_boxes(10, g).t().contiguous().t()
    b2 = random_boxes(20, g)[::2]
    torch.testing.assert_close(box_iou(b1, b2), box_iou(b1.contiguous(), b2.contiguous()))


@pytest.mark.parametrize(
    "b1, b2, match",
    [
        (torch.zeros(3, 5), torch.zeros(2, 4), r"box_iou: boxes1 must have shape \[N, 4\], got \[3, 5\]"),
        (torch.zeros(3, 4), torch.zeros(4), r"box_iou: boxes2 must have shape \[N, 4\], got \[4\]"),
        (torch.zeros(3, 4, dtype=torch.int32), torch.zeros(2, 4), r"box_iou: boxes1 must be float32 or float64, got Int"),
        (torch.zeros(3, 4), torch.zeros(2, 4, dtype=torch.float64), r"box_iou: boxes1 and boxes2 must have the same dtype"),
    ],
)
def test_box_iou_bad_inputs(b1, b2, match):
    with pytest.raises(RuntimeError, match=match):
        box_iou(b1, b2)


def test_box_iou_device_mismatch():
    with pytest.raises(ValueError, match="box_iou: boxes2 must be on the device of boxes1"):
        box_iou(torch.zeros(3, 4), torch.zeros(2, 4, device="meta"))


@pytest.mark.parametrize("which", ["boxes1", "boxes2"])
def test_box_iou_none_is_named(which):
    args = {"boxes1": torch.zeros(3, 4), "boxes2": torch.zeros(2, 4)}
    args[which] = None
    with pytest.raises(TypeError, match=f"box_iou: {which} must be a torch.Tensor, got NoneType"):
        box_iou(**args)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_box_iou_half_on_cpu_computed_in_float32(dtype):
    """Half inputs (as torchvision accepts): the IoU of the half-rounded boxes, computed in float32,
    returned in the input dtype."""
    g = torch.Generator().manual_seed(3)
    b1, b2 = random_boxes(7, g, dtype=dtype), random_boxes(5, g, dtype=dtype)
    out = box_iou(b1, b2)
    assert out.dtype == dtype
    torch.testing.assert_close(out, box_iou_ref(b1, b2).to(dtype), rtol=0, atol=torch.finfo(dtype).eps)


def test_opcheck():
    g = torch.Generator().manual_seed(0)
    torch.library.opcheck(OPS.box_iou.default, (random_boxes(6, g), random_boxes(9, g)))
    torch.library.opcheck(OPS.box_iou.default, (random_boxes(6, g, dtype=torch.float64), random_boxes(0, g, dtype=torch.float64)))


@pytest.mark.skipif(not (torch.cuda.is_available() and has_compiled_kernel("box_iou", "CUDA")),
                    reason="needs a GPU and the compiled CUDA kernel of box_iou (MASKRCNN_BENCHMARK_CUDA_KERNELS=1)")
class TestBoxIouCudaMatchesCpu:
    @pytest.mark.parametrize("n, m", [(1, 1), (300, 70), (5000, 33), (7, 4000)])
    @pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
    def test_box_iou(self, n, m, dtype):
        g = torch.Generator().manual_seed(n + m)
        b1, b2 = random_boxes(n, g, dtype=dtype), random_boxes(m, g, dtype=dtype)
        b2[0] = torch.tensor([5.0, 5.0, 5.0, 9.0])  # zero area
        out = box_iou(b1.cuda(), b2.cuda())
        assert out.dtype == dtype
        torch.testing.assert_close(out.cpu(), box_iou(b1, b2), rtol=0, atol=0)  # same formula, same roundings

    @pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
    def test_reduced_precision(self, dtype):
        g = torch.Generator().manual_seed(3)
        b1, b2 = random_boxes(200, g).to(dtype), random_boxes(90, g).to(dtype)
        out = box_iou(b1.cuda(), b2.cuda())  # computed in float32, returned in the input dtype
        assert out.dtype == dtype
        torch.testing.assert_close(out.cpu(), box_iou(b1.float(), b2.float()).to(dtype), rtol=0, atol=0)

    def test_non_contiguous_and_empty(self):
        g = torch.Generator().manual_seed(4)
        b = random_boxes(50, g).cuda()
        torch.testing.assert_close(box_iou(b[::2], b[1::3]).cpu(), box_iou(b[::2].cpu(), b[1::3].cpu()))
        assert box_iou(b[:0], b).shape == (0, 50)


# ---- element-wise IoU / GIoU, pairwise GIoU (plain torch, differentiable) against hand values ----
B1 = torch.tensor([[0.0, 0.0, 2.0, 2.0],    # overlap with [1,1,3,3]
                   [0.0, 0.0, 1.0, 1.0],    # disjoint with [2,2,3,3]
                   [1.0, 2.0, 5.0, 7.0],    # identical
                   [0.0, 0.0, 4.0, 4.0],    # contains [1,1,2,2]
                   [1.0, 1.0, 1.0, 1.0]])   # zero-area, with itself
B2 = torch.tensor([[1.0, 1.0, 3.0, 3.0],
                   [2.0, 2.0, 3.0, 3.0],
                   [1.0, 2.0, 5.0, 7.0],
                   [1.0, 1.0, 2.0, 2.0],
                   [1.0, 1.0, 1.0, 1.0]])
IOU = torch.tensor([1 / 7, 0.0, 1.0, 1 / 16, 0.0])
GIOU = torch.tensor([1 / 7 - 2 / 9, -7 / 9, 1.0, 1 / 16, 0.0])


def test_elementwise_iou_giou_hand_values():
    iou = elementwise_iou(B1, B2)
    giou = elementwise_giou(B1, B2)
    torch.testing.assert_close(iou, IOU)
    torch.testing.assert_close(giou, GIOU)
    assert not torch.isnan(iou).any() and not torch.isnan(giou).any()
    # symmetric
    torch.testing.assert_close(elementwise_iou(B2, B1), IOU)
    torch.testing.assert_close(elementwise_giou(B2, B1), GIOU)


def test_pairwise_giou_matches_elementwise_and_shape():
    g = pairwise_giou(B1, B2[:3])
    assert g.shape == (5, 3)
    for i in range(5):
        for j in range(3):
            torch.testing.assert_close(g[i, j], elementwise_giou(B1[i:i + 1], B2[j:j + 1])[0])
    torch.testing.assert_close(torch.diagonal(pairwise_giou(B1, B2)), GIOU)
    assert pairwise_giou(torch.zeros(0, 4), B2).shape == (0, 5)


def test_giou_differentiable_no_nan_grad_for_zero_area():
    b = B1.clone().requires_grad_(True)
    elementwise_giou(b, B2).sum().backward()
    assert torch.isfinite(b.grad).all()


def test_box_iou_matches_hand_values_and_elementwise_iou():
    m = box_iou(B1, B2)
    assert m.shape == (5, 5)
    torch.testing.assert_close(torch.diagonal(m), IOU)
    torch.testing.assert_close(m, elementwise_iou(B1[:, None], B2[None]))
    # [0,0,4,4] vs [1,2,5,7]: inter 3*2 = 6, union 16 + 20 - 6 = 30
    torch.testing.assert_close(m[3, 2], torch.tensor(0.2))
