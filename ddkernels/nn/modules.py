"""``nn.Module`` wrappers of the public ops, and the decode plan IDC's bounded multi-formation uses."""
from __future__ import annotations

import torch
from torch import nn

from ..ops.grad_distance import grad_distance
from ..ops.affine_crop import affine_crop, crop_grid
from ..ops.multi_formation import multi_formation, multi_formation_targets
from ..ops.norm_relu_pool import norm_relu_pool


def bound_plan(n: int, factor: int, bound: int) -> list[tuple[int, int, int]]:
    """IDC's ``decode_zoom_bound`` split of a class's ``n`` stored images.

    Factors are tried from ``factor`` down to 1; at factor ``f > 1`` the next
    ``k = min(room // f², left)`` images decode at ``f``, where ``left`` counts the images not yet
    placed and ``room = bound − decoded so far − left`` (IDC's rule: it reserves one output per
    image left, so the class never exceeds ``bound`` while ``n <= bound``); factor 1 takes the
    rest. IDC's ``k`` goes negative when ``n > bound``; here it is then 0 (everything at factor 1).

    Returns:
        ``[(f, start, stop), …]``: images ``start:stop`` of the class decode at factor ``f``
        (empty ranges left out), in IDC's order.
    """
    plan, start, done = [], 0, 0
    for f in range(factor, 0, -1):
        left = n - start
        k = left if f == 1 else max(0, min((bound - done - left) // (f * f), left))
        if k:
            plan.append((f, start, start + k))
        start, done = start + k, done + k * f * f
        if start == n:
            break
    return plan


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


class AffineCrop(nn.Module):
    """Learnable multi-formation: ``T`` windows per stored image as a parameter, decoded with
    :func:`ddkernels.affine_crop`. :meth:`grid` starts them at IDC's ``factor × factor`` tiles.

    Args:
        theta: initial windows ``(N, T, 4)`` = (top, left, height, width) in stored-image pixels.
        size: output ``(H, W)`` (int for square); default the stored size.
        pad: the value read outside the image.
        learnable: whether ``theta`` is an ``nn.Parameter`` (else a buffer).
        backend: passed to the op on every call.
    """

    def __init__(self, theta: torch.Tensor, size: int | tuple[int, int] | None = None, *, pad: float = 0.5,
                 learnable: bool = True, backend: str = "auto"):
        super().__init__()
        theta = theta.detach().clone()
        if learnable:
            self.theta = nn.Parameter(theta)
        else:
            self.register_buffer("theta", theta)
        self.size, self.pad, self.backend = size, pad, backend

    @classmethod
    def grid(cls, n: int, h: int, w: int, factor: int, **kw) -> "AffineCrop":
        """Windows for ``n`` stored ``h × w`` images at IDC's tile grid (the fixed decode, to start from)."""
        return cls(crop_grid(h, w, factor, n), **kw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return affine_crop(x, self.theta, self.size, pad=self.pad, backend=self.backend)

    def targets(self, y: torch.Tensor) -> torch.Tensor:
        """Labels of :meth:`forward`'s output, tile-major."""
        return y.repeat(self.theta.shape[1], *([1] * (y.dim() - 1)))

    def extra_repr(self) -> str:
        return f"windows={tuple(self.theta.shape)}, size={self.size}, pad={self.pad}, backend={self.backend!r}"


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


__all__ = ["AffineCrop", "GradMatchLoss", "MultiFormation", "NormReluPool", "bound_plan"]
