import os

import pytest
import torch

from maskrcnn_benchmark.config import cfg as default_cfg
from maskrcnn_benchmark.modeling.dense_heads import DENSE_HEADS, head_name, set_num_classes
from maskrcnn_benchmark.modeling.detector import GeneralizedRCNN, build_detection_model
from maskrcnn_benchmark.structures.bounding_box import BoxList
from maskrcnn_benchmark.structures.image_list import to_image_list

SMALL = "configs/atss/atss_R_18_FPN_small.yaml"


def _cfg(head):
    cfg = default_cfg.clone()
    cfg.merge_from_file(SMALL)
    cfg.MODEL.HEAD = head
    cfg.MODEL.RESNETS.BACKBONE_OUT_CHANNELS = 64
    for node in cfg.MODEL.values():  # keep every head's towers short
        if isinstance(node, dict) and "NUM_CONVS" in node:
            node.NUM_CONVS = 1
    set_num_classes(cfg, 4)
    return cfg


def _batch():
    g = torch.Generator().manual_seed(0)
    images = [torch.randn(3, 96, 128, generator=g), torch.randn(3, 80, 112, generator=g)]
    t0 = BoxList(torch.tensor([[10.0, 12.0, 70.0, 80.0], [60.0, 20.0, 120.0, 60.0]]), (128, 96))
    t0.add_field("labels", torch.tensor([1, 3]))
    t1 = BoxList(torch.zeros(0, 4), (112, 80))
    t1.add_field("labels", torch.zeros(0, dtype=torch.int64))
    return images, [t0, t1]


