"""nms / batched_nms against a loop-form greedy reference (IoU by formula, same dtype)."""
import time

import numpy as np
import pytest
import torch

from maskrcnn_benchmark.layers import batched_nms, box_iou, nms
from maskrcnn_benchmark.layers._ops import has_compiled_kernel

OPS = torch.ops.maskrcnn_benchmark
DTYPES = [torch.float32, torch.float64]


def iou_matrix_ref(boxes: np.ndarray) -> np.ndarray:
    """IoU by formula, in the dtype of ``boxes`` (element order as the kernel: same rounding)."""
    n = boxes.shape[0]
    out = np.zeros((n, n), dtype=boxes.dtype)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    for i in range(n):
        w = np.maximum(0, np.minimum(boxes[i, 2], boxes[:, 2]) - np.maximum(boxes[i, 0], boxes[:, 0]))
        h = np.maximum(0, np.minimum(boxes[i, 3], boxes[:, 3]) - np.maximum(boxes[i, 1], boxes[:, 1]))
        inter = w * h
        union = area[i] + area - inter
        with np.errstate(invalid="ignore", divide="ignore"):
            out[i] = np.where(union > 0, inter / union, 0)
    return out


def nms_ref(boxes, scores, threshold, idxs=None):
    """Plain greedy NMS: visit boxes by decreasing score (stable), keep one unless a kept box of the
    same idx overlaps it with IoU > threshold."""
    b = boxes.numpy()
    iou = iou_matrix_ref(b)
    thr = b.dtype.type(threshold)
    order = sorted(range(len(b)), key=lambda i: -float(scores[i]))  # sorted() is stable
    same = [0] * len(b) if idxs is None else idxs.tolist()
    keep = []
    for i in order:
        if all(not (same[k] == same[i] and iou[k, i] > thr) for k in keep):
            keep.append(i)
    return keep


