"""The Autocast kernels of the compiled ops (csrc/autocast/autocast_kernels.cpp): under
torch.autocast the IoUs, NMS, focal loss and deformable convolution run in float32.

The CPU part runs everywhere (bfloat16 autocast on the CPU: the CPU kernels accept float32/float64
only, so without the AutocastCPU kernels these calls would fail). The references are the same ops
called outside autocast on the reduced-precision inputs converted to float32 by hand.
"""
import pytest
import torch

from maskrcnn_benchmark.layers import _ops, batched_nms, box_iou, deform_conv2d, nms, sigmoid_focal_loss

try:
    _ops.load_ops()
except ImportError as e:  # pragma: no cover - only before the extension is built
    pytest.skip(f"compiled ops not built: {e}", allow_module_level=True)


def random_boxes(n, seed, dtype):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * 60
    wh = torch.rand(n, 2, generator=g) * 30 + 1
    return torch.cat([xy, xy + wh], dim=1).to(dtype)


def dcn_inputs(seed, dtype, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 4, 7, 6, generator=g)
    offset = (torch.rand(2, 18, 7, 6, generator=g) * 2 - 1) * 2.5
    mask = torch.rand(2, 9, 7, 6, generator=g)
    weight = torch.randn(4, 4, 3, 3, generator=g)
    bias = torch.randn(4, generator=g)
    # activations in the autocast dtype (as after an autocast conv), parameters in float32
    return [t.to(dtype).to(device) for t in (x, offset, mask)] + [weight.to(device), bias.to(device)]


def check_autocast(device, dtype):
    b1, b2 = random_boxes(120, 0, dtype).to(device), random_boxes(50, 1, dtype).to(device)
    scores = torch.rand(120, generator=torch.Generator().manual_seed(2)).to(dtype).to(device)
    idxs = torch.randint(4, (120,), generator=torch.Generator().manual_seed(3)).to(device)
    logits = (torch.randn(64, 9, generator=torch.Generator().manual_seed(4)) * 3).to(dtype).to(device)
    targets = torch.randint(-1, 10, (64,), generator=torch.Generator().manual_seed(5)).to(device)
    dcn = dcn_inputs(6, dtype, device)
    with torch.autocast(device_type=device, dtype=dtype):
        iou = box_iou(b1, b2)
        keep = nms(b1, scores, 0.5)
        keep_b = batched_nms(b1, scores, idxs, 0.5)
        x = logits.clone().requires_grad_(True)
        loss = sigmoid_focal_loss(x, targets, 2.0, 0.25)
        dcn_leaves = [t.clone().requires_grad_(True) for t in dcn]
        out = deform_conv2d(*dcn_leaves, padding=1)
        loss.sum().backward()
        out.float().square().sum().backward()

    assert iou.dtype == torch.float32 and loss.dtype == torch.float32
    torch.testing.assert_close(iou, box_iou(b1.float(), b2.float()), rtol=0, atol=0)
    assert torch.equal(keep, nms(b1.float(), scores.float(), 0.5))
    assert torch.equal(keep_b, batched_nms(b1.float(), scores.float(), idxs, 0.5))

    x_ref = logits.float().requires_grad_(True)
    loss_ref = sigmoid_focal_loss(x_ref, targets, 2.0, 0.25)
    loss_ref.sum().backward()
    torch.testing.assert_close(loss.detach(), loss_ref.detach(), rtol=0, atol=0)
    assert x.grad.dtype == dtype  # the gradient reaches the reduced-precision logits in their dtype
    torch.testing.assert_close(x.grad, x_ref.grad.to(dtype), rtol=0, atol=0)

    # deform_conv2d: float32 compute, output in the dtype of its input (as a conv under autocast)
    ref_leaves = [t.float().requires_grad_(True) for t in dcn]
    ref = deform_conv2d(*ref_leaves, padding=1)
    assert out.dtype == dtype
    torch.testing.assert_close(out.detach(), ref.detach().to(dtype), rtol=0, atol=0)
    ref.to(dtype).float().square().sum().backward()
    # exact on the CPU; on CUDA the input gradient is summed with atomics (order varies): dtype tolerance
    tol = dict(rtol=0, atol=0) if device == "cpu" else {}
    for got, exp, name in zip(dcn_leaves, ref_leaves, ("input", "offset", "mask", "weight", "bias")):
        assert got.grad.dtype == got.dtype, name
        torch.testing.assert_close(got.grad, exp.grad.to(got.dtype), **tol, msg=lambda m: f"{name}: {m}")


def test_cpu_bfloat16_autocast_runs_the_ops_in_float32():
    check_autocast("cpu", torch.bfloat16)


def test_without_autocast_reduced_precision_on_cpu():
    """box_iou (as torchvision) accepts half boxes on the CPU: computed in float32, returned in the
    input dtype; the focal loss and the deformable conv still refuse them without autocast."""
    b = random_boxes(5, 0, torch.bfloat16)
    iou = box_iou(b, b)
    assert iou.dtype == torch.bfloat16
    assert torch.equal(iou, box_iou(b.float(), b.float()).to(torch.bfloat16))
    with pytest.raises(RuntimeError, match="sigmoid_focal_loss: logits must be float32 or float64"):
        sigmoid_focal_loss(torch.zeros(3, 2, dtype=torch.bfloat16), torch.zeros(3, dtype=torch.int64), 2.0, 0.25)
    with pytest.raises(TypeError, match="deform_conv2d: input, offset, mask, weight and bias must share one dtype"):
        deform_conv2d(*dcn_inputs(0, torch.bfloat16), padding=1)


def test_float64_is_left_alone():
    b = random_boxes(30, 3, torch.float64)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        iou = box_iou(b, b)
    assert iou.dtype == torch.float64
    torch.testing.assert_close(iou, box_iou(b, b), rtol=0, atol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cuda_autocast_runs_the_ops_in_float32(dtype):  # pragma: no cover - no GPU in this project's CI
    check_autocast("cuda", dtype)
