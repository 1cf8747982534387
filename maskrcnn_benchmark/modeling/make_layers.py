"""Small layer factories shared by the backbone, the FPN and the heads (no cfg access here)."""
from typing import Callable

from torch import nn


def get_group_gn(num_channels: int, dim_per_gp: int = -1, num_groups: int = 32) -> int:
    """Number of GroupNorm groups for ``num_channels``: ``num_channels // dim_per_gp`` when
    ``dim_per_gp > 0``, else ``num_groups``. Raises ValueError when it does not divide evenly."""
    if dim_per_gp > 0:
        if num_channels % dim_per_gp != 0:
            raise ValueError(f"GroupNorm: {num_channels} channels are not divisible by "
                             f"DIM_PER_GP={dim_per_gp}")
        return num_channels // dim_per_gp
    if num_groups <= 0 or num_channels % num_groups != 0:
        raise ValueError(f"GroupNorm: {num_channels} channels are not divisible by "
                         f"NUM_GROUPS={num_groups}")
    return num_groups


def group_norm(out_channels: int, affine: bool = True, divisor: int = 1, dim_per_gp: int = -1,
               num_groups: int = 32, eps: float = 1e-5) -> nn.GroupNorm:
    """``nn.GroupNorm`` over ``out_channels`` (maskrcnn-benchmark's ``group_norm`` with the
    MODEL.GROUP_NORM.* values passed explicitly). ``divisor`` divides both the group size and the
    group count (used for narrower layers)."""
    if dim_per_gp > 0:
        dim_per_gp = dim_per_gp // divisor
    num_groups = num_groups // divisor
    return nn.GroupNorm(get_group_gn(out_channels, dim_per_gp, num_groups), out_channels, eps, affine)


def conv_with_kaiming_uniform(use_gn: bool = False, use_relu: bool = False, gn_dim_per_gp: int = -1,
                              gn_num_groups: int = 32, gn_eps: float = 1e-5) -> Callable[..., nn.Module]:
    """Return ``make_conv(in_channels, out_channels, kernel_size, stride=1, dilation=1)``.

    The conv is "same"-padded (``dilation * (kernel_size - 1) // 2``), initialised with
    ``kaiming_uniform_(a=1)`` and a zero bias; with ``use_gn`` it has no bias and is followed by a
    GroupNorm, with ``use_relu`` by a ReLU. A bare conv is returned when there is nothing to add,
    otherwise ``nn.Sequential(conv, [gn], [relu])`` (parameter names ``<name>.0.weight``,
    ``<name>.1.weight`` as in the original checkpoints).
    """

    def make_conv(in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                  dilation: int = 1) -> nn.Module:
        conv = nn.Conv2d(in_channels, out_channels, kernel_size=kernel_size, stride=stride,
                         padding=dilation * (kernel_size - 1) // 2, dilation=dilation,
                         bias=not use_gn)
        nn.init.kaiming_uniform_(conv.weight, a=1)
        if not use_gn:
            nn.init.constant_(conv.bias, 0)
        modules = [conv]
        if use_gn:
            modules.append(group_norm(out_channels, dim_per_gp=gn_dim_per_gp,
                                      num_groups=gn_num_groups, eps=gn_eps))
        if use_relu:
            modules.append(nn.ReLU(inplace=True))
        return nn.Sequential(*modules) if len(modules) > 1 else conv

    return make_conv
