"""The gradient-matching core shared by DC, DSA and IDC (docs/spec.md §1a "Matching loss", §2a ``match_loss``).

For each class: the network's parameter gradients on real images (detached) and on synthetic images
(``create_graph=True``, so the distance backpropagates into the synthetic images); then one
:func:`ddkernels.grad_distance` call over all classes and layers at once (``batched=True``).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from ...ops.grad_distance import grad_distance, stack_classes

LAYERS = ("all", "weights", "conv")


def matched_params(net: torch.nn.Module, layers: str) -> list[torch.nn.Parameter]:
    """Parameters whose gradients are matched.

    ``"all"``: every parameter (DC with ``mse``/``global_cos``); ``"weights"``: tensors of 2 or more
    dims (DC ``ours``, where 1-D tensors contribute exactly 0, so skipping them changes nothing but
    the cost); ``"conv"``: 4-D conv weights only (IDC's default, ``--bias False --fc False``).
    """
    if layers not in LAYERS:
        raise ValueError(f"layers must be one of {LAYERS}, got {layers!r}")
    min_dim = {"all": 1, "weights": 2, "conv": 4}[layers]
    return [p for p in net.parameters() if p.dim() >= min_dim]


def class_gradients(net: torch.nn.Module, params: Sequence[torch.Tensor], x: torch.Tensor, label: int,
                    create_graph: bool) -> tuple[torch.Tensor, ...]:
    """∇_params CE(net(x), label) for a batch of one class."""
    y = torch.full((x.shape[0],), label, dtype=torch.long, device=x.device)
    return torch.autograd.grad(F.cross_entropy(net(x), y), params, create_graph=create_graph)


def gradient_match(net: torch.nn.Module, params: Sequence[torch.Tensor], real: Sequence[torch.Tensor],
                   syn: Sequence[torch.Tensor], classes: Sequence[int], metric: str, backend: str = "auto") -> torch.Tensor:
    """Per-class gradient-matching distances.

    Args:
        net: the network (its parameters are not updated here).
        params: the parameters to match (see :func:`matched_params`).
        real: per class, an (augmented, normalized) real batch ``(n_real, C, H, W)``.
        syn: per class, the synthetic batch, differentiable in the synthetic parameters.
        classes: the label of each entry.
        metric: a :func:`ddkernels.grad_distance` metric.
        backend: passed to :func:`ddkernels.grad_distance`.

    Returns:
        ``(K,)`` distances, differentiable in ``syn``.
    """
    g_real = [[g.detach() for g in class_gradients(net, params, x, c, False)] for x, c in zip(real, classes)]
    g_syn = [class_gradients(net, params, x, c, True) for x, c in zip(syn, classes)]
    return grad_distance(stack_classes(g_syn), stack_classes(g_real), metric, batched=True, backend=backend)


__all__ = ["LAYERS", "class_gradients", "gradient_match", "matched_params"]
