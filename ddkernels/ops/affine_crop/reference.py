"""Reference affine crop: every tile of a stored image is a crop window resized bilinearly, written
with dense interpolation matrices so that plain autograd differentiates it w.r.t. both the image and
the windows. This is the ground truth every fused backend is tested against.

A window ``(top, left, height, width)`` (stored-image pixels, real-valued) is resampled like
``F.interpolate(mode='bilinear', align_corners=False)`` resizes a crop: per axis, output ``o`` of ``n``
reads source coordinate ``s = top + (height / n)·(o + 0.5) − 0.5`` clamped to the window
``[top, top + max(height − 1, 0)]``, blended between ``floor(s)`` and ``floor(s) + 1``; taps outside the image
read ``pad``. With integer windows on IDC's tile grid this is IDC's decode (pad 0.5, f×f tiles,
``nn.Upsample``), snu-mllab/Efficient-Dataset-Condensation, condense.py ``Synthesizer.decode_zoom``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def axis_taps(start: torch.Tensor, length: torch.Tensor, out: int, size: int):
    """One axis of every window: ``start``/``length`` ``(N, T)`` -> for each output coordinate the
    lower tap (index into the image padded by one pixel on each side, so ``0`` and ``size + 1`` are
    the pad value), the blend weight of the upper tap, differentiable in ``start`` and ``length``."""
    o = torch.arange(out, dtype=start.dtype, device=start.device) + 0.5
    scale = (length / out).unsqueeze(-1)
    s = start.unsqueeze(-1) + (scale * o - 0.5)
    # The window [start, start + max(length - 1, 0)] is never empty, so the taps are monotone in o.
    lo, hi = start.unsqueeze(-1), (start + (length - 1).clamp_min(0)).unsqueeze(-1)
    s = torch.where(s < lo, lo.expand_as(s), torch.where(s > hi, hi.expand_as(s), s))
    i0 = torch.floor(s)
    lam = s - i0  # floor has no gradient: lam carries d/ds
    i0 = i0.detach().to(torch.int64)
    return (i0 + 1).clamp(0, size + 1), (i0 + 2).clamp(0, size + 1), lam


def interp_matrix(start: torch.Tensor, length: torch.Tensor, out: int, size: int) -> torch.Tensor:
    """``(N, T, out, size + 2)``: row ``o`` holds the two blend weights of output ``o`` over the padded axis."""
    i0, i1, lam = axis_taps(start, length, out, size)
    m = torch.zeros(*i0.shape, size + 2, dtype=lam.dtype, device=lam.device)
    m = m.scatter_add(-1, i0.unsqueeze(-1), (1 - lam).unsqueeze(-1))
    return m.scatter_add(-1, i1.unsqueeze(-1), lam.unsqueeze(-1))


def affine_crop(x: torch.Tensor, theta: torch.Tensor, size: tuple[int, int], pad: float) -> torch.Tensor:
    """x ``(N, C, h, w)``, theta ``(N, T, 4)`` = (top, left, height, width) -> ``(T·N, C, *size)``;
    output row ``k·N + b`` is window ``k`` of image ``b`` (tile-major, as multi_formation)."""
    n, c, h, w = x.shape
    t = theta.shape[1]
    xp = F.pad(x, (1, 1, 1, 1), value=pad)
    ry = interp_matrix(theta[..., 0], theta[..., 2], size[0], h)  # (N, T, H, h+2)
    rx = interp_matrix(theta[..., 1], theta[..., 3], size[1], w)  # (N, T, W, w+2)
    y = torch.einsum("ntyi,ncij,ntxj->tncyx", ry, xp, rx)
    return y.reshape(t * n, c, *size)


def grid_theta(h: int, w: int, factor: int, n: int = 1, dtype=torch.float32, device=None) -> torch.Tensor:
    """IDC's f×f tile grid as windows ``(n, f², 4)``, tiles row-major: tile ``(i, j)`` is
    ``(i·⌈h/f⌉, j·⌈w/f⌉, ⌈h/f⌉, ⌈w/f⌉)`` (windows past the image read the padding, as IDC's)."""
    sh, sw = -(-h // factor), -(-w // factor)
    i, j = torch.meshgrid(torch.arange(factor), torch.arange(factor), indexing="ij")
    th = torch.stack([i.flatten() * sh, j.flatten() * sw, torch.full((factor * factor,), sh),
                      torch.full((factor * factor,), sw)], -1)
    return th.to(dtype=dtype, device=device).expand(n, -1, -1).contiguous()


def affine_crop_eager(x: torch.Tensor, theta: torch.Tensor, size: tuple[int, int], pad: float) -> torch.Tensor:
    """The same crop as four gathers of the padded images and one blend (the best eager formulation;
    autograd scatters the image's gradient and differentiates the blend weights for the windows')."""
    n, c, h, w = x.shape
    t = theta.shape[1]
    xp = F.pad(x, (1, 1, 1, 1), value=pad).permute(0, 2, 3, 1)  # (N, h+2, w+2, C)
    r0, r1, ly = axis_taps(theta[..., 0], theta[..., 2], size[0], h)  # (N, T, H)
    c0, c1, lx = axis_taps(theta[..., 1], theta[..., 3], size[1], w)  # (N, T, W)
    b = torch.arange(n, device=x.device).view(n, 1, 1, 1)
    r0, r1, ly = r0.unsqueeze(-1), r1.unsqueeze(-1), ly.unsqueeze(-1).unsqueeze(-1)
    c0, c1, lx = c0.unsqueeze(-2), c1.unsqueeze(-2), lx.unsqueeze(-2).unsqueeze(-1)
    top = xp[b, r0, c0] * (1 - lx) + xp[b, r0, c1] * lx  # (N, T, H, W, C)
    bottom = xp[b, r1, c0] * (1 - lx) + xp[b, r1, c1] * lx
    y = top * (1 - ly) + bottom * ly
    return y.permute(1, 0, 4, 2, 3).reshape(t * n, c, *size)