@pytest.mark.parametrize("head", sorted(DENSE_HEADS.keys()))
def test_train_and_eval_forward(head):
    torch.manual_seed(0)
    model = build_detection_model(_cfg(head))
    assert isinstance(model, GeneralizedRCNN)
    images, targets = _batch()
    model.train()
    losses = model(images, targets)
    assert isinstance(losses, dict) and losses
    assert all(v.dim() == 0 and torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    model.eval()
    with torch.no_grad():
        dets = model(to_image_list(images, 32))
    assert len(dets) == 2
    for det, img in zip(dets, images):
        assert det.size == (img.shape[2], img.shape[1])
        s = det.get_field("scores")
        assert len(det) <= 100 and (s[:-1] >= s[1:]).all()
        if len(det):
            assert det.get_field("labels").min() >= 1 and det.get_field("labels").max() <= 3


def test_training_needs_targets():
    model = build_detection_model(_cfg("ATSS"))
    model.train()
    with pytest.raises(ValueError, match="targets are required"):
        model(_batch()[0])


def test_legacy_flag_and_unsupported_options():
    cfg = default_cfg.clone()
    cfg.MODEL.ATSS_ON = True
    assert head_name(cfg) == "ATSS"
    cfg.MODEL.ATSS_ON = False
    with pytest.raises(ValueError, match="MODEL.HEAD"):
        head_name(cfg)
    for key in ("MODEL.MASK_ON", "MODEL.KEYPOINT_ON"):
        cfg = _cfg("ATSS")
        cfg.merge_from_list([key, True])
        with pytest.raises(ValueError, match="unsupported"):
            build_detection_model(cfg)
    cfg = _cfg("ATSS")  # TTA wraps the detector (engine/bbox_aug.py): the detector itself builds
    cfg.TEST.BBOX_AUG.ENABLED = True
    assert isinstance(build_detection_model(cfg), torch.nn.Module)
    cfg = _cfg("ATSS")
    cfg.MODEL.HEAD = "NOPE"
    with pytest.raises(KeyError, match="NOPE"):
        build_detection_model(cfg)


def test_state_dict_names_match_original_layout():
    names = set(build_detection_model(_cfg("DYNAMIC_ATSS")).state_dict())
    for n in ("rpn.head.cls_tower.0.weight", "rpn.head.bbox_tower.1.bias", "rpn.head.cls_logits.bias",
              "rpn.head.bbox_pred.weight", "rpn.head.centerness.weight", "rpn.head.scales.4.scale",
              "backbone.body.stem.conv1.weight"):
        assert n in names, n


def test_bf16_inference_on_cpu_is_close_to_fp32_with_float32_post_processing():
    """TEST.AMP bf16: the backbone / head convs run in bfloat16 (checked with a hook), the
    detections are float32 and close to float32 inference: each of the 10 best float32
    detections has a bf16 one of the same label with IoU >= 0.9 and |score difference| <= 0.03
    (bf16 keeps ~3 significant digits)."""
    cfg = _cfg("ATSS")
    cfg.MODEL.ATSS.INFERENCE_TH = 0.3
    torch.manual_seed(0)
    fp32 = build_detection_model(cfg).eval()
    with torch.no_grad():
        fp32.rpn.head.cls_logits.bias.normal_()
    cfg.TEST.AMP = "bf16"
    bf16 = build_detection_model(cfg).eval()
    bf16.load_state_dict(fp32.state_dict())
    assert bf16.inference_amp is torch.bfloat16 and fp32.inference_amp is None
    conv_dtypes = []
    bf16.rpn.head.cls_logits.register_forward_hook(lambda m, i, o: conv_dtypes.append(o.dtype))
    g = torch.Generator().manual_seed(3)
    x = to_image_list([torch.randn(3, 96, 128, generator=g) * 50], 32)
    with torch.no_grad():
        ref, got = fp32(x)[0], bf16(x)[0]
    assert conv_dtypes and set(conv_dtypes) == {torch.bfloat16}
    assert got.bbox.dtype == torch.float32 and got.get_field("scores").dtype == torch.float32
    assert len(ref) >= 10 and len(got) > 0
    iou = _iou(ref.bbox[:10], got.bbox)
    same = ref.get_field("labels")[:10, None] == got.get_field("labels")[None, :]
    close = (ref.get_field("scores")[:10, None] - got.get_field("scores")[None, :]).abs() <= 0.03
    assert ((iou >= 0.9) & same & close).any(dim=1).all()


def _iou(a, b):
    """Plain IoU matrix of xyxy boxes [N, 4] x [M, 4]."""
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    area = lambda t: (t[:, 2:] - t[:, :2]).clamp(min=0).prod(-1)  # noqa: E731
    return inter / (area(a)[:, None] + area(b)[None, :] - inter)


def test_test_amp_rejects_unknown_value():
    cfg = _cfg("ATSS")
    cfg.TEST.AMP = "fp8"
    with pytest.raises(ValueError, match="TEST.AMP"):
        build_detection_model(cfg)


def _outputs(cfg, images, targets):
    """(losses, detections) of the model of ``cfg`` built with seed 0: train-mode losses on the
    batch, then eval-mode detections with the same weights."""
    torch.manual_seed(0)
    model = build_detection_model(cfg)
    model.train()
    losses = {k: v.detach() for k, v in model(images, targets).items()}
    model.eval()
    with torch.no_grad():
        dets = model(to_image_list(images, 32))
    return model, losses, dets


def _assert_close_outputs(a, b, rtol, atol):
    (_, losses_a, dets_a), (_, losses_b, dets_b) = a, b
    assert sorted(losses_a) == sorted(losses_b)
    for k in losses_a:
        torch.testing.assert_close(losses_a[k], losses_b[k], rtol=rtol, atol=atol, msg=k)
    for da, db in zip(dets_a, dets_b):
        # the top detections (clear score gaps) agree; near-ties may swap places
        n = min(len(da), len(db), 5)
        torch.testing.assert_close(da.get_field("scores")[:n], db.get_field("scores")[:n], rtol=rtol, atol=atol)
        torch.testing.assert_close(da.bbox[:n], db.bbox[:n], rtol=rtol, atol=1e-3)


@pytest.mark.parametrize("head", ["RETINANET", "DYNAMIC_ATSS"])
def test_channels_last_matches_default_layout(head):
    cfg = _cfg(head)
    for node in ("ATSS", "RETINANET"):
        cfg.MODEL[node].INFERENCE_TH = 0.001  # detections from the untrained heads
    images, targets = _batch()
    ref = _outputs(cfg, images, targets)
    cfg.MODEL.CHANNELS_LAST = True
    model, *rest = now = _outputs(cfg, images, targets)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(m.weight.is_contiguous(memory_format=torch.channels_last) for m in convs)
    # the same weights: the layouts change only the order of the float32 sums
    for (na, pa), (nb, pb) in zip(ref[0].state_dict().items(), model.state_dict().items()):
        assert na == nb and torch.equal(pa, pb)
    _assert_close_outputs(ref, now, rtol=1e-4, atol=1e-5)


@pytest.mark.skipif(os.environ.get("MASKRCNN_BENCHMARK_TEST_COMPILE", "0") != "1",
                    reason="torch.compile takes about a minute on 2 CPU cores; set "
                           "MASKRCNN_BENCHMARK_TEST_COMPILE=1 to run it")
def test_compile_matches_eager():
    cfg = _cfg("DYNAMIC_ATSS")
    cfg.MODEL.ATSS.INFERENCE_TH = 0.001
    images, targets = _batch()
    ref = _outputs(cfg, images, targets)
    cfg.MODEL.COMPILE = True
    model, *rest = now = _outputs(cfg, images, targets)
    assert model.backbone._compiled_call_impl is not None and model.rpn.head._compiled_call_impl is not None
    assert "_orig_mod" not in "".join(model.state_dict())  # checkpoint names unchanged
    _assert_close_outputs(ref, now, rtol=1e-4, atol=1e-5)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cuda_device_without_cuda_names_the_key():
    cfg = _cfg("ATSS")
    cfg.MODEL.DEVICE = "cuda"
    with pytest.raises(ValueError, match=r"MODEL.DEVICE is 'cuda' but .*'MODEL.DEVICE cpu'"):
        build_detection_model(cfg)
    cfg.MODEL.DEVICE = "nodevice"
    with pytest.raises(ValueError, match="MODEL.DEVICE 'nodevice' is not a device name"):
        build_detection_model(cfg)


def _perturb_norms(model, seed=0):
    """Non-zero conv biases and norm shifts (and GN affine), so that the padding of a batch holds
    non-zero values that would leak into the canvases without the masks."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in list(model.named_parameters()) + list(model.named_buffers()):
            if name.endswith((".bias", ".weight")) and t.ndim == 1:
                t.add_(torch.randn(t.shape, generator=g) * 0.2)


def _mixed_sizes():
    g = torch.Generator().manual_seed(1)
    return [torch.randn(3, h, w, generator=g) for h, w in ((96, 128), (70, 100), (128, 64))]


@pytest.mark.parametrize("norm", ["GN", "FrozenBN"])
@pytest.mark.parametrize("head", sorted(DENSE_HEADS.keys()))
def test_mixed_size_batch_gives_each_image_its_batch1_detections(head, norm):
    """TEST.BATCH_INVARIANT (default): three images of different sizes in one batch (padded to
    128 x 128) get the detections each gets alone (its own 32-multiple canvas), boxes within
    1e-3 px; the releases' behaviour (batch_invariant off) differs by pixels."""
    cfg = _cfg(head)
    cfg.MODEL.BACKBONE.USE_GN = cfg.MODEL.FPN.USE_GN = norm == "GN"
    for node in cfg.MODEL.values():  # every head's node, GFL and any head added later included
        if isinstance(node, dict) and "INFERENCE_TH" in node:
            node.INFERENCE_TH = 0.0  # detections from the untrained heads,
            node.NMS_TH = 0.9  # which predict alike boxes (GFL's uniform DFL distributions)
    torch.manual_seed(0)
    model = build_detection_model(cfg).eval()
    _perturb_norms(model)
    assert model.batch_invariant == (False, True)
    images = _mixed_sizes()
    with torch.no_grad():
        alone = [model(to_image_list([im], 32))[0] for im in images]
        batched = model(to_image_list(images, 32))
        model.batch_invariant = (False, False)
        releases = model(to_image_list(images, 32))
    worst_release = 0.0
    for a, b, r in zip(alone, batched, releases):
        assert len(a) == len(b) >= 20 and a.size == b.size
        torch.testing.assert_close(b.get_field("scores")[:20], a.get_field("scores")[:20],
                                   rtol=1e-4, atol=1e-5)
        assert torch.equal(b.get_field("labels")[:20], a.get_field("labels")[:20])
        assert (b.bbox[:20] - a.bbox[:20]).abs().max() <= 1e-3
        n = min(len(r), 20)
        worst_release = max(worst_release, float((r.bbox[:n] - a.bbox[:n]).abs().max()))
    assert worst_release > 1.0


def test_padding_mask_only_for_mixed_batches():
    """No masks (nothing extra runs) where every image fills the padded tensor, or with
    TEST.BATCH_INVARIANT off; a mask in training only with SOLVER.BATCH_INVARIANT."""
    cfg = _cfg("ATSS")
    model = build_detection_model(cfg).eval()
    equal = to_image_list([torch.zeros(3, 70, 100), torch.zeros(3, 80, 110)], 32)  # both 96 x 128
    assert model.padding_mask(to_image_list([torch.zeros(3, 70, 100)], 32)) is None
    assert model.padding_mask(equal) is None
    mixed = to_image_list([torch.zeros(3, 70, 100), torch.zeros(3, 128, 64)], 32)
    assert model.padding_mask(mixed).canvas_hw.tolist() == [[96, 128], [128, 64]]
    model.train()
    assert model.padding_mask(mixed) is None
    cfg.SOLVER.BATCH_INVARIANT = True
    cfg.TEST.BATCH_INVARIANT = False
    model = build_detection_model(cfg)
    assert model.padding_mask(mixed) is not None
    assert model.eval().padding_mask(mixed) is None


def test_batch_invariant_training_step():
    """SOLVER.BATCH_INVARIANT: the training forward takes the masks (GN over each canvas); the
    losses are finite, differ from the releases' training on the same mixed batch, and backward
    reaches the backbone."""
    cfg = _cfg("ATSS")
    cfg.MODEL.BACKBONE.USE_GN = cfg.MODEL.FPN.USE_GN = True
    images, targets = _batch()  # 96 x 128 and 80 x 112: canvases 96 x 128 and 96 x 128
    images[1] = images[1][:, :60, :70]  # canvas 64 x 96
    targets[1] = BoxList(torch.zeros(0, 4), (70, 60))
    targets[1].add_field("labels", torch.zeros(0, dtype=torch.int64))
    losses = {}
    for invariant in (False, True):
        cfg.SOLVER.BATCH_INVARIANT = invariant
        torch.manual_seed(0)
        model = build_detection_model(cfg).train()
        out = model(images, targets)
        assert all(torch.isfinite(v) for v in out.values())
        sum(out.values()).backward()
        assert model.backbone.body.layer4[0].conv1.weight.grad.abs().sum() > 0
        losses[invariant] = {k: float(v) for k, v in out.items()}
    assert losses[True] != losses[False]


@pytest.mark.parametrize("to_bgr255", [True, False])
@pytest.mark.parametrize("channels_last", [False, True])
def test_uint8_batch_equals_the_old_normalised_float_batch(to_bgr255, channels_last):
    """The loaders now hand uint8 batches to the model, which normalises them itself: the same
    losses and detections (bit for bit) as the former float batch (Normalize per image, zero
    padding), for a mixed-size batch, with the batch-invariant masks in eval and in training."""
    import numpy as np

    from maskrcnn_benchmark.data.transforms import Normalize, ToTensor

    cfg = _cfg("ATSS")
    mean, std = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]) if not to_bgr255 else \
        ([102.9801, 115.9465, 122.7717], [57.4, 57.1, 58.4])
    cfg.merge_from_list(["INPUT.TO_BGR255", to_bgr255, "INPUT.PIXEL_MEAN", mean, "INPUT.PIXEL_STD", std,
                         "MODEL.CHANNELS_LAST", channels_last, "SOLVER.BATCH_INVARIANT", True,
                         "MODEL.ATSS.INFERENCE_TH", 0.0])
    torch.manual_seed(0)
    model = build_detection_model(cfg)
    assert model.channels_last == channels_last
    _perturb_norms(model)
    rng = np.random.default_rng(0)
    arrays = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in ((96, 128), (70, 100), (128, 64))]
    uint8 = to_image_list([ToTensor(torch.uint8)(a, None)[0] for a in arrays], 32)
    norm = Normalize(mean, std, to_bgr255)
    old = to_image_list([norm(*ToTensor()(a, None))[0] for a in arrays], 32)
    assert uint8.tensors.dtype == torch.uint8 and old.tensors.dtype == torch.float32
    assert torch.equal(model.preprocess(uint8).tensors, old.tensors)
    targets = []
    for a in arrays:
        t = BoxList(torch.tensor([[4.0, 6.0, 50.0, 60.0]]), (a.shape[1], a.shape[0]))
        t.add_field("labels", torch.tensor([2]))
        targets.append(t)
    model.train()
    losses_new = model(uint8, targets)
    losses_old = model(old, targets)
    assert losses_new.keys() == losses_old.keys()
    for k in losses_new:
        assert torch.equal(losses_new[k], losses_old[k]), k
    model.eval()
    with torch.no_grad():
        new, ref = model(uint8), model(old)
    for a, b in zip(new, ref):
        assert len(a) == len(b) > 0
        assert torch.equal(a.bbox, b.bbox) and torch.equal(a.get_field("scores"), b.get_field("scores"))
        assert torch.equal(a.get_field("labels"), b.get_field("labels"))


