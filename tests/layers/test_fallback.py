"""Tests of the portable PyTorch fallback kernels (maskrcnn_benchmark/layers/_fallback.py) and of their
registration for devices without a compiled kernel (maskrcnn_benchmark/layers/_ops.py).

The fallbacks are plain functions of tensors, so they are run here on CPU tensors and compared with
the compiled CPU kernels on the same inputs.
"""
import pytest
import torch

from maskrcnn_benchmark.layers import _fallback as fb
from maskrcnn_benchmark.layers import _ops

try:
    ops = _ops.load_ops()
except ImportError as e:  # pragma: no cover - only before the extension is built
    pytest.skip(f"compiled ops not built: {e}", allow_module_level=True)

from maskrcnn_benchmark.layers import dcn  # noqa: E402,F401  (the deform_conv2d Python wrapper)


def random_boxes(n, seed, scale=100.0, dtype=torch.float32, gen=None):
    g = gen or torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g, dtype=dtype) * scale
    wh = torch.rand(n, 2, generator=g, dtype=dtype) * scale * 0.3
    return torch.cat([xy, xy + wh], dim=1)


# ----------------------------------------------------------------------------------- box_iou
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_box_iou_matches_compiled(seed, dtype):
    b1, b2 = random_boxes(37, seed, dtype=dtype), random_boxes(23, seed + 10, dtype=dtype)
    b1[0] = b1[1]  # identical boxes
    b2[3] = torch.tensor([5.0, 5.0, 5.0, 9.0], dtype=dtype)  # zero area
    b1[4] = torch.tensor([5.0, 5.0, 5.0, 9.0], dtype=dtype)  # zero-area pair: union 0 -> IoU 0
    out = fb.box_iou(b1, b2)
    torch.testing.assert_close(out, ops.box_iou(b1, b2), rtol=0, atol=0)
    assert out[4, 3] == 0 and not out.isnan().any()


def test_box_iou_empty():
    e, b = torch.zeros(0, 4), random_boxes(3, 0)
    assert fb.box_iou(e, b).shape == (0, 3) and fb.box_iou(b, e).shape == (3, 0)
    assert fb.box_iou(e, e).shape == (0, 0)


# ----------------------------------------------------------------------------------- nms
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("thr", [0.0, 0.3, 0.5, 0.7, 1.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_nms_matches_compiled(seed, thr, dtype):
    g = torch.Generator().manual_seed(seed)
    boxes = random_boxes(200, seed, dtype=dtype, gen=g)
    scores = torch.rand(200, generator=g, dtype=dtype)  # distinct scores: exact order
    expected = ops.nms(boxes, scores, thr)
    out = fb.nms(boxes, scores, thr)
    assert out.dtype == torch.int64
    assert torch.equal(out, expected)


def test_nms_block_path(monkeypatch):
    """Several row blocks of the suppression matrix give the same result as one."""
    monkeypatch.setattr(fb, "_NMS_BLOCK_ELEMS", 7 * 150)
    boxes, scores = random_boxes(150, 5), torch.rand(150, generator=torch.Generator().manual_seed(5))
    assert torch.equal(fb.nms(boxes, scores, 0.4), ops.nms(boxes, scores, 0.4))
    idxs = torch.randint(0, 4, (150,), generator=torch.Generator().manual_seed(6))
    assert torch.equal(fb.batched_nms(boxes, scores, idxs, 0.4), ops.batched_nms(boxes, scores, idxs, 0.4))


def test_nms_ties_and_identical_boxes():
    g = torch.Generator().manual_seed(7)
    base = random_boxes(30, 7, gen=g)
    boxes = torch.cat([base, base, base[:10]])  # identical copies
    scores = torch.randint(0, 4, (70,), generator=g).float()  # many ties
    for thr in (0.0, 0.5, 0.99):
        out, expected = fb.nms(boxes, scores, thr), ops.nms(boxes, scores, thr)
        assert set(out.tolist()) == set(expected.tolist())
        assert torch.equal(out, expected)  # stable sort on both sides: even the order matches
    # identical boxes with equal scores: only the first (input order) survives
    same = torch.tensor([[0.0, 0.0, 10.0, 10.0]] * 4)
    assert fb.nms(same, torch.ones(4), 0.5).tolist() == [0]


def test_nms_empty_and_single():
    e = torch.zeros(0, 4)
    out = fb.nms(e, torch.zeros(0), 0.5)
    assert out.shape == (0,) and out.dtype == torch.int64
    out = fb.batched_nms(e, torch.zeros(0), torch.zeros(0, dtype=torch.int64), 0.5)
    assert out.shape == (0,) and out.dtype == torch.int64
    assert fb.nms(torch.tensor([[0.0, 0.0, 1.0, 1.0]]), torch.tensor([0.3]), 0.5).tolist() == [0]


def test_nms_degenerate_boxes_never_suppress():
    boxes = torch.tensor([[0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 5.0]])
    scores = torch.tensor([0.9, 0.8, 0.7])
    assert fb.nms(boxes, scores, 0.0).tolist() == ops.nms(boxes, scores, 0.0).tolist() == [0, 1, 2]


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("thr", [0.3, 0.6])
def test_batched_nms_matches_compiled(seed, thr):
    g = torch.Generator().manual_seed(seed)
    boxes = random_boxes(300, seed, gen=g)
    scores = torch.rand(300, generator=g)
    idxs = torch.randint(0, 6, (300,), generator=g)
    assert torch.equal(fb.batched_nms(boxes, scores, idxs, thr), ops.batched_nms(boxes, scores, idxs, thr))


def test_batched_nms_huge_coordinates_across_classes():
    """Identical huge boxes of different classes never suppress each other (no offset trick)."""
    big = torch.tensor([[1e7, 1e7, 1e7 + 50, 1e7 + 50]], dtype=torch.float32)
    boxes = torch.cat([big, big, big, big + 1.0, torch.tensor([[0.0, 0.0, 3e38, 3e38]])])
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.5])
    idxs = torch.tensor([0, 1, 0, 2, 1])
    out = fb.batched_nms(boxes, scores, idxs, 0.5)
    assert torch.equal(out, ops.batched_nms(boxes, scores, idxs, 0.5))
    assert out.tolist() == [0, 1, 3, 4]
    # large random coordinates, many classes
    g = torch.Generator().manual_seed(3)
    boxes = random_boxes(150, 3, scale=1e6, gen=g, dtype=torch.float64)
    scores, idxs = torch.rand(150, generator=g, dtype=torch.float64), torch.randint(0, 50, (150,), generator=g)
    boxes[75:] = boxes[:75]  # same boxes again, other classes
    assert torch.equal(fb.batched_nms(boxes, scores, idxs, 0.5), ops.batched_nms(boxes, scores, idxs, 0.5))


