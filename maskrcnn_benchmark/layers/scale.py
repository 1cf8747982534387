"""A learnable scalar multiplier (one per FPN level on the box branch of the dense heads)."""
import torch
from torch import nn

__all__ = ["Scale"]


class Scale(nn.Module):
    """``y = scale * x`` with a learnable scalar ``scale`` (parameter name ``scale``, shape [1])."""

    def __init__(self, init_value: float = 1.0):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor([float(init_value)]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale
