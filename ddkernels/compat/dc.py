"""VICO-UoE/DatasetCondensation ``utils.py``: ``distance_wb`` and ``match_loss`` (DC, DSA; DM and
MTT/HaBa forks carry the same functions), on :func:`ddkernels.grad_distance`.
"""
from __future__ import annotations

from typing import Sequence

import torch

from ..ops.grad_distance import grad_distance
from ._backend import resolve

DIS_METRICS = {"ours": "ours", "mse": "mse", "cos": "global_cos"}


def _rows(g: torch.Tensor) -> torch.Tensor:
    """``distance_wb``'s row layout: 4-D/3-D → (dim 0, rest), 2-D as is; ≥5-D (no branch in the
    original) takes cosines over the last dim, so rows are every leading index."""
    if g.dim() in (3, 4):
        return g.reshape(g.shape[0], -1)
    if g.dim() == 0:
        return g.reshape(1, 1)
    if g.dim() > 4:
        return g.reshape(-1, g.shape[-1])
    return g


def _check_pair(a, b, name_a: str, name_b: str) -> None:
    for name, t in ((name_a, a), (name_b, b)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if a.shape != b.shape:
        raise ValueError(f"{name_a} and {name_b} must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")


def distance_wb(gwr: torch.Tensor, gws: torch.Tensor, *, backend: str | None = None) -> torch.Tensor:
    """Per-row cosine distance of one parameter's gradients, as DatasetCondensation's ``distance_wb``.

    ``Σ_rows [1 − ⟨r, s⟩ / (‖r‖·‖s‖ + 1e-6)]`` with rows = output channels (conv weights flattened per
    output channel, linear weights as is). A 1-D gradient (bias, norm γ/β) gives the original's
    constant: a float32 zero on ``gwr``'s device, not connected to the graph.

    Args:
        gwr: gradient on real data.
        gws: gradient on synthetic data, same shape (usually with a graph to the synthetic images).
        backend: overrides the module-wide backend (:func:`ddkernels.compat.set_backend`).

    Returns:
        A scalar in the gradients' dtype, differentiable in both.
    """
    _check_pair(gwr, gws, "gwr", "gws")
    if gwr.dim() == 1:
        return torch.tensor(0, dtype=torch.float, device=gwr.device)
    return grad_distance([_rows(gws)], [_rows(gwr)], "ours", backend=resolve(backend))


def match_loss(gw_syn: Sequence[torch.Tensor], gw_real: Sequence[torch.Tensor], args, *,
               backend: str | None = None) -> torch.Tensor:
    """DatasetCondensation's ``match_loss(gw_syn, gw_real, args)``: every layer in one fused call.

    Reads ``args.dis_metric`` and ``args.device`` like the original:

    * ``'ours'``: Σ over layers of :func:`distance_wb` (1-D layers contribute 0). The original adds the
      layers into ``torch.tensor(0.0).to(args.device)`` in place, so the result is float32 on
      ``args.device`` whatever the gradients' dtype; so is this one. Difference kept: the original
      rounds to float32 after every layer, this sums the layers in the gradients' dtype and rounds
      once (identical for float32 gradients up to summation order: a few ulp).
    * ``'mse'``: Σ (syn − real)² over all layers, biases included.
    * ``'cos'``: one cosine distance over all layers concatenated.

    An unknown ``dis_metric`` raises ``ValueError`` (the original calls ``exit()``).

    Args:
        gw_syn: per-layer gradients on synthetic data (``torch.autograd.grad(..., create_graph=True)``).
        gw_real: per-layer gradients on real data, same shapes.
        args: any object with ``dis_metric`` and ``device`` attributes (the original's argparse namespace).
        backend: overrides the module-wide backend.

    Returns:
        A scalar, differentiable in ``gw_syn`` (and ``gw_real``).
    """
    metric = getattr(args, "dis_metric", None)
    if metric not in DIS_METRICS:
        raise ValueError(f"args.dis_metric must be one of {', '.join(map(repr, DIS_METRICS))} "
                         f"(DatasetCondensation match_loss), got {metric!r}")
    if len(gw_syn) != len(gw_real):
        raise ValueError(f"gw_syn and gw_real must hold the same number of layers, got {len(gw_syn)} and {len(gw_real)}")
    for i, (s, r) in enumerate(zip(gw_syn, gw_real)):
        _check_pair(s, r, f"gw_syn[{i}]", f"gw_real[{i}]")
    backend = resolve(backend)
    if metric != "ours":
        return grad_distance([g.reshape(-1) for g in gw_syn], [g.reshape(-1) for g in gw_real], DIS_METRICS[metric],
                             backend=backend)
    device = getattr(args, "device", None)
    # 1-D layers add the constant 0: leave them out of the kernel call.
    pairs = [(_rows(s), _rows(r)) for s, r in zip(gw_syn, gw_real) if r.dim() != 1]
    if not pairs:
        return torch.tensor(0.0, device=device)
    dis = grad_distance([s for s, _ in pairs], [r for _, r in pairs], "ours", backend=backend)
    return dis.to(device=device, dtype=torch.float32)


__all__ = ["distance_wb", "match_loss"]