def random_boxes(n, seed, scale=1.0, dtype=torch.float32):
    """Clustered boxes (many overlaps) in a 100 x 100 frame, times ``scale``."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.rand(max(n // 8, 1), 2, generator=g) * 100
    c = centers[torch.randint(len(centers), (n,), generator=g)] + torch.randn(n, 2, generator=g) * 3
    wh = torch.rand(n, 2, generator=g) * 30 + 1
    boxes = torch.cat([c - wh / 2, c + wh / 2], dim=1) * scale
    return boxes.to(dtype)


def random_scores(n, seed, ties=False):
    g = torch.Generator().manual_seed(seed + 1000)
    if ties:
        return torch.randint(0, 4, (n,), generator=g).float() / 4
    return torch.rand(n, generator=g)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("threshold", [0.0, 0.3, 0.5, 0.7, 1.0])
@pytest.mark.parametrize("seed", range(6))
def test_nms_matches_reference(seed, threshold, dtype):
    for n, scale, ties in [(0, 1, False), (1, 1, False), (2, 1, True), (37, 1, False),
                           (150, 1, True), (150, 100.0, False), (150, 1e-3, False)]:
        boxes = random_boxes(n, seed, scale, dtype)
        scores = random_scores(n, seed, ties).to(dtype)
        keep = nms(boxes, scores, threshold)
        assert keep.dtype == torch.int64 and keep.dim() == 1
        assert keep.tolist() == nms_ref(boxes, scores, threshold), (n, scale, ties)


def test_nms_empty_and_one():
    assert nms(torch.zeros(0, 4), torch.zeros(0), 0.5).shape == (0,)
    assert nms(torch.zeros(0, 4, dtype=torch.float64), torch.zeros(0, dtype=torch.float64), 0.5).dtype == torch.int64
    assert nms(torch.tensor([[0.0, 0, 1, 1]]), torch.tensor([0.3]), 0.5).tolist() == [0]


def test_nms_identical_boxes_and_tied_scores():
    boxes = torch.tensor([[1.0, 2, 5, 7]]).repeat(6, 1)
    assert nms(boxes, torch.ones(6), 0.5).tolist() == [0]  # stable: first of the tied
    assert nms(boxes, torch.arange(6.0), 0.5).tolist() == [5]
    assert nms(boxes, torch.ones(6), 1.0).tolist() == list(range(6))  # IoU 1 is not > 1
    # zero-area identical boxes: union 0 -> IoU 0 -> nothing suppressed
    points = torch.tensor([[3.0, 3, 3, 3]]).repeat(3, 1)
    assert nms(points, torch.tensor([0.1, 0.9, 0.5]), 0.5).tolist() == [1, 2, 0]


def test_nms_threshold_is_strict():
    boxes = torch.tensor([[0.0, 0, 2, 1], [0.0, 0, 1, 1]])  # inter 1, union 2 -> 0.5
    assert nms(boxes, torch.tensor([0.9, 0.8]), 0.5).tolist() == [0, 1]
    assert nms(boxes, torch.tensor([0.9, 0.8]), 0.49).tolist() == [0]


def test_nms_huge_and_tiny_boxes():
    for scale in (1e4 / 100, 1e-2 / 30):
        boxes = random_boxes(300, 7, scale)
        scores = random_scores(300, 7)
        assert nms(boxes, scores, 0.5).tolist() == nms_ref(boxes, scores, 0.5)


def test_nms_non_contiguous_inputs():
    boxes = random_boxes(80, 3).t().contiguous().t()
    scores = torch.rand(160)[::2]
    assert not boxes.is_contiguous() and not scores.is_contiguous()
    assert nms(boxes, scores, 0.5).tolist() == nms_ref(boxes.contiguous(), scores.contiguous(), 0.5)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.8])
@pytest.mark.parametrize("seed", range(5))
def test_batched_nms_matches_reference(seed, threshold, dtype):
    g = torch.Generator().manual_seed(seed)
    for n, num_classes, ties in [(0, 3, False), (1, 3, False), (60, 1, False), (200, 3, True), (300, 80, False)]:
        boxes = random_boxes(n, seed, 1.0, dtype)
        scores = random_scores(n, seed, ties).to(dtype)
        idxs = torch.randint(num_classes, (n,), generator=g)
        keep = batched_nms(boxes, scores, idxs, threshold)
        assert keep.dtype == torch.int64
        assert keep.tolist() == nms_ref(boxes, scores, threshold, idxs), (n, num_classes, ties)


def test_batched_nms_arbitrary_idx_values_and_int32():
    boxes = random_boxes(120, 11)
    scores = random_scores(120, 11)
    raw = torch.randint(0, 4, (120,))
    values = torch.tensor([-5, 0, 10**12, 7])[raw]
    expected = nms_ref(boxes, scores, 0.5, raw)
    assert batched_nms(boxes, scores, values, 0.5).tolist() == expected
    assert batched_nms(boxes, scores, raw.int(), 0.5).tolist() == expected


def test_batched_nms_one_class_equals_nms_and_classes_do_not_interact():
    boxes = random_boxes(200, 5)
    scores = random_scores(200, 5)
    assert batched_nms(boxes, scores, torch.zeros(200, dtype=torch.int64), 0.5).tolist() == nms(boxes, scores, 0.5).tolist()
    same = torch.tensor([[0.0, 0, 10, 10]]).repeat(4, 1)
    assert batched_nms(same, torch.tensor([0.1, 0.4, 0.3, 0.2]), torch.tensor([0, 1, 2, 1]), 0.5).tolist() == [1, 2, 0]


@pytest.mark.parametrize(
    "args, match",
    [
        ((torch.zeros(3, 5), torch.zeros(3), 0.5), r"nms: boxes must have shape \[N, 4\], got \[3, 5\]"),
        ((torch.zeros(3, 4), torch.zeros(2), 0.5), r"nms: scores must have shape \[N\] with N = 3"),
        ((torch.zeros(3, 4), torch.zeros(3, 1), 0.5), r"nms: scores must have shape \[N\], got \[3, 1\]"),
        ((torch.zeros(3, 4, dtype=torch.int64), torch.zeros(3), 0.5), r"nms: boxes must be float32 or float64, got Long"),
        ((torch.zeros(3, 4), torch.zeros(3, dtype=torch.int64), 0.5), r"nms: scores must be a floating point tensor"),
    ],
)
def test_nms_bad_inputs(args, match):
    with pytest.raises(RuntimeError, match=match):
        nms(*args)


def test_batched_nms_bad_inputs():
    with pytest.raises(RuntimeError, match=r"batched_nms: idxs must have shape \[N\] with N = 3"):
        batched_nms(torch.zeros(3, 4), torch.zeros(3), torch.zeros(4, dtype=torch.int64), 0.5)
    with pytest.raises(RuntimeError, match=r"batched_nms: idxs must be int64, got Float"):
        batched_nms(torch.zeros(3, 4), torch.zeros(3), torch.zeros(3), 0.5)
    with pytest.raises(RuntimeError, match=r"batched_nms: boxes must have shape \[N, 4\], got \[3\]"):
        batched_nms(torch.zeros(3), torch.zeros(3), torch.zeros(3, dtype=torch.int64), 0.5)


def test_device_mismatch_is_reported():
    with pytest.raises(ValueError, match="nms: scores must be on the device of boxes"):
        nms(torch.zeros(3, 4), torch.zeros(3, device="meta"), 0.5)
    with pytest.raises(ValueError, match="batched_nms: idxs must be on the device of boxes"):
        batched_nms(torch.zeros(3, 4), torch.zeros(3), torch.zeros(3, dtype=torch.int64, device="meta"), 0.5)


@pytest.mark.parametrize("missing", ["boxes", "scores", "idxs"])
def test_batched_nms_none_argument_is_named(missing):
    args = {"boxes": torch.zeros(3, 4), "scores": torch.zeros(3), "idxs": torch.zeros(3, dtype=torch.int64)}
    args[missing] = None
    with pytest.raises(TypeError, match=f"batched_nms: {missing} must be a torch.Tensor, got NoneType"):
        batched_nms(iou_threshold=0.5, **args)
    if missing != "idxs":
        args.pop("idxs")
        with pytest.raises(TypeError, match=f"nms: {missing} must be a torch.Tensor, got NoneType"):
            nms(iou_threshold=0.5, **args)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("seed", range(3))
def test_half_on_cpu_equals_float32_of_the_rounded_inputs(dtype, seed):
    """float16 / bfloat16 CPU boxes (torchvision accepts them): the kept indices are those of NMS on
    the same (rounded) values in float32, by the plain reference."""
    boxes, scores = random_boxes(60, seed).to(dtype), random_scores(60, seed).to(dtype)
    idxs = torch.randint(3, (60,), generator=torch.Generator().manual_seed(seed))
    assert nms(boxes, scores, 0.5).tolist() == nms_ref(boxes.float(), scores.float(), 0.5)
    assert batched_nms(boxes, scores, idxs, 0.5).tolist() == nms_ref(boxes.float(), scores.float(), 0.5, idxs)


def test_opcheck():
    boxes, scores = random_boxes(50, 1), random_scores(50, 1)
    idxs = torch.randint(3, (50,))
    torch.library.opcheck(OPS.nms.default, (boxes, scores, 0.5))
    torch.library.opcheck(OPS.nms.default, (boxes.double(), scores.double(), 0.3))
    torch.library.opcheck(OPS.batched_nms.default, (boxes, scores, idxs, 0.5))
    torch.library.opcheck(OPS.nms.default, (torch.zeros(0, 4), torch.zeros(0), 0.5))


def test_torch_compile_smoke():
    def postprocess(boxes, scores, labels, anchors):
        quality = box_iou(boxes, anchors).max(dim=1).values
        keep = batched_nms(boxes, scores * quality, labels, 0.6)
        return boxes[keep], keep

    boxes, scores = random_boxes(120, 2), random_scores(120, 2)
    labels = torch.randint(5, (120,))
    anchors = random_boxes(30, 4)
    start = time.perf_counter()
    compiled = torch.compile(postprocess, fullgraph=False)
    out_boxes, keep = compiled(boxes, scores, labels, anchors)
    if time.perf_counter() - start > 20:
        pytest.skip("torch.compile is too slow on this machine")
    ref_boxes, ref_keep = postprocess(boxes, scores, labels, anchors)
    assert keep.tolist() == ref_keep.tolist()
    torch.testing.assert_close(out_boxes, ref_boxes)


def _needs_compiled_cuda(*ops):
    """Skips unless a GPU is there and the CUDA kernels of ``ops`` are the compiled ones (not the
    portable fallbacks that layers._ops registers on a build without them)."""
    ok = torch.cuda.is_available() and all(has_compiled_kernel(op, "CUDA") for op in ops)
    return pytest.mark.skipif(not ok, reason=f"needs a GPU and the compiled CUDA kernels of {', '.join(ops)} "
                                             "(build with MASKRCNN_BENCHMARK_CUDA_KERNELS=1)")


def assert_same_keep(got, expected, scores):
    """Kept indices equal, or, where tied scores were ordered differently, the same kept scores."""
    got, expected = got.cpu(), expected.cpu()
    if torch.equal(got, expected):
        return
    assert got.shape == expected.shape, (got.tolist(), expected.tolist())
    torch.testing.assert_close(scores[got], scores[expected], rtol=0, atol=0)


@_needs_compiled_cuda("nms", "batched_nms")
class TestNmsCudaMatchesCpu:
    @pytest.mark.parametrize("ties", [False, True])
    @pytest.mark.parametrize("threshold", [0.0, 0.5, 0.8])
    @pytest.mark.parametrize("seed", range(3))
    def test_nms(self, seed, threshold, ties):
        for n in (1, 63, 64, 65, 500, 3000):  # around the 64-box mask words
            boxes, scores = random_boxes(n, seed), random_scores(n, seed, ties)
            cpu = nms(boxes, scores, threshold)
            assert_same_keep(nms(boxes.cuda(), scores.cuda(), threshold), cpu, scores)

    @pytest.mark.parametrize("ties", [False, True])
    @pytest.mark.parametrize("seed", range(3))
    def test_batched_nms(self, seed, ties):
        for n, num_classes in ((500, 10), (3000, 80)):
            boxes, scores = random_boxes(n, seed), random_scores(n, seed, ties)
            idxs = torch.randint(num_classes, (n,), generator=torch.Generator().manual_seed(seed))
            cpu = batched_nms(boxes, scores, idxs, 0.5)
            assert_same_keep(batched_nms(boxes.cuda(), scores.cuda(), idxs.cuda(), 0.5), cpu, scores)

    @pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
    def test_other_dtypes(self, dtype):
        """Reduced-precision boxes are compared in float32 on the CPU (the kernel computes in float32)."""
        boxes, scores = random_boxes(800, 4).to(dtype), random_scores(800, 4).to(dtype)
        ref_dtype = torch.float64 if dtype == torch.float64 else torch.float32
        cpu = nms(boxes.to(ref_dtype), scores.to(ref_dtype), 0.5)
        assert_same_keep(nms(boxes.cuda(), scores.cuda(), 0.5), cpu, scores.to(ref_dtype))
        idxs = torch.randint(5, (800,), generator=torch.Generator().manual_seed(4))
        cpu = batched_nms(boxes.to(ref_dtype), scores.to(ref_dtype), idxs, 0.5)
        assert_same_keep(batched_nms(boxes.cuda(), scores.cuda(), idxs.cuda(), 0.5), cpu, scores.to(ref_dtype))

    def test_empty_and_bad_input(self):
        e = torch.zeros(0, 4, device="cuda")
        assert nms(e, torch.zeros(0, device="cuda"), 0.5).shape == (0,)
        with pytest.raises(RuntimeError, match=r"nms: boxes must have shape \[N, 4\]"):
            nms(torch.zeros(3, 5, device="cuda"), torch.zeros(3, device="cuda"), 0.5)

    def test_box_count_limit(self):
        """The suppression mask holds N x ceil(N / 64) 8-byte words: above 2^18 boxes (an 8 GiB mask) the
        kernel refuses with the numbers instead of attempting the allocation."""
        n = (1 << 18) + 1
        boxes = torch.tensor([0.0, 0.0, 1.0, 1.0], device="cuda").expand(n, 4)
        scores = torch.zeros(n, device="cuda")
        with pytest.raises(RuntimeError, match=r"nms: 262145 boxes would need a 262145 x 4097 x 8-byte suppression "
                                               r"mask \(8194 MiB\); the CUDA kernel takes at most 262144 boxes"):
            nms(boxes, scores, 0.5)
        with pytest.raises(RuntimeError, match=r"batched_nms: 262145 boxes .* at most 262144 boxes"):
            batched_nms(boxes, scores, torch.zeros(n, dtype=torch.int64, device="cuda"), 0.5)
