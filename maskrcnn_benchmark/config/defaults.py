"""Default configuration (yacs). Every key is commented with its meaning, units and options.

Conventions (see shared/ALGORITHMS.md):
- Boxes are continuous x1, y1, x2, y2 pixels, no legacy "+1".
- ``NUM_CLASSES`` keys count the **foreground classes plus one for background** (81 for COCO), as in
  the original ATSS / Dynamic ATSS yaml files. Classification outputs have ``NUM_CLASSES - 1``
  channels; inside the detector labels are 1..NUM_CLASSES-1 for foreground, 0 for background and -1
  for ignored.
- Merging a yaml or a command-line ``KEY VALUE`` list with a key that does not exist here is an error
  (``KeyError: Non-existent config key: ...``).
"""
from yacs.config import CfgNode as CN

from .node import ConfigNode

_C = ConfigNode()  # yacs, plus "auto" / True / False for MODEL.CHANNELS_LAST and MODEL.WINOGRAD (node.py)

# ---------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------
_C.MODEL = CN()
# Device to build and run the model on: "cpu" or "cuda".
_C.MODEL.DEVICE = "cuda"
# Meta architecture; only "GeneralizedRCNN" (backbone + dense head) exists.
_C.MODEL.META_ARCHITECTURE = "GeneralizedRCNN"
# Dense head, chosen from the head registry (modeling/dense_heads DENSE_HEADS): "ATSS",
# "DYNAMIC_ATSS", "RETINANET", "FCOS", "AUTOASSIGN", "FREEANCHOR", or a head that registers its own
# config node with its module (config/registration.py; e.g. "GFL", cfg.MODEL.GFL). Empty: derived
# from the legacy *_ON flags below (ATSS_ON -> "ATSS", FCOS_ON -> "FCOS", RETINANET_ON ->
# "RETINANET") so the original yaml files work unchanged. A
# config file read by the tools (setup_cfg) with ATSS_ON and an empty HEAD gets "DYNAMIC_ATSS" when
# its file or folder name says dynamic_atss (the Dynamic ATSS release's files, whose ATSS_ON meant
# Dynamic ATSS) and "ATSS" otherwise; the choice is logged and saved in OUTPUT_DIR/config.yml.
_C.MODEL.HEAD = ""
# Legacy flags of the original codebase, kept so its yaml files merge; prefer MODEL.HEAD.
_C.MODEL.RPN_ONLY = False  # original: True for all dense detectors (no ROI heads). Ignored.
_C.MODEL.MASK_ON = False  # original: mask head. Unsupported; must stay False.
_C.MODEL.KEYPOINT_ON = False  # original: keypoint head. Unsupported; must stay False.
_C.MODEL.RETINANET_ON = False  # legacy: same as MODEL.HEAD "RETINANET".
_C.MODEL.FCOS_ON = False  # legacy: same as MODEL.HEAD "FCOS".
_C.MODEL.ATSS_ON = False  # legacy: MODEL.HEAD "ATSS" ("DYNAMIC_ATSS" for dynamic_atss* files; see HEAD).
# Path of weights to load before training / for testing: a local .pth/.pkl file, or a
# "catalog://..." name resolved under $MASKRCNN_BENCHMARK_MODELS (no download is attempted).
# Loads model weights only (fine-tuning); solver state is restored only when resuming OUTPUT_DIR.
# Our checkpoints with EMA weights ("ema", SOLVER.EMA_DECAY) give the EMA weights. In training, the
# class-dependent predictors (each head's cls_logits, AutoAssign's centre prior) of a checkpoint
# with another number of classes are skipped (logged) and keep their initialisation; any other
# shape mismatch is an error (tools/test_net.py and the Predictor accept no class change).
_C.MODEL.WEIGHT = ""
# Synchronised BatchNorm in distributed training (as maskrcnn-benchmark's FCOS configs): every
# trainable nn.BatchNorm*d is converted to nn.SyncBatchNorm when there is more than one process.
# FrozenBatchNorm2d (the ResNet default) and GroupNorm (USE_GN configs) are not affected, so it is a
# no-op for the shipped configs. torch's SyncBatchNorm needs CUDA: on the CPU (gloo) the layers stay
# per-process BatchNorm, with a warning.
_C.MODEL.USE_SYNCBN = False
# Least share (0..1) of MODEL.WEIGHT's tensors that must load into the model (matched by name
# and shape); fewer is an error listing what did not match (a wrong file would otherwise train
# from scratch / test at AP 0 silently). 0: accept any weights, even none matching (fine-tuning
# from an unrelated checkpoint on purpose). Resuming OUTPUT_DIR is always strict.
_C.MODEL.WEIGHT_MIN_MATCH = 0.5
# Box geometry. True: the original ATSS / Dynamic ATSS releases' "+1" conventions, in continuous
# coordinates (utils/legacy_plus_one.py derives each): their anchors (centred 0.5 px right of / below
# ours, held as the buffers cell_anchors.<level> that their checkpoints carry), the centre-inside
# margin 0.51 px, the ATSS centerness target and GIoU areas of their "+1" boxes, their clipping and
# their rescale to the original image (x2 -> (x2 - 1) * r + 1). Their released checkpoints then give
# their detections. False: continuous coordinates, this project's convention (new training).
# "auto" (or None, the default): decided when weights are loaded (test_net, train_net, the Predictor,
# the visualiser): True when MODEL.WEIGHT (or the checkpoint resumed) has the releases' cell_anchors
# buffers, else False; the log says which and why. Heads: ATSS, Dynamic ATSS and RetinaNet (anchors,
# clipping, rescale); FCOS / AutoAssign / FreeAnchor ignore it except for the final rescale.
_C.MODEL.LEGACY_PLUS_ONE = None
# The CPU speed-ups (maskrcnn_benchmark/utils/cpu_speedups.py): "auto" (the default), True or False
# (in a yaml or on the command line also the strings "True" / "False"; anything else is an error).
# "auto" turns each on where it was measured to pay: the model on the CPU, in float32, with no
# autocast (SOLVER.AMP / TEST.AMP empty), no torch.compile (MODEL.COMPILE / MODEL.COMPILE_TRAIN_STEP
# False) and not built for an export (tools/export_onnx.py, ONNX or AOTInductor); off elsewhere
# (on a GPU: not measured). The log says which and why. True / False force it. With both on, the
# CPU training step was 1.46-1.90x torchvision's and inference 1.62-2.02x (1.04-1.24x and
# 1.25-1.58x with both off; BENCHMARKS.md section 9). Neither changes the parameters or the
# checkpoints; both change results within float32 rounding, not bit for bit: set both False for
# bit-identical results (the golden-output tests do).
#
# Channels-last (NHWC) memory format of the model (parameters and input batch): oneDNN's CPU
# convolutions then skip their layout reorders. Results agree with False within float32 rounding.
_C.MODEL.CHANNELS_LAST = "auto"
# The 3x3 / stride 1 / padding 1 convolutions (towers, FPN outputs, ResNet 3x3s) as Winograd
# F(4x4, 3x3) on the CPU in float32 (layers/winograd.py): a quarter of the multiplications, in
# training and inference. Outputs and gradients agree with the direct convolution to ~1e-5 of
# their magnitude (the direct one: ~3e-7), not bit for bit. Where it is on, it still runs only on
# CPU float32 tensors outside autocast / torch.compile / tracing, on maps of at least 48 tiles of
# 4 x 4 and convs with at least 80 input and output channels (elsewhere the direct conv is faster).
# Pays off mainly with MODEL.CHANNELS_LAST on.
_C.MODEL.WINOGRAD = "auto"
# torch.compile the backbone and the dense head's conv module (nn.Module.compile: checkpoint names
# unchanged). The first forward of every new input shape compiles (minutes for an R-50 on a small
# CPU); assignment, losses and post-processing stay eager. Results agree with False within float32
# rounding (fused kernels). Default False.
_C.MODEL.COMPILE = False
# torch.compile(fullgraph=True) the dense head's whole training step: conv head, batched
# assignment and losses in one graph (they have fixed shapes and no host-device
# synchronisation, so there is no graph break; on a GPU this also allows CUDA graphs). The first
# step of every new feature-map size or GT count compiles. Losses agree with False within float32
# rounding. Independent of MODEL.COMPILE (which compiles the backbone and the conv head only).
# Default False.
_C.MODEL.COMPILE_TRAIN_STEP = False

