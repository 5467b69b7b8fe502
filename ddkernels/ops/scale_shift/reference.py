"""Reference scale-shift: HaBa's hallucinator modulation written out, with plain autograd.

Huage001/DatasetFactorization, utils.py ``StyleTranslator.forward``: ``dec(scale * enc(x) + shift)``
with ``scale``/``shift`` of shape ``(1, 3, H-2, W-2)`` and no normalization. The official code
applies one hallucinator at a time; the product over all hallucinators is a loop over them, which
is what :func:`scale_shift` does. ``normalize=True`` is the AdaIN-style reading of the paper:
instance normalization over ``(h, w)`` (biased variance, ``eps`` inside the square root) before
the affine map. This is the ground truth every fused backend is tested against.
"""
from __future__ import annotations

import torch


def instance_norm(x: torch.Tensor, eps: float) -> torch.Tensor:
    """Normalize every ``(.., c)`` plane of ``x (..., C, h, w)`` over its ``(h, w)`` pixels."""
    mean = x.mean(dim=(-2, -1), keepdim=True)
    var = x.var(dim=(-2, -1), unbiased=False, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps)


def _modulate(x, scale, shift, normalize, eps):
    return scale * (instance_norm(x, eps) if normalize else x) + shift


def scale_shift(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, index: torch.Tensor | None = None,
                normalize: bool = False, eps: float = 1e-5) -> torch.Tensor:
    """Product mode (``index=None``): ``x (Hn, B, C, h, w)``, one hallucinator per leading row, as
    the official code would run them (a loop). Sampled mode: ``x (B, C, h, w)``, sample ``b`` uses
    hallucinator ``index[b]``. ``scale``/``shift`` are ``(Hn, C, h, w)`` or ``(Hn, C, 1, 1)``."""
    if index is None:
        return torch.stack([_modulate(x[k], scale[k], shift[k], normalize, eps) for k in range(x.shape[0])])
    return _modulate(x, scale[index], shift[index], normalize, eps)


def scale_shift_eager(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor,
                      normalize: bool = False, eps: float = 1e-5) -> torch.Tensor:
    """Product mode as one broadcast expression (the best eager formulation, for benchmarks)."""
    if normalize:
        x = instance_norm(x, eps)
    return torch.addcmul(shift.unsqueeze(1), scale.unsqueeze(1), x)
