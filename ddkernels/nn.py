"""``nn.Module`` wrappers of the public ops."""
from __future__ import annotations

import torch
from torch import nn

from .hallucinator import HallucinatorBank
from .latent import LatentDecoderBank
from .memory import AddressableMemory
from .ops.grad_distance import grad_distance
from .ops.multi_formation import multi_formation, multi_formation_targets
from .ops.norm_relu_pool import norm_relu_pool


class MultiFormation(nn.Module):
    """IDC multi-formation decode as a module; see :func:`ddkernels.multi_formation`.

    Args:
        factor: tiles per side.
        size: output ``(H, W)`` (int for square); default the stored size.
        multi: concatenate decodes for factors ``1..factor``.
        backend: passed to the op on every call.
    """

    def __init__(self, factor: int, size: int | tuple[int, int] | None = None, *, multi: bool = False,
                 backend: str = "auto"):
        super().__init__()
        self.factor, self.size, self.multi, self.backend = factor, size, multi, backend

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return multi_formation(x, self.factor, self.size, multi=self.multi, backend=self.backend)

    def targets(self, y: torch.Tensor) -> torch.Tensor:
        """Labels of :meth:`forward`'s output, tile-major."""
        return multi_formation_targets(y, self.factor, multi=self.multi)

    def extra_repr(self) -> str:
        return f"factor={self.factor}, size={self.size}, multi={self.multi}, backend={self.backend!r}"


class GradMatchLoss(nn.Module):
    """Gradient-matching distance as a loss module; see :func:`ddkernels.grad_distance`.

    Args:
        metric: ``"ours"``, ``"mse"``, ``"l1"``, ``"l1_mean"`` or ``"global_cos"``.
        batched: inputs carry a leading class dim ``K``; returns ``(K,)``.
        backend: passed to the op on every call.
    """

    def __init__(self, metric: str = "ours", *, batched: bool = False, backend: str = "auto"):
        super().__init__()
        self.metric, self.batched, self.backend = metric, batched, backend

    def forward(self, g_syn, g_real) -> torch.Tensor:
        return grad_distance(g_syn, g_real, self.metric, batched=self.batched, backend=self.backend)

    def extra_repr(self) -> str:
        return f"metric={self.metric!r}, batched={self.batched}, backend={self.backend!r}"


class NormReluPool(nn.Module):
    """ConvNet-3's block epilogue ``GroupNorm(C, C) → ReLU → AvgPool2d(2)`` as one module; see
    :func:`ddkernels.norm_relu_pool`. ``weight``/``bias`` start at 1/0, as ``GroupNorm``'s.

    Args:
        num_channels: ``C``.
        eps: added to the variance.
        pool: apply the 2×2 average pool.
        backend: passed to the op on every call.
    """

    def __init__(self, num_channels: int, eps: float = 1e-5, *, pool: bool = True, backend: str = "auto"):
        super().__init__()
        self.num_channels, self.eps, self.pool, self.backend = num_channels, eps, pool, backend
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return norm_relu_pool(x, self.weight, self.bias, self.eps, pool=self.pool, backend=self.backend)

    def extra_repr(self) -> str:
        return f"{self.num_channels}, eps={self.eps}, pool={self.pool}, backend={self.backend!r}"


__all__ = ["AddressableMemory", "GradMatchLoss", "HallucinatorBank", "LatentDecoderBank", "MultiFormation",
           "NormReluPool"]