# ---------------------------------------------------------------------------------------------
# Input
# ---------------------------------------------------------------------------------------------
_C.INPUT = CN()
# Shorter side of training images in pixels; one is drawn at random per image.
_C.INPUT.MIN_SIZE_TRAIN = (800,)
# If (lo, hi) is given (both > 0), the shorter side is drawn uniformly from [lo, hi] instead
# (multi-scale training of the 2x configs). (-1, -1) disables it.
_C.INPUT.MIN_SIZE_RANGE_TRAIN = (-1, -1)
# Longer side cap in pixels during training.
_C.INPUT.MAX_SIZE_TRAIN = 1333
# Shorter side of test images in pixels.
_C.INPUT.MIN_SIZE_TEST = 800
# Longer side cap in pixels at test time.
_C.INPUT.MAX_SIZE_TEST = 1333
# Per-channel mean subtracted from the input, in the input's scale and channel order.
# Default: caffe-style BGR 0-255 (MSRA weights).
_C.INPUT.PIXEL_MEAN = [102.9801, 115.9465, 122.7717]
# Per-channel std the input is divided by.
_C.INPUT.PIXEL_STD = [1.0, 1.0, 1.0]
# True: input is BGR in 0-255 (caffe weights). False: RGB scaled to 0-1 (torchvision weights).
_C.INPUT.TO_BGR255 = True
# Probability of a horizontal flip during training (0 disables).
_C.INPUT.FLIP_PROB_TRAIN = 0.5
# Colour jitter (kept for yaml compatibility with the original; 0 disables).
_C.INPUT.BRIGHTNESS = 0.0
_C.INPUT.CONTRAST = 0.0
_C.INPUT.SATURATION = 0.0
_C.INPUT.HUE = 0.0

# ---------------------------------------------------------------------------------------------
# Datasets
# ---------------------------------------------------------------------------------------------
_C.DATASETS = CN()
# Training datasets: names from config/paths_catalog.py, or "<annotations.json>:<image folder>".
_C.DATASETS.TRAIN = ()
# Test datasets, same forms as DATASETS.TRAIN.
_C.DATASETS.TEST = ()