# ----------------------------------------------------------------------------------- focal loss
@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("gamma,alpha", [(2.0, 0.25), (0.0, 0.5), (1.5, 0.75)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_focal_forward_backward_match_compiled(seed, gamma, alpha, dtype):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(40, 7, generator=g, dtype=dtype) * 4
    logits[0, :3] = torch.tensor([80.0, -80.0, 0.0], dtype=dtype)  # saturated and zero logits
    targets = torch.randint(-1, 8, (40,), generator=g)
    targets[:3] = torch.tensor([-1, 0, 7])
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-14)
    out = fb.sigmoid_focal_loss(logits, targets, gamma, alpha)
    torch.testing.assert_close(out, ops.sigmoid_focal_loss(logits, targets, gamma, alpha), **tol)
    assert torch.isfinite(out).all() and (out[targets < 0] == 0).all()
    go = torch.randn(40, 7, generator=g, dtype=dtype)
    grad = fb.sigmoid_focal_loss_backward(go, logits, targets, gamma, alpha)
    torch.testing.assert_close(grad, ops.sigmoid_focal_loss_backward(go, logits, targets, gamma, alpha), **tol)
    # the compiled op's autograd (registered formula) agrees with the fallback backward
    x = logits.clone().requires_grad_()
    (ops.sigmoid_focal_loss(x, targets, gamma, alpha) * go).sum().backward()
    torch.testing.assert_close(grad, x.grad, **tol)


def test_focal_int32_targets_and_empty():
    logits = torch.randn(5, 3, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([0, 1, 2, 3, -1], dtype=torch.int32)
    torch.testing.assert_close(fb.sigmoid_focal_loss(logits, t, 2.0, 0.25), ops.sigmoid_focal_loss(logits, t, 2.0, 0.25))
    e = torch.zeros(0, 3)
    assert fb.sigmoid_focal_loss(e, torch.zeros(0, dtype=torch.int64), 2.0, 0.25).shape == (0, 3)
    assert fb.sigmoid_focal_loss_backward(e, e, torch.zeros(0, dtype=torch.int64), 2.0, 0.25).shape == (0, 3)


def test_focal_gradient_is_derivative_of_fallback_forward():
    """Independent check: finite differences of the fallback forward equal the fallback backward."""
    g = torch.Generator().manual_seed(4)
    logits = torch.randn(6, 4, generator=g, dtype=torch.float64)
    targets = torch.tensor([0, 1, 4, -1, 2, 3])
    go = torch.ones(6, 4, dtype=torch.float64)
    grad = fb.sigmoid_focal_loss_backward(go, logits, targets, 2.0, 0.25)
    h = 1e-6
    num = (fb.sigmoid_focal_loss(logits + h, targets, 2.0, 0.25) - fb.sigmoid_focal_loss(logits - h, targets, 2.0, 0.25)) / (2 * h)
    torch.testing.assert_close(grad, num, rtol=1e-6, atol=1e-8)


# ----------------------------------------------------------------------------------- deform_conv2d
def dcn_case(seed, B=2, C=4, O=4, H=7, W=6, k=3, stride=1, padding=1, dilation=1, groups=1, dg=1, bias=True,
             dtype=torch.float64, offset_scale=2.5):
    g = torch.Generator().manual_seed(seed)
    Ho = (H + 2 * padding - dilation * (k - 1) - 1) // stride + 1
    Wo = (W + 2 * padding - dilation * (k - 1) - 1) // stride + 1
    x = torch.randn(B, C, H, W, generator=g, dtype=dtype)
    offset = (torch.rand(B, 2 * dg * k * k, Ho, Wo, generator=g, dtype=dtype) * 2 - 1) * offset_scale
    mask = torch.rand(B, dg * k * k, Ho, Wo, generator=g, dtype=dtype)
    weight = torch.randn(O, C // groups, k, k, generator=g, dtype=dtype)
    b = torch.randn(O, generator=g, dtype=dtype) if bias else None
    params = (stride, stride, padding, padding, dilation, dilation, groups, dg)
    return x, weight, offset, mask, b, params


DCN_CASES = [dict(), dict(stride=2, groups=2, dg=2, C=8), dict(padding=2, dilation=2, dg=2, bias=False),
             dict(stride=2, padding=0, groups=4, dg=4, C=8, O=8, H=9, W=8, offset_scale=6.0)]


@pytest.mark.parametrize("case", range(len(DCN_CASES)))
@pytest.mark.parametrize("seed", [0, 1])
def test_deform_conv2d_forward_and_gradients_match_compiled(case, seed):
    x, weight, offset, mask, b, params = dcn_case(seed, **DCN_CASES[case])
    out = fb.deform_conv2d(x, weight, offset, mask, b, *params)
    torch.testing.assert_close(out, ops.deform_conv2d(x, weight, offset, mask, b, *params))
    go = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed + 100), dtype=out.dtype)
    grads = fb.deform_conv2d_backward(go, x, weight, offset, mask, *params)
    expected = ops._deform_conv2d_backward(go, x, weight, offset, mask, *params)
    for name, got, exp in zip(("input", "weight", "offset", "mask", "bias"), grads, expected):
        torch.testing.assert_close(got, exp, msg=lambda m: f"grad_{name}: {m}")


def test_deform_conv2d_float32_offsets_on_integers_far_outside_and_empty():
    x, weight, offset, mask, b, params = dcn_case(9, dtype=torch.float32)
    offset[0, :6] = torch.round(offset[0, :6])  # integer sample positions (floor edge cases)
    offset[1, 0] = 1e6  # far outside the image
    offset[1, 1] = float("nan")  # NaN counts as outside
    out = fb.deform_conv2d(x, weight, offset, mask, b, *params)
    torch.testing.assert_close(out, ops.deform_conv2d(x, weight, offset, mask, b, *params), rtol=1e-5, atol=1e-5)
    go = torch.ones_like(out)
    for got, exp in zip(fb.deform_conv2d_backward(go, x, weight, offset, mask, *params),
                        ops._deform_conv2d_backward(go, x, weight, offset, mask, *params)):
        torch.testing.assert_close(got, exp, rtol=1e-5, atol=1e-5)
    e = [t[:0] for t in (x, offset, mask)]
    assert fb.deform_conv2d(e[0], weight, e[1], e[2], b, *params).shape == (0, 4, 7, 6)
    grads = fb.deform_conv2d_backward(torch.zeros(0, 4, 7, 6), e[0], weight, e[1], e[2], *params)
    assert [t.shape for t in grads] == [e[0].shape, weight.shape, e[1].shape, e[2].shape, (4,)]


# ----------------------------------------------------------------------------------- registration
ALL_OPS = ["nms", "batched_nms", "box_iou", "sigmoid_focal_loss", "sigmoid_focal_loss_backward",
           "deform_conv2d", "_deform_conv2d_backward"]


def test_every_op_has_a_fallback_and_cuda_kernel_is_registered():
    assert sorted(fb.FALLBACK_KERNELS) == sorted(ALL_OPS) == sorted(_ops.OP_NAMES)
    registered = _ops.registered_fallbacks()
    for name in ALL_OPS:
        assert hasattr(torch.ops.maskrcnn_benchmark, name)
        assert torch._C._dispatch_has_kernel_for_dispatch_key("maskrcnn_benchmark::" + name, "CUDA"), name
        # the CUDA kernel is either compiled (MASKRCNN_BENCHMARK_CUDA_KERNELS=1) or the fallback, never both
        assert _ops.has_compiled_kernel(name, "CUDA") != ((name, "cuda") in registered), name
        assert _ops.has_compiled_kernel(name, "CPU"), name
        assert _ops.has_compiled_kernel(name, "AutocastCPU") and _ops.has_compiled_kernel(name, "Autocast"), name
        # the CPU kernel stays the compiled one
        assert (name, "cpu") not in registered
        assert ("cuda" not in [d for (n, d) in registered if n == name]) or registered[(name, "cuda")] is \
            fb.FALLBACK_KERNELS[name]


def test_kernels_through_the_dispatcher_with_autograd():
    """The fallbacks registered as kernels of ops with the same schemas (in a test namespace, on CPU),
    with autograd formulas that call the backward ops as _ops/dcn do: checks Optional bias, tuple
    returns and gradients through the dispatcher, which on a GPU go to the fallbacks."""
    ns = "mrcnn_fallback_test"
    lib = torch.library.Library(ns, "FRAGMENT")
    schemas = {
        "sigmoid_focal_loss": "(Tensor logits, Tensor targets, float gamma, float alpha) -> Tensor",
        "sigmoid_focal_loss_backward": "(Tensor grad_output, Tensor logits, Tensor targets, float gamma, "
                                       "float alpha) -> Tensor",
        "deform_conv2d": "(Tensor input, Tensor weight, Tensor offset, Tensor mask, Tensor? bias, int stride_h, "
                         "int stride_w, int pad_h, int pad_w, int dil_h, int dil_w, int groups, "
                         "int deformable_groups) -> Tensor",
        "_deform_conv2d_backward": "(Tensor grad_out, Tensor input, Tensor weight, Tensor offset, Tensor mask, "
                                   "int stride_h, int stride_w, int pad_h, int pad_w, int dil_h, int dil_w, "
                                   "int groups, int deformable_groups) -> (Tensor, Tensor, Tensor, Tensor, Tensor)",
        "nms": "(Tensor boxes, Tensor scores, float iou_threshold) -> Tensor",
    }
    t_ops = getattr(torch.ops, ns)
    for name, schema in schemas.items():
        if not hasattr(t_ops, name):
            lib.define(name + schema)
            torch.library.register_kernel(f"{ns}::{name}", "cpu", fb.FALLBACK_KERNELS[name], lib=lib)

    def focal_setup(ctx, inputs, output):
        ctx.save_for_backward(inputs[0], inputs[1])
        ctx.gamma, ctx.alpha = inputs[2], inputs[3]

    def focal_bwd(ctx, go):
        logits, targets = ctx.saved_tensors
        return t_ops.sigmoid_focal_loss_backward(go, logits, targets, ctx.gamma, ctx.alpha), None, None, None

    def dcn_setup(ctx, inputs, output):
        x, w, off, m, bias, *params = inputs
        ctx.save_for_backward(x, w, off, m)
        ctx.params, ctx.has_bias = params, bias is not None

    def dcn_bwd(ctx, go):
        gi, gw, goff, gm, gb = t_ops._deform_conv2d_backward(go, *ctx.saved_tensors, *ctx.params)
        return (gi, gw, goff, gm, gb if ctx.has_bias else None) + (None,) * len(ctx.params)

    torch.library.register_autograd(f"{ns}::sigmoid_focal_loss", focal_bwd, setup_context=focal_setup, lib=lib)
    torch.library.register_autograd(f"{ns}::deform_conv2d", dcn_bwd, setup_context=dcn_setup, lib=lib)

    boxes, scores = random_boxes(50, 1), torch.rand(50, generator=torch.Generator().manual_seed(1))
    assert torch.equal(t_ops.nms(boxes, scores, 0.5), ops.nms(boxes, scores, 0.5))

    logits = torch.randn(8, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    targets = torch.tensor([0, 1, 2, 3, -1, 0, 1, 2])
    a, b_ = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    t_ops.sigmoid_focal_loss(a, targets, 2.0, 0.25).sum().backward()
    ops.sigmoid_focal_loss(b_, targets, 2.0, 0.25).sum().backward()
    torch.testing.assert_close(a.grad, b_.grad)

    for bias in (True, False):
        x, weight, offset, mask, bb, params = dcn_case(3, stride=2, groups=2, dg=2, C=4, bias=bias)
        leaves = [t.clone().requires_grad_() for t in (x, weight, offset, mask) + ((bb,) if bias else ())]
        ref = [t.detach().clone().requires_grad_() for t in leaves]
        args = lambda ts: ts[:4] + [ts[4] if bias else None]  # noqa: E731
        t_ops.deform_conv2d(*args(leaves), *params).square().sum().backward()
        ops.deform_conv2d(*args(ref), *params).square().sum().backward()
        for got, exp in zip(leaves, ref):
            torch.testing.assert_close(got.grad, exp.grad)
    *small, params = dcn_case(4, B=1, C=2, O=2, H=4, W=4, dg=2, groups=2)
    assert torch.autograd.gradcheck(lambda *ts: t_ops.deform_conv2d(*ts, *params),
                                    tuple(t.detach().requires_grad_() for t in small))


def test_has_compiled_kernel_tells_python_kernels_apart():
    """A kernel registered from Python (as the fallbacks are) is not a compiled one."""
    ns = "mrcnn_has_compiled_test"
    lib = torch.library.Library(ns, "FRAGMENT")
    if not hasattr(getattr(torch.ops, ns), "box_iou"):
        lib.define("box_iou(Tensor boxes1, Tensor boxes2) -> Tensor")
        torch.library.register_kernel(f"{ns}::box_iou", "cpu", fb.box_iou, lib=lib)
    assert torch._C._dispatch_has_kernel_for_dispatch_key(f"{ns}::box_iou", "CPU")
    line = next(ln for ln in torch._C._dispatch_dump(f"{ns}::box_iou").splitlines() if ln.startswith("CPU:"))
    match = _ops._DUMP_LINE.match(line)
    assert match and match.group(2).endswith(".py")
    assert not _ops.has_compiled_kernel("no_such_op", "CPU")
    for name, device_type in registered_cuda_fallbacks():
        assert not _ops.has_compiled_kernel(name, "CUDA")


def registered_cuda_fallbacks():
    return [key for key in _ops.registered_fallbacks() if key[1] == "cuda"]


def test_warns_once_naming_the_op():
    calls = []
    kernel = _ops._warn_once("box_iou", "cuda", lambda *a: calls.append(a) or 1)
    with pytest.warns(RuntimeWarning, match=r"box_iou has no compiled cuda kernel.*slower"):
        assert kernel(1, 2) == 1
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        kernel(3)
    assert calls == [(1, 2), (3,)]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_fallbacks_on_cuda_match_cpu_kernels():  # pragma: no cover - no GPU in this project's CI
    """The portable fallbacks themselves (called directly, whatever kernel the dispatcher holds for
    CUDA) on CUDA tensors against the compiled CPU kernels."""
    dev = torch.device("cuda")
    boxes, scores = random_boxes(300, 0), torch.rand(300, generator=torch.Generator().manual_seed(0))
    idxs = torch.randint(0, 5, (300,), generator=torch.Generator().manual_seed(1))
    assert torch.equal(fb.nms(boxes.to(dev), scores.to(dev), 0.5).cpu(), ops.nms(boxes, scores, 0.5))
    assert torch.equal(fb.batched_nms(boxes.to(dev), scores.to(dev), idxs.to(dev), 0.5).cpu(),
                       ops.batched_nms(boxes, scores, idxs, 0.5))
    torch.testing.assert_close(fb.box_iou(boxes.to(dev), boxes[:7].to(dev)).cpu(), ops.box_iou(boxes, boxes[:7]))
    logits = torch.randn(50, 7, generator=torch.Generator().manual_seed(2)) * 4
    targets = torch.randint(-1, 8, (50,), generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(fb.sigmoid_focal_loss(logits.to(dev), targets.to(dev), 2.0, 0.25).cpu(),
                               ops.sigmoid_focal_loss(logits, targets, 2.0, 0.25))
    x, weight, offset, mask, bb, params = dcn_case(5, C=4)
    torch.testing.assert_close(fb.deform_conv2d(x.to(dev), weight.to(dev), offset.to(dev), mask.to(dev), bb.to(dev),
                                                *params).cpu(),
                               ops.deform_conv2d(x, weight, offset, mask, bb, *params))
