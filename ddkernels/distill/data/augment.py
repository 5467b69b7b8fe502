"""Augmentations of the framework: DSA (the core's :mod:`ddkernels.augment`, re-exported here), IDC's
CutMix, and VICO's non-differentiable DC evaluation augmentation.

docs/spec.md §0.3 (VICO ``DiffAugment``), §1a (IDC ``DiffAug``, CutMix); :func:`dc_augment` is
VICO's per-image augmentation that DC's evaluation uses on MNIST (§0.5).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ...augment import (GROUPS, MODES, TRANSFORMS, DiffAugment, DSAConfig, Params, _device_of, apply_transform,
                        sample_transform, strategy_for)


def cutmix(x: torch.Tensor, y: torch.Tensor, *, beta: float = 1.0, prob: float = 0.5,
           generator: torch.Generator | None = None):
    """IDC's CutMix: with probability ``prob``, paste a box of area ≈ 1−λ (λ ~ Beta(β, β)) from a
    random permutation partner into every image.

    Returns:
        ``(x_mixed, y, y_partner, ratio)`` where ``ratio`` is the exact kept-area fraction (1.0 and
        ``y_partner = y`` when no mixing happened). Use :func:`cutmix_loss`.
    """
    dev = _device_of(generator)
    if float(torch.rand(1, generator=generator, device=dev)) >= prob or beta <= 0:
        return x, y, y, 1.0
    if beta == 1.0:
        lam = float(torch.rand(1, generator=generator, device=dev))  # Beta(1, 1) is uniform
    else:
        lam = float(torch.distributions.Beta(beta, beta).sample())  # global RNG: torch's Beta takes no generator
    h, w = x.shape[2], x.shape[3]
    cut = math.sqrt(1.0 - lam)
    ch, cw = int(h * cut), int(w * cut)
    cy, cx = (int(torch.randint(s, (1,), generator=generator, device=dev)) for s in (h, w))
    y1, y2 = min(max(cy - ch // 2, 0), h), min(max(cy + ch // 2, 0), h)
    x1, x2 = min(max(cx - cw // 2, 0), w), min(max(cx + cw // 2, 0), w)
    perm = torch.randperm(x.shape[0], generator=generator, device=dev).to(x.device)
    mask = torch.ones(1, 1, h, w, dtype=x.dtype, device=x.device)
    mask[..., y1:y2, x1:x2] = 0
    # Out of place (the original writes into its input), so it stays differentiable in x.
    mixed = x * mask + x[perm] * (1 - mask)
    return mixed, y, y[perm], 1.0 - (y2 - y1) * (x2 - x1) / (h * w)


def cutmix_loss(logits: torch.Tensor, y: torch.Tensor, y_partner: torch.Tensor, ratio: float) -> torch.Tensor:
    """``ratio·CE(y) + (1−ratio)·CE(y_partner)``."""
    loss = F.cross_entropy(logits, y) * ratio
    return loss + F.cross_entropy(logits, y_partner) * (1.0 - ratio) if ratio < 1.0 else loss


DC_AUG_OPS = ("crop", "scale", "rotate", "noise")


@dataclass(frozen=True)
class DCAugConfig:
    """VICO ``get_daparam`` constants for DC's (non-DSA) evaluation augmentation."""

    crop: int = 4
    scale: float = 0.2
    rotate: int = 45
    noise: float = 0.001


def dc_augment(x: torch.Tensor, strategy: str = "crop_scale_rotate", *, config: DCAugConfig = DCAugConfig(),
               generator: torch.Generator | None = None) -> torch.Tensor:
    """VICO ``utils.augment``: DC's evaluation augmentation (MNIST only, docs/spec.md §0.5), not differentiable.

    Each image gets one op drawn uniformly from ``strategy`` (ops of :data:`DC_AUG_OPS` joined by
    ``_``): ``crop`` pads by ``config.crop`` pixels with the batch's channel means and takes a
    window at offsets in ``[0, 2·crop)``; ``scale`` resizes (nearest) to ``int(u·H) × int(v·H)``,
    ``u, v ~ U(1 ± scale)``, centred on a zero canvas, then centre-crops; ``rotate`` turns by an
    integer angle in ``[−rotate, rotate)`` with ``scipy.ndimage.rotate`` (cubic spline, canvas
    grown, outside filled with the mean of the channel means), then centre-crops; ``noise`` adds
    ``noise·N(0, 1)``.

    Args:
        x: ``(N, C, H, W)`` normalized images (not modified).
        strategy: e.g. ``"crop_scale_rotate"`` (VICO's MNIST setting).
        generator: every draw comes from it.

    Returns:
        A new ``(N, C, H, W)`` tensor.
    """
    ops = strategy.split("_")
    bad = [o for o in ops if o not in DC_AUG_OPS]
    if bad or not strategy:
        raise ValueError(f"strategy {strategy!r}: ops must be {'/'.join(DC_AUG_OPS)} joined by '_'")
    n, c, h, w = x.shape
    cfg, g = config, generator
    out = x.detach().clone()
    fill = out.mean(dim=(0, 2, 3))  # VICO computes the channel means once per batch, before any op
    dev = _device_of(g)
    choice = torch.randint(len(ops), (n,), generator=g, device=dev)
    for i in range(n):
        op = ops[int(choice[i])]
        if op == "crop":
            p = cfg.crop
            canvas = fill.view(c, 1, 1).expand(c, h + 2 * p, w + 2 * p).clone()
            canvas[:, p:p + h, p:p + w] = out[i]
            r, q = (int(v) for v in torch.randint(2 * p, (2,), generator=g, device=dev))
            out[i] = canvas[:, r:r + h, q:q + w]
        elif op == "scale":
            # VICO takes both new sides from the image height
            hh, ww = (int(float(u) * h) for u in (1 - cfg.scale + 2 * cfg.scale * torch.rand(2, generator=g, device=dev)))
            m = max(hh, ww, h, w)
            canvas = out.new_zeros(c, m, m)
            r, q = (m - hh) // 2, (m - ww) // 2
            canvas[:, r:r + hh, q:q + ww] = F.interpolate(out[i:i + 1], size=(hh, ww), mode="nearest")[0]
            r, q = (m - h) // 2, (m - w) // 2
            out[i] = canvas[:, r:r + h, q:q + w]
        elif op == "rotate":
            from scipy.ndimage import rotate

            angle = int(torch.randint(-cfg.rotate, cfg.rotate, (1,), generator=g, device=dev))
            im = rotate(out[i].cpu().numpy(), angle=angle, axes=(-2, -1), cval=float(fill.mean()))
            r, q = (im.shape[-2] - h) // 2, (im.shape[-1] - w) // 2
            out[i] = torch.from_numpy(im[:, r:r + h, q:q + w]).to(out)
        else:
            out[i] += cfg.noise * torch.randn(c, h, w, generator=g, device=dev).to(out)
    return out


__all__ = ["DCAugConfig", "DC_AUG_OPS", "DSAConfig", "DiffAugment", "GROUPS", "MODES", "Params", "TRANSFORMS",
           "apply_transform", "cutmix", "cutmix_loss", "dc_augment", "sample_transform", "strategy_for"]
