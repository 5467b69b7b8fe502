"""snu-mllab/Efficient-Dataset-Condensation ``condense.py``: ``dist`` and the ``Synthesizer`` decodes
(``decode_zoom``, ``decode_zoom_multi``, ``decode_zoom_bound``), on :func:`ddkernels.grad_distance`
and :func:`ddkernels.multi_formation`.

The decodes are methods of IDC's ``Synthesizer`` whose output size is the stored size
(``self.resize = nn.Upsample(size=self.size, mode='bilinear')``); here they are functions taking
``size`` (default: the stored size). :func:`ddkernels.compat.patch` swaps the methods of a
``Synthesizer`` class in place, passing ``self.size``.
"""
from __future__ import annotations

import torch

from ..nn.modules import bound_plan
from ..ops.grad_distance import grad_distance
from ..ops.multi_formation import multi_formation, multi_formation_targets
from ._backend import resolve
from .dc import _check_pair

METHODS = {"mse": "mse", "l1": "l1", "l1_mean": "l1_mean", "cos": "ours"}


def dist(x: torch.Tensor, y: torch.Tensor, method: str = "mse", *, backend: str | None = None) -> torch.Tensor:
    """IDC's distance between two gradients (or features) of one layer.

    * ``'mse'``: Σ (x − y)² (a sum); ``'l1'``: Σ |x − y|;
    * ``'l1_mean'``: Σ over rows (dim 0) of the row's mean |x − y|;
    * ``'cos'``: Σ over rows (dim 0) of 1 − ⟨x, y⟩ / (‖x‖·‖y‖ + 1e-6). Unlike DC's ``distance_wb``,
      a 1-D tensor is not skipped: each element is a row (IDC's ``matchloss`` skips 1-D layers
      itself unless ``--bias``).

    An unknown ``method`` raises ``ValueError`` (the original fails with ``UnboundLocalError``).

    Args:
        x: real-data gradient. y: synthetic-data gradient, same shape.
        method: ``'mse'``, ``'l1'``, ``'l1_mean'`` or ``'cos'``.
        backend: overrides the module-wide backend.

    Returns:
        A scalar, differentiable in both.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(map(repr, METHODS))} (IDC dist), got {method!r}")
    _check_pair(x, y, "x", "y")
    if x.dim() == 0:
        if method in ("l1_mean", "cos"):
            raise ValueError(f"x must have a leading row dimension for method {method!r}, got a 0-d tensor")
        x, y = x.reshape(1), y.reshape(1)
    if method == "cos":
        x, y = x.reshape(x.shape[0], -1), y.reshape(y.shape[0], -1)
    return grad_distance([y], [x], METHODS[method], backend=resolve(backend))


def _check_square(img) -> None:
    if not isinstance(img, torch.Tensor) or img.dim() != 4:
        raise ValueError(f"img must be a 4-D tensor (N, C, h, h), got "
                         f"{tuple(img.shape) if isinstance(img, torch.Tensor) else type(img).__name__}")
    if img.shape[-1] != img.shape[-2]:
        # IDC reads the side from the last dim only and cuts the same ranges in both directions.
        raise ValueError(f"img must be square (IDC's decode_zoom reads h from the last dim), got shape "
                         f"{tuple(img.shape)}; for non-square images call ddkernels.multi_formation directly")


def decode_zoom(img: torch.Tensor, target: torch.Tensor, factor: int, size=None, *,
                backend: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """IDC's ``Synthesizer.decode_zoom``: each image → ``factor²`` tiles resized to ``size``.

    Pads right/bottom with 0.5 to a multiple of ``factor``, cuts tiles of side ``ceil(h/factor)``
    row-major, stacks them tile-major (row ``k·N + b`` is tile ``k`` of image ``b``) and resizes
    bilinearly (``align_corners=False``).

    Args:
        img: ``(N, C, h, h)`` stored images. target: ``(N, ...)`` their labels (any dtype).
        factor: tiles per side. size: output ``(H, W)`` (the ``Synthesizer``'s ``self.size``);
            default the stored size.
        backend: overrides the module-wide backend.

    Returns:
        ``(data, targets)``: ``(factor²·N, C, H, W)`` and ``cat([target] * factor²)``.
    """
    _check_square(img)
    return (multi_formation(img, factor, size, backend=resolve(backend)),
            multi_formation_targets(target, factor))


def decode_zoom_multi(img: torch.Tensor, target: torch.Tensor, factor_max: int, size=None, *,
                      backend: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """IDC's ``decode_zoom_multi``: :func:`decode_zoom` for every factor ``1..factor_max``, concatenated
    (ordered by factor, then tile, then image)."""
    _check_square(img)
    return (multi_formation(img, factor_max, size, multi=True, backend=resolve(backend)),
            multi_formation_targets(target, factor_max, multi=True))


def decode_zoom_bound(img: torch.Tensor, target: torch.Tensor, factor_max: int, bound: int = 128, size=None, *,
                      backend: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """IDC's ``decode_zoom_bound``: the largest factors first, on as many images as keep the decoded
    count within ``bound`` (the images not yet decoded each reserve one slot), the rest at factor 1
    (:func:`ddkernels.distill.methods.idc.bound_plan`; where the original's count goes negative, with more
    than ``bound`` images, this decodes them all at factor 1)."""
    _check_square(img)
    parts = [decode_zoom(img[a:b], target[a:b], f, size, backend=backend)
             for f, a, b in bound_plan(len(img), factor_max, bound)]
    return torch.cat([d for d, _ in parts]), torch.cat([t for _, t in parts])


__all__ = ["decode_zoom", "decode_zoom_bound", "decode_zoom_multi", "dist"]