# ---------------------------------------------------------------------------------------------
# Data loader
# ---------------------------------------------------------------------------------------------
_C.DATALOADER = CN()
# Worker processes per data loader (0: load in the main process).
_C.DATALOADER.NUM_WORKERS = 4
# Pad batched images so height and width are multiples of this (32 for FPN up to P5/P7).
_C.DATALOADER.SIZE_DIVISIBILITY = 0
# Group images of similar aspect ratio (w/h >= 1 or < 1) in a batch (less padding).
_C.DATALOADER.ASPECT_RATIO_GROUPING = True
# Keep training images that have no usable box (none annotated, or only crowd / degenerate boxes):
# they join training as pure negatives (every anchor / point is background). False = the original
# behaviour (they are dropped from training). Test datasets always keep every image.
_C.DATALOADER.KEEP_EMPTY_IMAGES = False
# An image file that cannot be decoded completely (corrupt, or a truncated JPEG/PNG that libjpeg
# would fill with grey) is an error naming it (False, default), or (True) is skipped: the next
# readable image takes its place and a warning names it with the count skipped so far.
_C.DATALOADER.SKIP_CORRUPT_IMAGES = False

# ---------------------------------------------------------------------------------------------
# Backbone
# ---------------------------------------------------------------------------------------------
_C.MODEL.BACKBONE = CN()
# Backbone body from the backbone registry, e.g. "R-50-FPN-RETINANET", "R-101-FPN-RETINANET",
# "R-18-FPN-RETINANET", "R-34-FPN-RETINANET", "R-50-FPN", "R-50-C4".
_C.MODEL.BACKBONE.CONV_BODY = "R-50-C4"
# Stages up to and including this one are frozen (0: none, 1: stem, 2: stem + res2, ...).
_C.MODEL.BACKBONE.FREEZE_CONV_BODY_AT = 2
# Use GroupNorm instead of FrozenBatchNorm in the ResNet body.
_C.MODEL.BACKBONE.USE_GN = False

# ---------------------------------------------------------------------------------------------
# FPN
# ---------------------------------------------------------------------------------------------
_C.MODEL.FPN = CN()
# GroupNorm in the FPN lateral / output convs.
_C.MODEL.FPN.USE_GN = False
# ReLU after the FPN convs.
_C.MODEL.FPN.USE_RELU = False
# ReLU before the first extra conv of *-FPN-RETINANET too (P6 = conv(relu(P5 or C5)); P7 always
# reads relu(P6)). True for AutoAssign (mmdetection's relu_before_extra_convs, with USE_C5 False).
_C.MODEL.FPN.RELU_BEFORE_EXTRA_CONVS = False
# ReLU before the P7 conv of *-FPN-RETINANET (P7 = conv(relu(P6))): True = maskrcnn-benchmark and the
# ATSS / Dynamic ATSS releases. mmdetection's FPN: P7 = conv(P6) (False) unless relu_before_extra_convs
# (AutoAssign: True). mmdetection's extra levels map as: add_extra_convs 'on_input' (or True) ->
# MODEL.RETINANET.USE_C5 True, 'on_output' -> USE_C5 False; it never puts a ReLU before P6.
_C.MODEL.FPN.RELU_BEFORE_P7 = True

# ---------------------------------------------------------------------------------------------
# Group norm
# ---------------------------------------------------------------------------------------------
_C.MODEL.GROUP_NORM = CN()
# Number of channels per group (-1: use NUM_GROUPS instead).
_C.MODEL.GROUP_NORM.DIM_PER_GP = -1
# Number of groups (used when DIM_PER_GP is -1).
_C.MODEL.GROUP_NORM.NUM_GROUPS = 32
# GroupNorm epsilon.
_C.MODEL.GROUP_NORM.EPSILON = 1e-5

# ---------------------------------------------------------------------------------------------
# ResNet / ResNeXt
# ---------------------------------------------------------------------------------------------
_C.MODEL.RESNETS = CN()
# Groups of the 3x3 convs: 1 for ResNet, 32 / 64 for ResNeXt-101 32x8d / 64x4d.
_C.MODEL.RESNETS.NUM_GROUPS = 1
# Width of each group in the first stage (64 for ResNet, 8 / 4 for ResNeXt 32x8d / 64x4d).
_C.MODEL.RESNETS.WIDTH_PER_GROUP = 64
# Put the stride-2 of a bottleneck in the 1x1 conv (MSRA caffe) instead of the 3x3 (FAIR/torchvision).
_C.MODEL.RESNETS.STRIDE_IN_1X1 = True
# Residual block: "BottleneckWithFixedBatchNorm", "BottleneckWithGN", "BasicBlockWithFixedBatchNorm".
_C.MODEL.RESNETS.TRANS_FUNC = "BottleneckWithFixedBatchNorm"
# Stem: "StemWithFixedBatchNorm" or "StemWithGN".
_C.MODEL.RESNETS.STEM_FUNC = "StemWithFixedBatchNorm"
# Dilation of res5 (1 or 2).
_C.MODEL.RESNETS.RES5_DILATION = 1
# Output channels of res2 (256 for bottleneck ResNets, 64 for ResNet-18/34).
_C.MODEL.RESNETS.RES2_OUT_CHANNELS = 256
# Stem output channels.
_C.MODEL.RESNETS.STEM_OUT_CHANNELS = 64
# Channels of every FPN output.
_C.MODEL.RESNETS.BACKBONE_OUT_CHANNELS = 256 * 4
# Modulated deformable convolution per stage (res2, res3, res4, res5).
_C.MODEL.RESNETS.STAGE_WITH_DCN = (False, False, False, False)
# DCNv2 (with mask) when True, DCNv1 when False (only v2 is implemented).
_C.MODEL.RESNETS.WITH_MODULATED_DCN = False
# Deformable groups of the DCN layers.
_C.MODEL.RESNETS.DEFORMABLE_GROUPS = 1

