"""sigmoid_focal_loss against the paper's formula with p = sigmoid(x); gradcheck of the backward."""
import math

import pytest
import torch

from maskrcnn_benchmark.layers import SigmoidFocalLoss, sigmoid_focal_loss
from maskrcnn_benchmark.layers._ops import has_compiled_kernel

OPS = torch.ops.maskrcnn_benchmark


def focal_ref(logits, targets, gamma, alpha):
    """Lin et al. (2017): FL = -alpha_t (1 - p_t)^gamma log(p_t), p = sigmoid(x), per (row, class);
    targets 1..C select the positive column target - 1, 0 = background, -1 = ignored row."""
    x = logits.double()
    n, c = x.shape
    p = torch.sigmoid(x)
    out = torch.zeros(n, c, dtype=torch.float64)
    for i in range(n):
        t = int(targets[i])
        if t < 0:
            continue
        for j in range(c):
            if j + 1 == t:
                out[i, j] = -alpha * (1 - p[i, j]) ** gamma * torch.log(p[i, j])
            else:
                out[i, j] = -(1 - alpha) * p[i, j] ** gamma * torch.log(1 - p[i, j])
    return out


def random_case(n, c, seed, dtype=torch.float32, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(n, c, generator=g) * scale).to(dtype)
    targets = torch.randint(-1, c + 1, (n,), generator=g)
    return logits, targets


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("gamma, alpha", [(2.0, 0.25), (0.0, 0.5), (1.5, 0.75), (3.0, 0.1)])
@pytest.mark.parametrize("seed", range(4))
def test_forward_matches_formula(seed, gamma, alpha, dtype):
    for n, c in [(1, 1), (9, 4), (30, 7)]:
        logits, targets = random_case(n, c, seed, dtype)
        loss = sigmoid_focal_loss(logits, targets, gamma, alpha)
        assert loss.shape == (n, c) and loss.dtype == dtype
        tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(loss.double(), focal_ref(logits, targets, gamma, alpha), **tol)


def test_target_convention_and_int32_targets():
    logits = torch.zeros(3, 2)  # p = 0.5 everywhere
    targets = torch.tensor([2, 0, -1], dtype=torch.int32)
    loss = sigmoid_focal_loss(logits, targets, 2.0, 0.25)
    pos = 0.25 * 0.25 * math.log(2)
    neg = 0.75 * 0.25 * math.log(2)
    expected = torch.tensor([[neg, pos], [neg, neg], [0.0, 0.0]])
    torch.testing.assert_close(loss, expected)


def test_empty_inputs():
    for shape in [(0, 80), (5, 0)]:
        logits = torch.zeros(shape, requires_grad=True)
        loss = sigmoid_focal_loss(logits, torch.zeros(shape[0], dtype=torch.int64), 2.0, 0.25)
        assert loss.shape == shape
        loss.sum().backward()
        assert logits.grad.shape == shape


def test_saturated_logits_are_finite():
    logits = torch.tensor([[100.0, -100.0], [-100.0, 100.0], [1e4, -1e4]], requires_grad=True)
    targets = torch.tensor([1, 1, 2])
    loss = sigmoid_focal_loss(logits, targets, 2.0, 0.25)
    loss.sum().backward()
    assert torch.isfinite(loss).all() and torch.isfinite(logits.grad).all()
    # row 0: positive with x = 100 -> ~0; negative with x = -100 -> ~0
    assert loss[0].abs().max() < 1e-30
    # row 1: positive with x = -100 -> alpha * 100; negative with x = 100 -> (1 - alpha) * 100
    torch.testing.assert_close(loss[1], torch.tensor([0.25 * 100, 0.75 * 100]))
    torch.testing.assert_close(logits.grad[1], torch.tensor([-0.25, 0.75]))


@pytest.mark.parametrize("gamma, alpha", [(2.0, 0.25), (0.0, 0.5), (1.5, 0.75), (3.0, 0.1)])
@pytest.mark.parametrize("seed", range(3))
def test_gradcheck(seed, gamma, alpha):
    logits, targets = random_case(8, 5, seed, torch.float64, scale=2.0)
    logits.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: sigmoid_focal_loss(x, targets, gamma, alpha), (logits,))


def test_backward_matches_autograd_of_formula():
    logits, targets = random_case(20, 6, 3, torch.float64)
    x1 = logits.clone().requires_grad_(True)
    x2 = logits.clone().requires_grad_(True)
    weights = torch.rand(20, 6, dtype=torch.float64)
    (sigmoid_focal_loss(x1, targets, 2.0, 0.25) * weights).sum().backward()
    p = torch.sigmoid(x2)
    onehot = torch.zeros(20, 7, dtype=torch.float64).scatter_(1, targets.clamp(min=0)[:, None], 1)[:, 1:]
    valid = (targets >= 0).double()[:, None]
    ref = -(0.25 * onehot * (1 - p) ** 2 * torch.log(p) + 0.75 * (1 - onehot) * p**2 * torch.log(1 - p)) * valid
    (ref * weights).sum().backward()
    torch.testing.assert_close(x1.grad, x2.grad)