def test_input_dtype_rule():
    """uint8: normalised by the model; floating: used as it is (only made channels-last where the
    model is); anything else: a clear error."""
    cfg = _cfg("ATSS")
    cfg.MODEL.CHANNELS_LAST = False
    model = build_detection_model(cfg).eval()
    x = torch.randn(1, 3, 64, 64)
    assert model.preprocess(x).tensors is x
    cfg.MODEL.CHANNELS_LAST = True
    cl = build_detection_model(cfg).eval().preprocess(x).tensors
    assert cl.is_contiguous(memory_format=torch.channels_last) and torch.equal(cl, x)
    u = torch.full((1, 3, 64, 64), 100, dtype=torch.uint8)
    torch.testing.assert_close(model.preprocess(u).tensors[0, :, 0, 0],
                               100.0 - torch.tensor(default_cfg.INPUT.PIXEL_MEAN), rtol=0, atol=0)
    with pytest.raises(ValueError, match="uint8 .* or floating"):
        model(torch.zeros(1, 3, 64, 64, dtype=torch.int64))


# ---- MODEL.CHANNELS_LAST / MODEL.WINOGRAD "auto" in the builder (utils/cpu_speedups.py) -----------
def _speedups_of(model):
    from maskrcnn_benchmark.layers import WinogradConv2d

    return model.channels_last, sum(isinstance(m, WinogradConv2d) for m in model.modules())