# ---------------------------------------------------------------------------------------------
# Anchor generator (the anchor heads: ATSS, Dynamic ATSS, RetinaNet, FreeAnchor)
# ---------------------------------------------------------------------------------------------
_C.MODEL.ANCHOR_GENERATOR = CN()
# (MODEL.LEGACY_PLUS_ONE True replaces these anchors by the original releases'; OFFSET is then unused.)
# Anchor centre inside its feature cell, in strides: the anchors of cell (y, x) are centred at
# ((x + OFFSET) * s, (y + OFFSET) * s). 0.5 (default): the cell centre (the original ATSS / Dynamic
# ATSS anchors sit 0.5 px further right / down, which no OFFSET expresses: MODEL.LEGACY_PLUS_ONE; see
# modeling/anchor_generator.py). 0.0: mmdetection's AnchorGenerator (center_offset 0), for its weights.
_C.MODEL.ANCHOR_GENERATOR.OFFSET = 0.5

# ---------------------------------------------------------------------------------------------
# RetinaNet (also holds USE_C5, read by the FPN builder for every dense head)
# ---------------------------------------------------------------------------------------------
_C.MODEL.RETINANET = CN()
# Foreground classes + 1 (81 for COCO).
_C.MODEL.RETINANET.NUM_CLASSES = 81
# Anchor sizes in pixels per FPN level (P3-P7).
_C.MODEL.RETINANET.ANCHOR_SIZES = (32, 64, 128, 256, 512)
# Anchor aspect ratios (h / w).
_C.MODEL.RETINANET.ASPECT_RATIOS = (0.5, 1.0, 2.0)
# Anchor strides in pixels per level.
_C.MODEL.RETINANET.ANCHOR_STRIDES = (8, 16, 32, 64, 128)
# Anchor scales per octave (3 for RetinaNet: 2^0, 2^(1/3), 2^(2/3)).
_C.MODEL.RETINANET.SCALES_PER_OCTAVE = 3
# Octave of the anchor scales: the k-th of SCALES_PER_OCTAVE scales has size
# ANCHOR_SIZES[l] * OCTAVE^(k / SCALES_PER_OCTAVE) (2.0: 2^0, 2^(1/3), 2^(2/3) for 3 scales).
_C.MODEL.RETINANET.OCTAVE = 2.0
# Anchors whose centre lies outside the image by more than this many pixels are ignored (-1: off).
_C.MODEL.RETINANET.STRADDLE_THRESH = 0  # accepted and ignored (original configs set it; dense heads keep all anchors)
# Convs in each tower.
_C.MODEL.RETINANET.NUM_CONVS = 4
# GroupNorm (MODEL.GROUP_NORM.NUM_GROUPS groups) after each tower conv. False = the reference
# RetinaNet / FreeAnchor head; True for training from scratch (the synthetic configs), where the
# unnormalised head does not train (see RetinaNetHead).
_C.MODEL.RETINANET.USE_GN = False
# IoU >= this: positive.
_C.MODEL.RETINANET.FG_IOU_THRESHOLD = 0.5
# IoU < this: negative (in between: ignored).
_C.MODEL.RETINANET.BG_IOU_THRESHOLD = 0.4
# Focal loss alpha / gamma.
_C.MODEL.RETINANET.LOSS_ALPHA = 0.25
_C.MODEL.RETINANET.LOSS_GAMMA = 2.0
# Smooth-L1 beta of the box loss.
_C.MODEL.RETINANET.BBOX_REG_BETA = 0.11
# Box loss weight.
_C.MODEL.RETINANET.BBOX_REG_WEIGHT = 4.0
# Prior probability of the cls bias init.
_C.MODEL.RETINANET.PRIOR_PROB = 0.01
# Score threshold at inference.
_C.MODEL.RETINANET.INFERENCE_TH = 0.05
# Candidates kept per level before NMS.
_C.MODEL.RETINANET.PRE_NMS_TOP_N = 1000
# NMS IoU threshold.
_C.MODEL.RETINANET.NMS_TH = 0.5
# P6/P7 from C5 (True) or from P5 (False).
_C.MODEL.RETINANET.USE_C5 = True

