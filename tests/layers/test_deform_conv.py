"""Tests of the modulated deformable convolution op and modules (maskrcnn_benchmark/layers/dcn.py).

References are written here from the DCNv2 formula
    y(p) = b + sum_k w_k * x(p0 + p_k + dp_k) * m_k,
with bilinear sampling that treats pixels outside the image as zero.
"""
import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from maskrcnn_benchmark.layers import _ops
from maskrcnn_benchmark.layers.dcn import DFConv2d, ModulatedDeformConv, deform_conv2d

try:
    _ops.load_ops()
except ImportError as e:  # pragma: no cover - only before the extension is built
    pytest.skip(f"compiled deform_conv2d op not built: {e}", allow_module_level=True)


# ----------------------------------------------------------------------------- references
def _pixel(x, c, yy, xx):
    """x[c, yy, xx] or 0 outside the image (x: [C, H, W])."""
    H, W = x.shape[1:]
    if 0 <= yy < H and 0 <= xx < W:
        return x[c, yy, xx]
    return x.new_zeros(())


def loop_reference(x, offset, mask, weight, bias, stride, padding, dilation, groups, dg):
    """Scalar loops over every output element (tiny shapes only)."""
    B, C, H, W = x.shape
    O, Cg, kh, kw = weight.shape
    Ho, Wo = offset.shape[2:]
    out = x.new_zeros(B, O, Ho, Wo)
    for b, o, ho, wo in itertools.product(range(B), range(O), range(Ho), range(Wo)):
        acc = bias[o].item() if bias is not None else 0.0
        g = o // (O // groups)
        for ci, i, j in itertools.product(range(Cg), range(kh), range(kw)):
            c = g * Cg + ci
            d = c // (C // dg)
            k = i * kw + j
            py = ho * stride - padding + i * dilation + offset[b, d * 2 * kh * kw + 2 * k, ho, wo].item()
            px = wo * stride - padding + j * dilation + offset[b, d * 2 * kh * kw + 2 * k + 1, ho, wo].item()
            y0, x0 = math.floor(py), math.floor(px)
            ly, lx = py - y0, px - x0
            val = ((1 - ly) * (1 - lx) * _pixel(x[b], c, y0, x0) + (1 - ly) * lx * _pixel(x[b], c, y0, x0 + 1)
                   + ly * (1 - lx) * _pixel(x[b], c, y0 + 1, x0) + ly * lx * _pixel(x[b], c, y0 + 1, x0 + 1))
            acc += weight[o, ci, i, j].item() * float(val) * mask[b, d * kh * kw + k, ho, wo].item()
        out[b, o, ho, wo] = acc
    return out