@pytest.mark.parametrize("opts, purpose, want_on, why", [
    ({}, "train", True, "auto: on"),
    ({}, "test", True, "auto: on"),
    ({}, "export", False, "auto: off, the model is built for an export"),
    ({"SOLVER.AMP": "bf16"}, "train", False, "auto: off, mixed precision"),
    ({"SOLVER.AMP": "bf16"}, "test", True, "auto: on"),  # inference-only: SOLVER.AMP does not apply
    ({"TEST.AMP": "bf16"}, "test", False, "auto: off, mixed precision"),
    ({"MODEL.COMPILE_TRAIN_STEP": True}, "train", False, "auto: off, torch.compile"),
])
def test_builder_resolves_auto_and_logs_why(caplog, opts, purpose, want_on, why):
    import logging

    from maskrcnn_benchmark.modeling.detector import resolve_speedups

    cfg = _cfg("DYNAMIC_ATSS")
    cfg.MODEL.RESNETS.BACKBONE_OUT_CHANNELS = 128  # towers of >= 80 channels: Winograd-eligible
    for key, value in opts.items():
        node, leaf = key.rsplit(".", 1)
        cfg[node.split(".")[0]][leaf] = value
    assert cfg.MODEL.CHANNELS_LAST == "auto" and cfg.MODEL.WINOGRAD == "auto"
    with caplog.at_level(logging.INFO, logger="maskrcnn_benchmark.modeling.detector"):
        if opts.get("MODEL.COMPILE_TRAIN_STEP"):
            got = resolve_speedups(cfg, purpose)  # compiling itself is slow: the decision only
            assert got == {"MODEL.CHANNELS_LAST": False, "MODEL.WINOGRAD": False}
        else:
            channels_last, winograd = _speedups_of(build_detection_model(cfg, purpose))
            assert channels_last is want_on and (winograd > 0) is want_on
    lines = [r.getMessage() for r in caplog.records if r.name == "maskrcnn_benchmark.modeling.detector"]
    assert len(lines) == 2  # one line per key
    for key, line in zip(("MODEL.CHANNELS_LAST", "MODEL.WINOGRAD"), lines):
        assert line.startswith(f"{key} {why}"), line