# ---------------------------------------------------------------------------------------------
# FCOS
# ---------------------------------------------------------------------------------------------
_C.MODEL.FCOS = CN()
# Foreground classes + 1.
_C.MODEL.FCOS.NUM_CLASSES = 81
# Strides of the feature levels in pixels.
_C.MODEL.FCOS.FPN_STRIDES = [8, 16, 32, 64, 128]
# Prior probability of the cls bias init.
_C.MODEL.FCOS.PRIOR_PROB = 0.01
# Score threshold at inference.
_C.MODEL.FCOS.INFERENCE_TH = 0.05
# NMS IoU threshold.
_C.MODEL.FCOS.NMS_TH = 0.6
# Candidates kept per level before NMS.
_C.MODEL.FCOS.PRE_NMS_TOP_N = 1000
# Focal loss alpha / gamma.
_C.MODEL.FCOS.LOSS_ALPHA = 0.25
_C.MODEL.FCOS.LOSS_GAMMA = 2.0
# Convs in each tower.
_C.MODEL.FCOS.NUM_CONVS = 4
# DCN in the last tower conv.
_C.MODEL.FCOS.USE_DCN_IN_TOWER = False
# Centre sampling radius in strides (0: off, positives anywhere inside the box).
_C.MODEL.FCOS.CENTER_SAMPLING_RADIUS = 0.0
# Regression loss: "iou", "linear_iou" or "giou".
_C.MODEL.FCOS.IOU_LOSS_TYPE = "iou"
# Normalise regression targets by the stride.
_C.MODEL.FCOS.NORM_REG_TARGETS = False
# Centerness on the regression tower (True) or on the classification tower (False).
_C.MODEL.FCOS.CENTERNESS_ON_REG = False
# Object size ranges per level in pixels (max regression distance).
_C.MODEL.FCOS.SIZES_OF_INTEREST = [64, 128, 256, 512]

# ---------------------------------------------------------------------------------------------
# FreeAnchor (head, anchors, NUM_CLASSES and inference from MODEL.RETINANET; losses here)
# ---------------------------------------------------------------------------------------------
_C.MODEL.FREEANCHOR = CN()
# Anchors in each GT's bag (the highest IoU(anchor, GT)).
_C.MODEL.FREEANCHOR.BAG_SIZE = 50
# t1 of the saturated linear P(a_j -> b_i) = clamp((IoU - t1) / (t2 - t1), 0, 1).
_C.MODEL.FREEANCHOR.IOU_THRESHOLD = 0.6
# Weight of the positive bag loss; the negative loss gets 1 - ALPHA.
_C.MODEL.FREEANCHOR.ALPHA = 0.5
# Focal exponent of the negative loss.
_C.MODEL.FREEANCHOR.GAMMA = 2.0
# Smooth-L1 beta (delta units) and weight in P_loc = exp(-WEIGHT * SmoothL1).
_C.MODEL.FREEANCHOR.BBOX_REG_BETA = 0.11
_C.MODEL.FREEANCHOR.BBOX_REG_WEIGHT = 0.75

# ---------------------------------------------------------------------------------------------
# AutoAssign (FCOS-style point head with implicit objectness; see shared/ALGORITHMS.md)
# ---------------------------------------------------------------------------------------------
_C.MODEL.AUTOASSIGN = CN()
# Foreground classes + 1 (81 for COCO; 0 = take it from the training dataset).
_C.MODEL.AUTOASSIGN.NUM_CLASSES = 81
# Strides of the feature levels in pixels (P3-P7).
_C.MODEL.AUTOASSIGN.FPN_STRIDES = [8, 16, 32, 64, 128]
# Convs (3x3, bias, GroupNorm, ReLU) per tower.
_C.MODEL.AUTOASSIGN.NUM_CONVS = 4
# Prior probability of the cls bias init.
_C.MODEL.AUTOASSIGN.PRIOR_PROB = 0.02
# Weight of (1 - GIoU) in p_loc = exp(-REG_LOSS_WEIGHT * (1 - GIoU)).
_C.MODEL.AUTOASSIGN.REG_LOSS_WEIGHT = 5.0
# Weights of the positive, negative and centre-prior losses.
_C.MODEL.AUTOASSIGN.POS_LOSS_WEIGHT = 0.25
_C.MODEL.AUTOASSIGN.NEG_LOSS_WEIGHT = 0.75
_C.MODEL.AUTOASSIGN.CENTER_LOSS_WEIGHT = 0.75
# A GT with no point inside it uses its TOPK points of highest centre prior (off = reference).
_C.MODEL.AUTOASSIGN.FORCE_TOPK = False
_C.MODEL.AUTOASSIGN.TOPK = 9
# Score threshold on sigmoid(cls) at inference (score = sigmoid(cls) * sigmoid(objectness)).
_C.MODEL.AUTOASSIGN.INFERENCE_TH = 0.05
# Candidates kept per level before NMS.
_C.MODEL.AUTOASSIGN.PRE_NMS_TOP_N = 1000
# Class-aware NMS IoU threshold.
_C.MODEL.AUTOASSIGN.NMS_TH = 0.6

