"""Optimizer and learning-rate schedule."""
from .build import get_param_groups, make_lr_scheduler, make_optimizer, scale_lr_to_batch  # noqa: F401
from .ema import ModelEMA  # noqa: F401
from .lr_scheduler import WarmupMultiStepLR, warmup_multistep_factor  # noqa: F401