def test_builder_forced_values_and_bad_value(caplog):
    cfg = _cfg("DYNAMIC_ATSS")
    cfg.MODEL.RESNETS.BACKBONE_OUT_CHANNELS = 128
    cfg.MODEL.CHANNELS_LAST, cfg.MODEL.WINOGRAD = False, True
    assert _speedups_of(build_detection_model(cfg))[0] is False and _speedups_of(build_detection_model(cfg))[1] > 0
    cfg.MODEL.CHANNELS_LAST, cfg.MODEL.WINOGRAD = True, False
    cfg.SOLVER.AMP = "bf16"  # forced: autocast does not turn it off
    assert _speedups_of(build_detection_model(cfg)) == (True, 0)
    cfg.MODEL.WINOGRAD = "sometimes"  # set in code, past the config's merge check
    with pytest.raises(ValueError, match=r"MODEL\.WINOGRAD must be 'auto', True or False; got 'sometimes'"):
        build_detection_model(cfg)


def test_cuda_model_leaves_auto_off_without_a_gpu():
    """The builder's decision for MODEL.DEVICE cuda (no GPU needed for the decision itself)."""
    from maskrcnn_benchmark.modeling.detector import resolve_speedups

    cfg = _cfg("DYNAMIC_ATSS")
    cfg.MODEL.DEVICE = "cuda"
    assert resolve_speedups(cfg, "train") == {"MODEL.CHANNELS_LAST": False, "MODEL.WINOGRAD": False}
    with pytest.raises(ValueError, match="purpose must be one of"):
        resolve_speedups(cfg, "training")