# ---------------------------------------------------------------------------------------------
# ATSS and Dynamic ATSS (Dynamic ATSS reads the same keys; see shared/ALGORITHMS.md)
# ---------------------------------------------------------------------------------------------
_C.MODEL.ATSS = CN()
# Foreground classes + 1 (81 for COCO).
_C.MODEL.ATSS.NUM_CLASSES = 81
# Anchor size in pixels per FPN level (8 x stride).
_C.MODEL.ATSS.ANCHOR_SIZES = (64, 128, 256, 512, 1024)
# Anchor aspect ratios (h / w); ATSS uses one square anchor.
_C.MODEL.ATSS.ASPECT_RATIOS = (1.0,)
# Anchor scales per octave.
_C.MODEL.ATSS.SCALES_PER_OCTAVE = 1
# Octave of the anchor scales: size ANCHOR_SIZES[l] * OCTAVE^(k / SCALES_PER_OCTAVE), k <
# SCALES_PER_OCTAVE (the original's key; no effect with the default SCALES_PER_OCTAVE 1).
_C.MODEL.ATSS.OCTAVE = 2.0
# Anchor strides in pixels per level (P3-P7).
_C.MODEL.ATSS.ANCHOR_STRIDES = (8, 16, 32, 64, 128)
# Anchors whose centre lies outside the image by more than this many pixels are ignored (-1: off).
_C.MODEL.ATSS.STRADDLE_THRESH = 0  # accepted and ignored (original configs set it; dense heads keep all anchors)
# Candidates per level and per GT: the TOPK x anchors-per-location nearest anchor centres.
_C.MODEL.ATSS.TOPK = 9
# Positive selection: "ATSS" (adaptive), "SSC" (FCOS scale ranges), "TOPK" (global top-k by IoU),
# "IoU" (RetinaNet 0.5 / 0.4 matcher). Dynamic ATSS always uses its own rule.
_C.MODEL.ATSS.POSITIVE_TYPE = "ATSS"
# POSITIVE_TYPE "IoU" only: IoU >= FG_IOU_THRESHOLD is positive, < BG_IOU_THRESHOLD negative, in
# between ignored (the original's keys and defaults).
_C.MODEL.ATSS.FG_IOU_THRESHOLD = 0.5
_C.MODEL.ATSS.BG_IOU_THRESHOLD = 0.4
# ATSS hazard fix (off by default = the original behaviour): when a GT gets no positive because
# mean + std exceeds every candidate's IoU, make its best in-box candidate positive.
_C.MODEL.ATSS.KEEP_BEST_CANDIDATE = False
# What the head regresses: "BOX" (deltas from anchors) or "POINT" (l, t, r, b from anchor centres).
_C.MODEL.ATSS.REGRESSION_TYPE = "BOX"
# Box coder weights (wx, wy, ww, wh) for "BOX" regression.
_C.MODEL.ATSS.BBOX_REG_WEIGHTS = (10.0, 10.0, 5.0, 5.0)
# Modulated deformable conv in the last layer of each tower.
_C.MODEL.ATSS.USE_DCN_IN_TOWER = False
# Convs in each tower.
_C.MODEL.ATSS.NUM_CONVS = 4
# Bias in the tower convs (before their GroupNorm). True: the ATSS / Dynamic ATSS releases;
# False: mmdetection's ATSSHead (ConvModule with GN has no conv bias), for its weights.
_C.MODEL.ATSS.CONV_BIAS = True
# Prior probability of the cls bias init.
_C.MODEL.ATSS.PRIOR_PROB = 0.01
# Score threshold on sigmoid(cls) at inference.
_C.MODEL.ATSS.INFERENCE_TH = 0.05
# Candidates kept per level before NMS.
_C.MODEL.ATSS.PRE_NMS_TOP_N = 1000
# Class-aware NMS IoU threshold.
_C.MODEL.ATSS.NMS_TH = 0.6
# Focal loss alpha / gamma (Dynamic ATSS uses gamma in its quality focal loss; alpha unused).
_C.MODEL.ATSS.LOSS_ALPHA = 0.25
_C.MODEL.ATSS.LOSS_GAMMA = 2.0
# Weight of the GIoU regression loss.
_C.MODEL.ATSS.REG_LOSS_WEIGHT = 2.0
# Kept for yaml compatibility only: the ATSS / Dynamic ATSS heads keep TEST.DETECTIONS_PER_IMG.
_C.MODEL.ATSS.DETECTIONS_PER_IMG = 100