def gather_reference(x, offset, mask, weight, bias, stride, padding, dilation, groups, dg):
    """Differentiable plain-torch DCNv2: bilinear gather of every tap, then a grouped matmul."""
    B, C, H, W = x.shape
    O, Cg, kh, kw = weight.shape
    Ho, Wo = offset.shape[2:]
    K, L = kh * kw, Ho * Wo
    ki = (torch.arange(kh) * dilation).repeat_interleave(kw).to(x)  # [K] row-major taps
    kj = (torch.arange(kw) * dilation).repeat(kh).to(x)
    oy = (torch.arange(Ho) * stride - padding).to(x)
    ox = (torch.arange(Wo) * stride - padding).to(x)
    off = offset.view(B, dg, K, 2, Ho, Wo)
    py = ki.view(1, 1, K, 1, 1) + oy.view(1, 1, 1, Ho, 1) + off[:, :, :, 0]  # [B, dg, K, Ho, Wo]
    px = kj.view(1, 1, K, 1, 1) + ox.view(1, 1, 1, 1, Wo) + off[:, :, :, 1]
    y0, x0 = py.floor().detach(), px.floor().detach()
    ly, lx = py - y0, px - x0
    xs = x.reshape(B, dg, C // dg, H * W)
    sampled = 0
    for dy, dx, wgt in ((0, 0, (1 - ly) * (1 - lx)), (0, 1, (1 - ly) * lx), (1, 0, ly * (1 - lx)), (1, 1, ly * lx)):
        yy, xx = y0 + dy, x0 + dx
        valid = ((yy >= 0) & (yy < H) & (xx >= 0) & (xx < W)).to(x)
        idx = (yy.clamp(0, H - 1) * W + xx.clamp(0, W - 1)).long().view(B, dg, 1, K * L)
        vals = torch.gather(xs, 3, idx.expand(B, dg, C // dg, K * L))
        sampled = sampled + vals * (wgt * valid).view(B, dg, 1, K * L)
    cols = sampled.view(B, dg, C // dg, K, L) * mask.view(B, dg, 1, K, L)
    cols = cols.reshape(B, groups, Cg * K, L)
    out = torch.einsum("gok,bgkl->bgol", weight.reshape(groups, O // groups, Cg * K), cols)
    out = out.reshape(B, O, Ho, Wo)
    if bias is not None:
        out = out + bias.view(1, O, 1, 1)
    return out


def random_case(seed, B=2, C=4, O=4, H=7, W=6, k=3, stride=1, padding=1, dilation=1, groups=1, dg=1,
                bias=True, dtype=torch.float64, offset_scale=2.5):
    """Random inputs; offsets are fractional and push some samples outside the image."""
    g = torch.Generator().manual_seed(seed)
    Ho = (H + 2 * padding - dilation * (k - 1) - 1) // stride + 1
    Wo = (W + 2 * padding - dilation * (k - 1) - 1) // stride + 1
    x = torch.randn(B, C, H, W, generator=g, dtype=dtype)
    offset = (torch.rand(B, 2 * dg * k * k, Ho, Wo, generator=g, dtype=dtype) * 2 - 1) * offset_scale
    mask = torch.rand(B, dg * k * k, Ho, Wo, generator=g, dtype=dtype)
    weight = torch.randn(O, C // groups, k, k, generator=g, dtype=dtype)
    b = torch.randn(O, generator=g, dtype=dtype) if bias else None
    kwargs = dict(stride=stride, padding=padding, dilation=dilation, groups=groups, deformable_groups=dg)
    return (x, offset, mask, weight, b), kwargs


def _ref(fn, args, kw):
    x, offset, mask, weight, b = args
    return fn(x, offset, mask, weight, b, kw["stride"], kw["padding"], kw["dilation"], kw["groups"],
              kw["deformable_groups"])


# ----------------------------------------------------------------------------- forward
@pytest.mark.parametrize("stride,padding,dilation", [(1, 0, 1), (1, 1, 1), (2, 1, 1), (1, 2, 2), (2, 2, 2),
                                                     (2, 0, 2)])
@pytest.mark.parametrize("groups,dg", [(1, 1), (2, 1), (1, 2), (2, 2)])
@pytest.mark.parametrize("bias", [False, True])
def test_zero_offset_unit_mask_equals_conv2d(stride, padding, dilation, groups, dg, bias):
    (x, offset, mask, weight, b), kw = random_case(0, H=8, W=7, stride=stride, padding=padding, dilation=dilation,
                                                   groups=groups, dg=dg, bias=bias, dtype=torch.float32)
    offset.zero_()
    mask.fill_(1.0)
    out = deform_conv2d(x, offset, mask, weight, b, **kw)
    expected = F.conv2d(x, weight, b, stride=stride, padding=padding, dilation=dilation, groups=groups)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_matches_scalar_loop_reference():
    args, kw = random_case(1, B=1, C=4, O=2, H=5, W=4, groups=2, dg=2, offset_scale=3.0)
    torch.testing.assert_close(deform_conv2d(*args, **kw), _ref(loop_reference, args, kw))


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("stride,padding,dilation,groups,dg", [(1, 1, 1, 1, 1), (2, 1, 1, 2, 2), (1, 2, 2, 1, 2),
                                                               (2, 0, 1, 4, 4)])
def test_matches_gather_reference(seed, stride, padding, dilation, groups, dg):
    args, kw = random_case(seed, C=8, O=4, H=9, W=8, stride=stride, padding=padding, dilation=dilation,
                           groups=groups, dg=dg)
    torch.testing.assert_close(deform_conv2d(*args, **kw), _ref(gather_reference, args, kw))


def test_gather_reference_matches_loop_reference():
    args, kw = random_case(3, B=1, C=2, O=2, H=4, W=5, stride=2, padding=2, dilation=2, dg=2, offset_scale=3.0)
    torch.testing.assert_close(_ref(gather_reference, args, kw), _ref(loop_reference, args, kw))


def test_far_outside_and_nan_free():
    """Samples entirely outside the image read zeros; the output is then just the bias."""
    args, kw = random_case(4)
    x, offset, mask, weight, b = args
    offset.fill_(100.0)
    out = deform_conv2d(x, offset, mask, weight, b, **kw)
    torch.testing.assert_close(out, b.view(1, -1, 1, 1).expand_as(out))


def test_float32_matches_float64():
    args, kw = random_case(5, C=8, O=8, H=10, W=10)
    out64 = deform_conv2d(*args, **kw)
    out32 = deform_conv2d(*(a.float() for a in args), **kw)
    assert out32.dtype == torch.float32
    torch.testing.assert_close(out32.double(), out64, rtol=1e-4, atol=1e-4)


def test_non_contiguous_inputs_and_empty_batch():
    args, kw = random_case(6)
    x, offset, mask, weight, b = args
    expected = deform_conv2d(x, offset, mask, weight, b, **kw)
    xt = x.transpose(2, 3).contiguous().transpose(2, 3)
    out = deform_conv2d(xt, offset.clone(memory_format=torch.channels_last), mask, weight, b, **kw)
    torch.testing.assert_close(out, expected)
    empty = deform_conv2d(x[:0], offset[:0], mask[:0], weight, b, **kw)
    assert empty.shape == (0, 4, 7, 6)


# ----------------------------------------------------------------------------- backward
@pytest.fixture
def one_thread():
    """Tiny ops repeated thousands of times (gradcheck) crawl when OpenMP/BLAS threads contend."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.mark.parametrize("stride,padding,dilation,groups,dg,bias", [(1, 1, 1, 1, 1, True), (2, 1, 2, 2, 2, False),
                                                                    (1, 0, 1, 2, 1, True)])
def test_gradcheck(stride, padding, dilation, groups, dg, bias, one_thread):
    args, kw = random_case(7, B=1, C=4, O=2, H=5, W=5, stride=stride, padding=padding, dilation=dilation,
                           groups=groups, dg=dg, bias=bias)
    args = tuple(a.requires_grad_() if a is not None else None for a in args)
    assert torch.autograd.gradcheck(lambda *a: deform_conv2d(*a, **kw), args, eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("stride,padding,dilation,groups,dg", [(1, 1, 1, 1, 1), (2, 2, 2, 2, 2)])
def test_gradients_match_reference(seed, stride, padding, dilation, groups, dg):
    args, kw = random_case(seed, C=4, O=6, H=8, W=7, stride=stride, padding=padding, dilation=dilation,
                           groups=groups, dg=dg)
    leaves = [a.clone().requires_grad_() for a in args]
    ref_leaves = [a.clone().requires_grad_() for a in args]
    out = deform_conv2d(*leaves, **kw)
    ref = _ref(gather_reference, ref_leaves, kw)
    grad = torch.randn_like(out)
    out.backward(grad)
    ref.backward(grad)
    for name, a, r in zip(("input", "offset", "mask", "weight", "bias"), leaves, ref_leaves):
        torch.testing.assert_close(a.grad, r.grad, msg=lambda m: f"grad of {name}: {m}")


def test_multithreaded_path_matches_reference():
    """Large enough for the kernels' parallel_for to split the work (the other tests run serially)."""
    n = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        args, kw = random_case(13, B=2, C=16, O=8, H=36, W=33, padding=1, groups=2, dg=2)
        leaves = [a.clone().requires_grad_() for a in args]
        ref_leaves = [a.clone().requires_grad_() for a in args]
        out = deform_conv2d(*leaves, **kw)
        ref = _ref(gather_reference, ref_leaves, kw)
        torch.testing.assert_close(out, ref)
        grad = torch.randn_like(out)
        out.backward(grad)
        ref.backward(grad)
        for a, r in zip(leaves, ref_leaves):
            torch.testing.assert_close(a.grad, r.grad)
    finally:
        torch.set_num_threads(n)


def test_bias_none_has_no_grad_and_opcheck(one_thread):
    args, kw = random_case(8, B=1, C=4, O=2, H=5, W=5, bias=False)
    x, offset, mask, weight, _ = (a.requires_grad_() if a is not None else None for a in args)
    deform_conv2d(x, offset, mask, weight, None, **kw).sum().backward()
    assert all(t.grad is not None for t in (x, offset, mask, weight))
    for bias in (None, torch.randn(2, dtype=torch.float64, requires_grad=True)):
        op_args = (x, weight, offset, mask, bias, 1, 1, 1, 1, 1, 1, 1, 1)
        torch.library.opcheck(torch.ops.maskrcnn_benchmark.deform_conv2d.default, op_args)


# ----------------------------------------------------------------------------- modules
def test_dfconv2d_init_is_half_conv_and_names():
    torch.manual_seed(0)
    m = DFConv2d(4, 6, kernel_size=3, stride=2, dilation=2, deformable_groups=2, bias=False)
    names = dict(m.named_parameters())
    assert set(names) == {"offset.weight", "offset.bias", "conv.weight"}
    assert names["offset.weight"].shape == (2 * 3 * 9, 4, 3, 3)
    assert names["conv.weight"].shape == (6, 4, 3, 3)
    x = torch.randn(2, 4, 11, 9)
    out = m(x)
    expected = 0.5 * F.conv2d(x, m.conv.weight, stride=2, padding=2, dilation=2)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    out.sum().backward()  # mask/offset conv receive gradient through the op
    assert m.offset.weight.grad.abs().sum() > 0


def test_dfconv2d_split_matches_functional():
    torch.manual_seed(1)
    m = DFConv2d(4, 4, kernel_size=3, groups=2, deformable_groups=2, bias=True).double()
    torch.nn.init.normal_(m.offset.weight, std=0.3)
    torch.nn.init.normal_(m.conv.bias)
    assert set(dict(m.named_parameters())) == {"offset.weight", "offset.bias", "conv.weight", "conv.bias"}
    x = torch.randn(1, 4, 6, 6, dtype=torch.float64)
    om = m.offset(x)
    offset, mask = om[:, :36], om[:, 36:].sigmoid()
    expected = gather_reference(x, offset, mask, m.conv.weight, m.conv.bias, 1, 1, 1, 2, 2)
    torch.testing.assert_close(m(x), expected)


def test_modulated_deform_conv_module():
    torch.manual_seed(2)
    m = ModulatedDeformConv(4, 6, 3, stride=1, padding=1, groups=2, deformable_groups=2)
    assert set(dict(m.named_parameters())) == {"weight", "bias"}
    assert m.weight.shape == (6, 2, 3, 3) and torch.all(m.bias == 0)
    args, _ = random_case(9, C=4, dg=2, dtype=torch.float32)
    x, offset, mask = args[:3]
    expected = gather_reference(x, offset, mask, m.weight, m.bias, 1, 1, 1, 2, 2)
    torch.testing.assert_close(m(x, offset, mask), expected, rtol=1e-5, atol=1e-5)


def test_dcnv1_not_implemented():
    with pytest.raises(NotImplementedError, match="DCNv1"):
        DFConv2d(4, 4, with_modulated_dcn=False)


# ----------------------------------------------------------------------------- errors
def test_bad_shapes_raise_clear_errors():
    (x, offset, mask, weight, b), kw = random_case(10)
    with pytest.raises(ValueError, match=r"offset must have 2\*deformable_groups\*kh\*kw=18 channels, got 16"):
        deform_conv2d(x, offset[:, :16], mask, weight, b, **kw)
    with pytest.raises(ValueError, match=r"mask must have deformable_groups\*kh\*kw=9 channels, got 8"):
        deform_conv2d(x, offset, mask[:, :8], weight, b, **kw)
    with pytest.raises(ValueError, match=r"offset must have shape \[2, 18, 7, 6\]"):
        deform_conv2d(x, offset[:, :, :5], mask, weight, b, **kw)
    with pytest.raises(ValueError, match=r"mask must have shape"):
        deform_conv2d(x, offset, mask[:1], weight, b, **kw)
    with pytest.raises(ValueError, match="input must be a 4-D tensor, got 3-D"):
        deform_conv2d(x[0], offset, mask, weight, b, **kw)
    with pytest.raises(ValueError, match=r"weight must have input channels/groups=4"):
        deform_conv2d(x, offset, mask, weight[:, :3], b, **kw)
    with pytest.raises(ValueError, match=r"divisible by deformable_groups \(3\)"):
        deform_conv2d(x, offset, mask, weight, b, **{**kw, "deformable_groups": 3})
    with pytest.raises(ValueError, match=r"bias must have shape \[4\]"):
        deform_conv2d(x, offset, mask, weight, b[:3], **kw)
    with pytest.raises(TypeError, match="share one dtype"):
        deform_conv2d(x, offset.float(), mask, weight, b, **kw)
    with pytest.raises(ValueError, match="too small"):
        deform_conv2d(x[:, :, :1, :1], offset, mask, weight, b, **{**kw, "padding": 0})


def test_kernel_checks_without_python_wrapper():
    (x, offset, mask, weight, b), _ = random_case(11)
    with pytest.raises(RuntimeError, match=r"offset must have 2\*deformable_groups\*kh\*kw=18 channels, got 16"):
        torch.ops.maskrcnn_benchmark.deform_conv2d(x, weight, offset[:, :16], mask, b, 1, 1, 1, 1, 1, 1, 1, 1)


# ----------------------------------------------------------------------------- CUDA
@pytest.mark.skipif(
    not (torch.cuda.is_available() and _ops.has_compiled_kernel("deform_conv2d", "CUDA")
         and _ops.has_compiled_kernel("_deform_conv2d_backward", "CUDA")),
    reason="needs a GPU and the compiled CUDA kernels of deform_conv2d (MASKRCNN_BENCHMARK_CUDA_KERNELS=1)")
class TestCudaMatchesCpu:
    CASES = [
        dict(C=8, O=8, H=12, W=11, stride=2, groups=2, dg=2),
        dict(C=16, O=8, H=9, W=10, stride=1, padding=2, dilation=2, dg=4),
        dict(B=3, C=6, O=4, H=5, W=5, k=1, padding=0, bias=False, offset_scale=4.0),
    ]

    @pytest.mark.parametrize("case", range(len(CASES)))
    @pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
    def test_forward_backward(self, dtype, case):
        args, kw = random_case(12 + case, dtype=dtype, **self.CASES[case])
        cpu = [a.clone().requires_grad_() if a is not None else None for a in args]
        gpu = [a.cuda().requires_grad_() if a is not None else None for a in args]
        out_cpu, out_gpu = deform_conv2d(*cpu, **kw), deform_conv2d(*gpu, **kw)
        tol = dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(out_gpu.detach().cpu(), out_cpu.detach(), **tol)
        grad = torch.randn_like(out_cpu)
        out_cpu.backward(grad)
        out_gpu.backward(grad.cuda())
        gtol = dict(rtol=1e-3, atol=1e-3) if dtype == torch.float32 else dict(rtol=1e-9, atol=1e-9)
        for name, a, g in zip(("input", "offset", "mask", "weight", "bias"), cpu, gpu):
            if a is not None:
                torch.testing.assert_close(g.grad.cpu(), a.grad, **gtol, msg=lambda m: f"grad of {name}: {m}")

    @pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
    def test_reduced_precision(self, dtype):
        """Inputs rounded to float16/bfloat16; the reference is the CPU kernel in float64 on the same values."""
        args, kw = random_case(20, C=8, O=8, H=10, W=9, groups=2, dg=2, dtype=torch.float32)
        low = [a.to(dtype) for a in args]
        ref_in = [a.double().requires_grad_() for a in low]
        gpu = [a.cuda().requires_grad_() for a in low]
        ref, out = deform_conv2d(*ref_in, **kw), deform_conv2d(*gpu, **kw)
        assert out.dtype == dtype
        scale = ref.abs().max().item()
        tol = dict(rtol=2e-2, atol=2e-2 * scale) if dtype == torch.bfloat16 else dict(rtol=5e-3, atol=5e-3 * scale)
        torch.testing.assert_close(out.detach().cpu().double(), ref.detach(), **tol)
        grad = torch.randn(ref.shape, generator=torch.Generator().manual_seed(3)).to(dtype)
        ref.backward(grad.double())
        out.backward(grad.cuda())
        for name, a, g in zip(("input", "offset", "mask", "weight", "bias"), ref_in, gpu):
            gscale = a.grad.abs().max().item()
            gtol = dict(rtol=5e-2, atol=5e-2 * gscale) if dtype == torch.bfloat16 else dict(rtol=1e-2, atol=1e-2 * gscale)
            assert g.grad.dtype == dtype
            torch.testing.assert_close(g.grad.cpu().double(), a.grad, **gtol, msg=lambda m: f"grad of {name}: {m}")

    def test_backward_alerts_non_deterministic(self):
        """The input gradient is summed with atomicAdd (order varies between runs): the backward alerts,
        so torch.use_deterministic_algorithms(True) raises instead of silently varying."""
        args, kw = random_case(30, C=4, O=4, H=6, W=6, dtype=torch.float32)
        gpu = [a.cuda().requires_grad_() for a in args]
        out = deform_conv2d(*gpu, **kw)
        previous = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
        try:
            torch.use_deterministic_algorithms(True)
            with pytest.raises(RuntimeError, match="_deform_conv2d_backward.*does not have a deterministic"):
                out.backward(torch.ones_like(out), retain_graph=True)
            torch.use_deterministic_algorithms(True, warn_only=True)
            with pytest.warns(UserWarning, match="_deform_conv2d_backward"):
                out.backward(torch.ones_like(out))
        finally:
            torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])

    @pytest.mark.parametrize("dtype, limit", [(torch.float16, 1000), (torch.bfloat16, 120)])
    def test_reduced_precision_weight_grad_is_summed_in_float32(self, dtype, limit):
        """Two images whose weight-gradient products nearly cancel: grad_out of image 1 is -grad_out of
        image 0 plus a small integer d (integers are exact in float16 / bfloat16 up to 2048 / 256), so
        the sum is about 1/limit of each image's product. Rounding each image's product to half would
        leave an error of about limit * 2^-11 (float16) / 2^-8 (bfloat16) of the result; summed in
        float32 only the final rounding remains. Reference: the CPU kernel in float64 on the same values."""
        (x, offset, mask, weight, _), kw = random_case(31, B=1, C=4, O=4, H=8, W=8, bias=False, dtype=torch.float32)
        g = torch.Generator().manual_seed(32)
        g0 = torch.randint(-limit, limit + 1, (1, 4, 8, 8), generator=g).float()
        d = torch.randint(-1, 2, (1, 4, 8, 8), generator=g).float()
        two = [torch.cat([t, t]).to(dtype) for t in (x, offset, mask)]  # the same image twice
        grad = torch.cat([g0, -g0 + d]).to(dtype)
        assert torch.equal(grad[1].float() + grad[0].float(), d[0])  # exact in dtype
        ref_in = [t.double().requires_grad_() for t in two] + [weight.to(dtype).double().requires_grad_()]
        gpu = [t.cuda().requires_grad_() for t in two] + [weight.to(dtype).cuda().requires_grad_()]
        ref = deform_conv2d(ref_in[0], ref_in[1], ref_in[2], ref_in[3], None, **kw)
        out = deform_conv2d(gpu[0], gpu[1], gpu[2], gpu[3], None, **kw)
        ref.backward(grad.double())
        out.backward(grad.cuda())
        got, expected = gpu[3].grad.cpu().double(), ref_in[3].grad
        scale = expected.abs().max().item()
        eps = 2.0 ** -11 if dtype == torch.float16 else 2.0 ** -8
        torch.testing.assert_close(got, expected, rtol=2 * eps, atol=2 * eps * scale)
