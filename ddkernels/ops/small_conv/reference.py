"""Reference small convolutions: PyTorch's own ``F.conv2d`` / ``F.conv_transpose2d`` (cuDNN on GPU)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def small_conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, padding: int,
                 groups: int) -> torch.Tensor:
    return F.conv2d(x, weight, bias, padding=padding, groups=groups)


def small_conv_transpose2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                           groups: int) -> torch.Tensor:
    return F.conv_transpose2d(x, weight, bias, groups=groups)