def test_auto_model_checkpoint_round_trip(tmp_path):
    """A model built with "auto" on (channels-last, Winograd) saves a state dict that loads into a
    model built with both off, and back, with the same outputs (the parameters are the same numbers;
    only their memory layout differs)."""
    from maskrcnn_benchmark.utils.checkpoint import Checkpointer

    cfg = _cfg("DYNAMIC_ATSS")
    cfg.MODEL.RESNETS.BACKBONE_OUT_CHANNELS = 128
    torch.manual_seed(0)
    fast = build_detection_model(cfg)
    assert _speedups_of(fast)[0] and _speedups_of(fast)[1] > 0
    Checkpointer(fast, save_dir=str(tmp_path), save_to_disk=True).save("model_x")
    plain_cfg = cfg.clone()
    plain_cfg.MODEL.CHANNELS_LAST, plain_cfg.MODEL.WINOGRAD = False, False
    plain = build_detection_model(plain_cfg)
    saved = torch.load(tmp_path / "model_x.pth", weights_only=False)["model"]
    assert sorted(saved) == sorted(plain.state_dict())  # same names
    plain.load_state_dict(saved)
    for name, tensor in plain.state_dict().items():
        assert torch.equal(tensor, fast.state_dict()[name]), name
        if tensor.dim() == 4:
            assert tensor.is_contiguous()  # the plain model keeps its layout
    again = build_detection_model(cfg)
    again.load_state_dict(plain.state_dict())
    assert again.channels_last
    images, _ = _batch()
    plain.eval(), again.eval()
    with torch.no_grad():
        a, b = plain(images), again(images)
    for da, db in zip(a, b):
        n = min(len(da), len(db), 5)
        torch.testing.assert_close(da.get_field("scores")[:n], db.get_field("scores")[:n], rtol=1e-3, atol=1e-4)
