"""Layers and compiled operators. The compiled ops load lazily: importing this package works
without the built extension; calling an op then raises ImportError naming the build command."""
from .box_iou import box_iou, elementwise_giou, elementwise_iou, pairwise_giou  # noqa: F401
from .nms import batched_nms, nms
from .sigmoid_focal_loss import SigmoidFocalLoss, sigmoid_focal_loss
from .scale import Scale  # noqa: E402,F401  (head helper)
from .batch_norm import FrozenBatchNorm2d, convert_sync_batchnorm, fold_frozen_batchnorm  # noqa: E402,F401  (backbone helper, SyncBN, inference fold)
from .dcn import DFConv2d, ModulatedDeformConv, deform_conv2d  # noqa: E402,F401  (DCN helper)
from .winograd import WinogradConv2d, convert_to_winograd, winograd_conv2d  # noqa: E402,F401  (MODEL.WINOGRAD)