# ---------------------------------------------------------------------------------------------
# Solver
# ---------------------------------------------------------------------------------------------
_C.SOLVER = CN()
# Resuming OUTPUT_DIR with a changed config: the config in force sets every SOLVER value (STEPS,
# BASE_LR, GAMMA, WARMUP_*, MAX_ITER, WEIGHT_DECAY, MOMENTUM, the periods, EMA_DECAY); the checkpoint
# gives the state (weights, momentum buffers, iteration, RNG, EMA weights). The log lists every key
# that differs from the checkpoint's config.
# Total training iterations.
_C.SOLVER.MAX_ITER = 40000
# Base learning rate for SOLVER.IMS_PER_BATCH images.
_C.SOLVER.BASE_LR = 0.001
# Learning rate multiplier of biases.
_C.SOLVER.BIAS_LR_FACTOR = 2
# Learning rate multiplier of the deformable convs' offset / mask convs (parameters named
# "*.offset.weight" / "*.offset.bias"; on top of BIAS_LR_FACTOR for the bias). 1.0 = no change
# (the original releases' key and default).
_C.SOLVER.DCONV_OFFSETS_LR_FACTOR = 1.0
# SGD momentum.
_C.SOLVER.MOMENTUM = 0.9
# Weight decay of weights.
_C.SOLVER.WEIGHT_DECAY = 0.0005
# Weight decay of biases.
_C.SOLVER.WEIGHT_DECAY_BIAS = 0
# Weight decay of normalisation layers' affine parameters (-1: same as WEIGHT_DECAY).
_C.SOLVER.WEIGHT_DECAY_NORM = -1.0
# Learning rate is multiplied by GAMMA at each of STEPS (iterations).
_C.SOLVER.GAMMA = 0.1
_C.SOLVER.STEPS = (30000,)
# Warmup: lr factor at iteration 0, length in iterations, "constant" or "linear".
_C.SOLVER.WARMUP_FACTOR = 1.0 / 3
_C.SOLVER.WARMUP_ITERS = 500
_C.SOLVER.WARMUP_METHOD = "linear"
# Save a checkpoint every this many iterations (and at the end).
_C.SOLVER.CHECKPOINT_PERIOD = 2500
# Periodic checkpoints (model_XXXXXXX.pth) kept in OUTPUT_DIR: older ones are deleted after each
# save; model_final.pth and the one last_checkpoint names are never deleted. 0: keep all.
_C.SOLVER.CHECKPOINT_KEEP = 3
# Images per batch over all processes (global batch); must be divisible by the world size.
_C.SOLVER.IMS_PER_BATCH = 16
# Linear lr scaling rule: the global batch BASE_LR was tuned for (0: off, the default). When > 0
# and different from IMS_PER_BATCH, training uses BASE_LR * IMS_PER_BATCH / REFERENCE_BATCH
# (logged; the saved config.yml then holds the scaled BASE_LR and REFERENCE_BATCH = IMS_PER_BATCH).
# Only the lr is scaled (as mmdetection's auto_scale_lr); MAX_ITER / STEPS / WARMUP_ITERS are not.
_C.SOLVER.REFERENCE_BATCH = 0
# Gradient clipping: max total L2 norm (0: off).
_C.SOLVER.CLIP_GRAD_NORM = 0.0
# Mixed precision training: "" (off), "fp16" or "bf16".
_C.SOLVER.AMP = ""
# Train with the canvas masks of TEST.BATCH_INVARIANT too (GroupNorm statistics over each image's
# canvas, zero padding at its border). False (default): the releases' training, where the padding of
# a mixed-size batch enters the statistics; a model trained either way is evaluated batch-invariantly.
_C.SOLVER.BATCH_INVARIANT = False
# Evaluate on DATASETS.TEST every this many iterations (0: only at the end).
_C.SOLVER.TEST_PERIOD = 0
# Log losses, lr, time, ETA and memory every this many iterations; also the period of the lines of
# OUTPUT_DIR/metrics.jsonl (means over the period) and of the TensorBoard scalars.
_C.SOLVER.LOG_PERIOD = 20
# Exponential moving average of the weights (0: off, the default; e.g. 0.9998 as YOLOX): after every
# update ema = EMA_DECAY * ema + (1 - EMA_DECAY) * w for every parameter and buffer. The average is
# what the periodic and final evaluation use; checkpoints save it under "ema" (restored exactly on
# resume), and MODEL.WEIGHT / test_net / the Predictor load it instead of the raw weights.
_C.SOLVER.EMA_DECAY = 0.0

