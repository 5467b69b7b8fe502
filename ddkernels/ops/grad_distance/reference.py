"""Reference gradient-matching distances: the original trainers' code, per class and per layer.

* ``"ours"``, ``"mse"``, ``"global_cos"``: VICO-UoE/DatasetCondensation utils.py ``match_loss`` with
  ``dis_metric`` ``'ours'`` (``distance_wb`` per tensor, summed), ``'mse'`` and ``'cos'``.
* ``"l1"``, ``"l1_mean"`` (and ``"mse"``): snu-mllab/Efficient-Dataset-Condensation condense.py ``dist``.

Plain autograd gives the backward. This is the ground truth every fused backend is tested against.
The accumulator keeps the inputs' dtype (DC starts from a float32 ``torch.tensor(0.0)``; for
float32 inputs that is the same thing).
"""
from __future__ import annotations

from typing import Sequence

import torch

EPS = 1e-6  # DC and IDC both add 1e-6 to the *product* of the two norms


def distance_wb(gwr: torch.Tensor, gws: torch.Tensor) -> torch.Tensor:
    """DC's per-tensor distance: one cosine per output channel / unit; 1-D tensors give 0."""
    shape = gwr.shape
    if len(shape) == 4:  # conv, out*in*h*w
        gwr = gwr.reshape(shape[0], shape[1] * shape[2] * shape[3])
        gws = gws.reshape(shape[0], shape[1] * shape[2] * shape[3])
    elif len(shape) == 3:  # layernorm, C*h*w
        gwr = gwr.reshape(shape[0], shape[1] * shape[2])
        gws = gws.reshape(shape[0], shape[1] * shape[2])
    elif len(shape) == 1:  # batchnorm/instancenorm/groupnorm, bias: DC returns a constant 0
        return torch.zeros((), dtype=gwr.dtype, device=gwr.device)
    return torch.sum(1 - torch.sum(gwr * gws, dim=-1)
                     / (torch.norm(gwr, dim=-1) * torch.norm(gws, dim=-1) + EPS))


def dist(x: torch.Tensor, y: torch.Tensor, method: str) -> torch.Tensor:
    """IDC's per-tensor distance (``x`` = real, ``y`` = syn)."""
    if method == "mse":
        return (x - y).pow(2).sum()
    if method == "l1":
        return (x - y).abs().sum()
    if method == "l1_mean":
        n_b = x.shape[0]
        # reshape(n_b, -1) as IDC, spelled out so that a parameter with no rows sums to 0
        return (x - y).abs().reshape(n_b, x.numel() // n_b if n_b else 0).mean(-1).sum()
    raise ValueError(method)


def match_loss(gw_syn: Sequence[torch.Tensor], gw_real: Sequence[torch.Tensor], metric: str) -> torch.Tensor:
    """One class: the distance between two lists of per-layer gradients, as the originals loop it."""
    if metric == "ours":
        dis = torch.zeros((), dtype=gw_syn[0].dtype, device=gw_syn[0].device)
        for gwr, gws in zip(gw_real, gw_syn):
            dis = dis + distance_wb(gwr, gws)
        return dis
    if metric in ("mse", "global_cos"):
        gw_real_vec = torch.cat([g.reshape(-1) for g in gw_real], dim=0)
        gw_syn_vec = torch.cat([g.reshape(-1) for g in gw_syn], dim=0)
        if metric == "mse":
            return torch.sum((gw_syn_vec - gw_real_vec) ** 2)
        return 1 - torch.sum(gw_real_vec * gw_syn_vec, dim=-1) / (
            torch.norm(gw_real_vec, dim=-1) * torch.norm(gw_syn_vec, dim=-1) + EPS)
    loss = None  # IDC's add_loss: sum of per-tensor distances
    for gr, gs in zip(gw_real, gw_syn):
        d = dist(gr, gs, metric)
        loss = d if loss is None else loss + d
    return loss


def grad_distance(g_syn: Sequence[torch.Tensor], g_real: Sequence[torch.Tensor], metric: str,
                  batched: bool = False) -> torch.Tensor:
    """Scalar for one class, or with ``batched`` a ``(K,)`` tensor: a Python loop over classes."""
    if not batched:
        return match_loss(g_syn, g_real, metric)
    k = g_syn[0].shape[0]
    if k == 0:  # no classes: an empty (0,) result, still in the graph of every input
        return sum(t.flatten(1).sum(1) for t in (*g_syn, *g_real))
    return torch.stack([match_loss([g[c] for g in g_syn], [g[c] for g in g_real], metric) for c in range(k)])


def grad_distance_eager(g_syn: Sequence[torch.Tensor], g_real: Sequence[torch.Tensor], metric: str) -> torch.Tensor:
    """The same distances for the batched layout ``(K, *param_shape)`` with every class at once:
    a few stacked ops per layer (``_foreach`` ops for the elementwise parts): the best eager form."""
    k = g_syn[0].shape[0]
    if metric == "ours":
        layers = [(s, r) for s, r in zip(g_syn, g_real) if s.dim() > 2]  # 1-D params contribute 0
        # distance_wb's rows: the first param dim for 2- to 4-D params, the last dim beyond that
        s2 = [s.reshape(k, -1, s.shape[-1]) if s.dim() > 5 else s.reshape(k, s.shape[1], -1) for s, _ in layers]
        r2 = [r.reshape(k, -1, r.shape[-1]) if r.dim() > 5 else r.reshape(k, r.shape[1], -1) for _, r in layers]
        dots = [d.sum(-1) for d in torch._foreach_mul(s2, r2)]
        ns = [torch.linalg.vector_norm(s, dim=-1) for s in s2]
        nr = [torch.linalg.vector_norm(r, dim=-1) for r in r2]
        cos = torch.cat([d / (a * b + EPS) for d, a, b in zip(dots, nr, ns)], dim=1)
        return (1 - cos).sum(1) if cos.shape[1] else g_syn[0].new_zeros(k)
    s = torch.cat([t.reshape(k, -1) for t in g_syn], dim=1)
    r = torch.cat([t.reshape(k, -1) for t in g_real], dim=1)
    if metric == "mse":
        return (s - r).pow(2).sum(1)
    if metric == "l1":
        return (s - r).abs().sum(1)
    if metric == "global_cos":
        return 1 - (s * r).sum(1) / (torch.linalg.vector_norm(r, dim=1) * torch.linalg.vector_norm(s, dim=1) + EPS)
    # l1_mean: per layer, rows = first parameter dim
    return sum((a - b).abs().reshape(k, a.shape[1], -1).mean(-1).sum(1) for a, b in zip(g_syn, g_real))