def focal_ref_vectorised(x, targets, gamma, alpha):
    """The formula of :func:`focal_ref` in float64 tensor ops (for sizes the loop is too slow for), with
    log p = logsigmoid(x) and log(1 - p) = logsigmoid(-x) (``log(1 - p)`` itself loses ~1e-10 relative
    in float64 for |x| > 15, more than the kernel's error)."""
    p = torch.sigmoid(x)
    c = x.shape[1]
    onehot = torch.zeros(x.shape[0], c + 1, dtype=x.dtype).scatter_(1, targets.clamp(min=0)[:, None], 1)[:, 1:]
    valid = (targets >= 0).to(x.dtype)[:, None]
    log_p, log_q = torch.nn.functional.logsigmoid(x), torch.nn.functional.logsigmoid(-x)
    return -(alpha * onehot * (1 - p) ** gamma * log_p
             + (1 - alpha) * (1 - onehot) * p ** gamma * log_q) * valid


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("gamma, alpha", [(2.0, 0.25), (1.5, 0.4)])
@pytest.mark.parametrize("n, c", [(5000, 80), (3001, 7), (700, 81)])
def test_many_row_blocks_and_gradients_of_sum_and_weighted_sum(n, c, gamma, alpha, dtype):
    """Sizes that span many of the CPU kernel's row blocks (and threads), block sizes that do not
    divide the row count; the gradient of ``sum() / norm`` (one value broadcast to [N, C], read
    without materialising it), of a weighted sum (a full grad_output) and of a row-broadcast one."""
    logits, targets = random_case(n, c, 7, dtype, scale=4.0)
    ref_x = logits.double().clone().requires_grad_(True)
    ref = focal_ref_vectorised(ref_x, targets, gamma, alpha)
    x = logits.clone().requires_grad_(True)
    loss = sigmoid_focal_loss(x, targets, gamma, alpha)
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(loss.double(), ref.detach(), **tol)
    weights = [None, torch.rand(n, c, dtype=torch.float64), torch.rand(1, c, dtype=torch.float64)]
    for w in weights:
        x.grad, ref_x.grad = None, None
        out = sigmoid_focal_loss(x, targets, gamma, alpha)
        if w is None:
            (out.sum() / 7.0).backward()
            (ref.sum() / 7.0).backward(retain_graph=True)
        else:
            (out * w.to(dtype)).sum().backward()
            (ref * w).sum().backward(retain_graph=True)
        tol = dict(rtol=1e-4, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(x.grad.double(), ref_x.grad, **tol)


def test_module_returns_sum():
    logits, targets = random_case(12, 3, 0)
    module = SigmoidFocalLoss(2.0, 0.25)
    torch.testing.assert_close(module(logits, targets), sigmoid_focal_loss(logits, targets, 2.0, 0.25).sum())
    assert "gamma=2.0" in repr(module)


@pytest.mark.parametrize(
    "logits, targets, match",
    [
        (torch.zeros(4), torch.zeros(4, dtype=torch.int64), r"sigmoid_focal_loss: logits must have shape \[N, C\], got \[4\]"),
        (torch.zeros(4, 3), torch.zeros(5, dtype=torch.int64), r"sigmoid_focal_loss: targets must have shape \[N\] with N = 4"),
        (torch.zeros(4, 3), torch.zeros(4), r"sigmoid_focal_loss: targets must be int64 or int32, got Float"),
        (torch.zeros(4, 3, dtype=torch.int64), torch.zeros(4, dtype=torch.int64), r"sigmoid_focal_loss: logits must be float32 or float64"),
    ],
)
def test_bad_inputs(logits, targets, match):
    with pytest.raises(RuntimeError, match=match):
        sigmoid_focal_loss(logits, targets, 2.0, 0.25)


def test_bad_gamma_and_device():
    with pytest.raises(RuntimeError, match="sigmoid_focal_loss: gamma must be >= 0"):
        sigmoid_focal_loss(torch.zeros(2, 2), torch.zeros(2, dtype=torch.int64), -1.0, 0.25)
    with pytest.raises(ValueError, match="sigmoid_focal_loss: targets must be on the device of logits"):
        sigmoid_focal_loss(torch.zeros(2, 2), torch.zeros(2, dtype=torch.int64, device="meta"), 2.0, 0.25)


def test_opcheck():
    logits, targets = random_case(10, 4, 0)
    torch.library.opcheck(OPS.sigmoid_focal_loss.default, (logits.requires_grad_(True), targets, 2.0, 0.25))
    logits64, targets = random_case(6, 3, 1, torch.float64)
    torch.library.opcheck(OPS.sigmoid_focal_loss.default, (logits64.requires_grad_(True), targets, 1.5, 0.5))
    grad = torch.rand(10, 4)
    torch.library.opcheck(OPS.sigmoid_focal_loss_backward.default, (grad, logits.detach(), random_case(10, 4, 0)[1], 2.0, 0.25))


@pytest.mark.skipif(
    not (torch.cuda.is_available() and has_compiled_kernel("sigmoid_focal_loss", "CUDA")
         and has_compiled_kernel("sigmoid_focal_loss_backward", "CUDA")),
    reason="needs a GPU and the compiled CUDA kernels of sigmoid_focal_loss (MASKRCNN_BENCHMARK_CUDA_KERNELS=1)")
class TestFocalLossCudaMatchesCpu:
    @pytest.mark.parametrize("gamma, alpha", [(2.0, 0.25), (0.0, 0.5), (1.5, 0.75)])
    @pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
    def test_forward_backward(self, dtype, gamma, alpha):
        logits, targets = random_case(2000, 80, 0, dtype, scale=8.0)  # saturated logits included
        targets = targets.to(torch.int32) if gamma == 0.0 else targets
        x_cpu = logits.clone().requires_grad_(True)
        x_cuda = logits.cuda().requires_grad_(True)
        loss_cpu = sigmoid_focal_loss(x_cpu, targets, gamma, alpha)
        loss_cuda = sigmoid_focal_loss(x_cuda, targets.cuda(), gamma, alpha)
        grad = torch.rand(loss_cpu.shape, dtype=dtype, generator=torch.Generator().manual_seed(1))
        loss_cpu.backward(grad)
        loss_cuda.backward(grad.cuda())
        torch.testing.assert_close(loss_cuda.detach().cpu(), loss_cpu.detach())
        torch.testing.assert_close(x_cuda.grad.cpu(), x_cpu.grad)

    @pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
    def test_reduced_precision(self, dtype):
        """Computed in float32 from the rounded logits, returned in their dtype."""
        logits, targets = random_case(500, 80, 2, torch.float32)
        x = logits.to(dtype)
        x_cuda = x.cuda().requires_grad_(True)
        x_ref = x.float().requires_grad_(True)
        loss = sigmoid_focal_loss(x_cuda, targets.cuda(), 2.0, 0.25)
        ref = sigmoid_focal_loss(x_ref, targets, 2.0, 0.25)
        assert loss.dtype == dtype
        loss.sum().backward()
        ref.sum().backward()
        torch.testing.assert_close(loss.detach().cpu(), ref.detach().to(dtype))
        torch.testing.assert_close(x_cuda.grad.cpu(), x_ref.grad.to(dtype))

    @pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
    def test_broadcast_grad_output(self, dtype):
        """A grad_output broadcast from one value (strides 0, 0: the gradient of .sum() / norm) is read
        as that value; a grad_output broadcast along one axis only is read element by element. Both
        equal the CPU kernel given the materialised gradient."""
        logits, targets = random_case(300, 80, 4, torch.float32)
        x = logits.to(dtype)
        x_ref = x.float()  # the CUDA kernel computes in float32
        targets_cuda = targets.cuda()
        scalar = torch.tensor(0.125, dtype=dtype)
        column = torch.rand(300, 1, generator=torch.Generator().manual_seed(5)).to(dtype)
        for grad in (scalar.cuda().expand(300, 80), column.cuda().expand(300, 80)):  # expanded on the GPU
            got = OPS.sigmoid_focal_loss_backward(grad, x.cuda(), targets_cuda, 2.0, 0.25)
            ref = OPS.sigmoid_focal_loss_backward(grad.cpu().float(), x_ref, targets, 2.0, 0.25)
            assert got.stride() == (80, 1)
            torch.testing.assert_close(got.cpu(), ref.to(dtype))
        x_cuda = x.cuda().requires_grad_(True)
        (sigmoid_focal_loss(x_cuda, targets_cuda, 2.0, 0.25).sum() / 8).backward()  # the broadcast path
        ref = OPS.sigmoid_focal_loss_backward(torch.full((300, 80), 0.125), x_ref, targets, 2.0, 0.25)
        torch.testing.assert_close(x_cuda.grad.cpu(), ref.to(dtype))