# ---------------------------------------------------------------------------------------------
# Test
# ---------------------------------------------------------------------------------------------
_C.TEST = CN()
# Expected results for a regression check (kept for compatibility; list of [task, metric, value, tol]).
_C.TEST.EXPECTED_RESULTS = []
_C.TEST.EXPECTED_RESULTS_SIGMA_TOL = 4
# Images per batch over all processes at test time.
_C.TEST.IMS_PER_BATCH = 8
# Detections kept per image (also the cap on the merged detections of test-time augmentation).
_C.TEST.DETECTIONS_PER_IMG = 100
# Deprecated alias: True sets MODEL.LEGACY_PLUS_ONE True (with a warning); nothing else reads it.
_C.TEST.LEGACY_PLUS_ONE_RESIZE = False
# Pascal VOC evaluation (datasets "<VOC root>:<split>" / voc_*): "area" (area under the interpolated
# precision-recall curve, VOC2010+) or "11point" (the VOC2007 11-point metric).
_C.TEST.VOC_METRIC = "area"
# Draw OUTPUT_DIR/inference/<dataset>/pr_curves.png (precision-recall per class; needs matplotlib)
# after each evaluation. Off by default: with 80 classes the plot takes longer than the evaluation.
_C.TEST.PR_CURVES = False
# Half-precision inference: "" (float32, the default), "fp16" or "bf16". Autocast covers the
# backbone and the head's convolutions; scores, box decoding and post-processing (top-k, NMS) run
# in float32. "fp16" is a CUDA feature: on the CPU it falls back to bf16 with a warning. Used by
# tools/test_net.py, the evaluation during training, tools/visualize_detections.py, the Predictor
# and the PyTorch side of tools/export_onnx.py.
_C.TEST.AMP = ""
# Fold every FrozenBatchNorm2d of the backbone into the conv before it (a biased conv; the norm
# becomes an identity) in the inference-only model of tools/test_net.py, tools/visualize_detections.py,
# tools/export_onnx.py and the Predictor: 0-8 % faster CPU inference (BENCHMARKS.md section 9),
# detections equal up to float32 rounding (~1e-5 relative). The evaluation during training, which
# shares the model being trained, never folds. False keeps the unfolded model (bit-identical results).
_C.TEST.FOLD_FROZEN_BN = True
# Memory format of those same inference-only models: "auto" = channels-last (NHWC) on the CPU, where
# oneDNN's convolutions then skip their layout reorders (14-17 % faster inference, BENCHMARKS.md
# section 9; detections equal up to float32 rounding), the default layout elsewhere (not measured on
# a GPU yet); "channels_last" or "contiguous" force one. A model built channels-last
# (MODEL.CHANNELS_LAST True, or "auto" on) stays channels-last under "auto". Training and the
# evaluation during training are not affected.
_C.TEST.MEMORY_FORMAT = "auto"
# Batch-invariant inference (maskrcnn_benchmark/layers/padding_mask.py): each image of a padded batch
# sees only its own canvas (its size rounded up to DATALOADER.SIZE_DIVISIBILITY, what it gets alone):
# GroupNorm statistics over the canvas, zeros outside it wherever a conv reads. Its detections then
# equal its batch-1 detections whatever TEST.IMS_PER_BATCH or the number of GPUs (float32 rounding).
# A batch whose images all fill the padded tensor (batch 1, equal sizes) runs the plain model. False:
# the releases' behaviour (padding enters GroupNorm statistics and leaks into the canvas border).
# Used by test_net, the evaluation during training, the Predictor and the exports.
_C.TEST.BATCH_INVARIANT = True
# Test-time augmentation (maskrcnn_benchmark/engine/bbox_aug.py), the keys of the original ATSS /
# Dynamic ATSS releases. Used by tools/test_net.py, the evaluation during training and the visualiser.
_C.TEST.BBOX_AUG = CN()
# Run every test image through several views and merge their detections.
_C.TEST.BBOX_AUG.ENABLED = False
# Add the horizontal mirror of the test-size view (INPUT.MIN_SIZE_TEST / MAX_SIZE_TEST).
_C.TEST.BBOX_AUG.H_FLIP = False
# Extra views: shorter sides in px, e.g. (400, 600, 1000); the longer side is capped at MAX_SIZE.
_C.TEST.BBOX_AUG.SCALES = ()
# Cap on the longer side of the SCALES views, px.
_C.TEST.BBOX_AUG.MAX_SIZE = 4000
# Also mirror every SCALES view.
_C.TEST.BBOX_AUG.SCALE_H_FLIP = False
# Merge: False -> class-aware NMS at the head's NMS_TH; True -> MERGE_TYPE with VOTE_TH.
_C.TEST.BBOX_AUG.VOTE = False
# IoU threshold of a box-voting cluster, in (0, 1].
_C.TEST.BBOX_AUG.VOTE_TH = 0.66
# With VOTE: "vote" (score-weighted mean box of each cluster), "soft-vote" (vote, plus each other
# member kept with score * (1 - IoU with the cluster's best box) if >= the head's INFERENCE_TH) or "nms".
_C.TEST.BBOX_AUG.MERGE_TYPE = "vote"
# One [lo, hi] px per entry of SCALES (or empty: keep all): the view keeps boxes with
# lo^2 < w*h < hi^2 measured in its own (resized) frame, e.g. [[96, 10000], [0, 256]].
_C.TEST.BBOX_AUG.SCALE_RANGES = ()

# ---------------------------------------------------------------------------------------------
# Misc
# ---------------------------------------------------------------------------------------------
# Where checkpoints, logs and inference results go; a rerun with the same folder resumes.
_C.OUTPUT_DIR = "."
# Catalog of paths (python module path of the DatasetCatalog).
_C.PATHS_CATALOG = "maskrcnn_benchmark.config.paths_catalog"
# Random seed (-1: do not seed).
_C.SEED = 0
# Timeout in seconds of every collective operation between processes (distributed training /
# testing): a rank that waits longer for a stalled or dead process stops with an error naming
# itself and the operation, instead of hanging (torch's default is 30 minutes).
_C.DIST_TIMEOUT_S = 600
# Stall watchdog of training (maskrcnn_benchmark/utils/heartbeat.py): every rank writes a heartbeat
# to OUTPUT_DIR/.heartbeat/ every DIST_HEARTBEAT_PERIOD_S seconds (> 0) from a background thread.
# A rank silent for DIST_STALL_TIMEOUT_S seconds (stopped, frozen, dead) is reported as an error
# naming it and its last iteration, and so is a run where no rank finished a training step for that
# long; evaluation and checkpoint writing are exempt from the progress check (no false alarm).
# With the defaults a stalled rank is reported within ~2.5 minutes. 0 disables the watchdog.
_C.DIST_HEARTBEAT_PERIOD_S = 10.0
_C.DIST_STALL_TIMEOUT_S = 120
