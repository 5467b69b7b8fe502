"""grad_distance: backend declarations, the autograd Function and the functional API."""
from __future__ import annotations

import math
from typing import Sequence

import torch

from ... import _ext, dispatch
from ..._checks import check_finite_enabled, check_same_device, check_tensor
from .._autocast import autocast_inputs
from .._dtypes import acc_dtype
from .._autograd import recomputed_vjp, select_backend
from . import reference
from .tables import total_rows

METRICS = ("ours", "mse", "l1", "l1_mean", "global_cos")

BACKENDS = dispatch.op_backends("grad_distance", cpu_dtypes=dispatch.FLOATS)


# --- cpu backend: C++ ops registered by ddkernels._C -------------------------------------------

def _cpu_forward(syn, real, metric):
    return torch.ops.ddkernels.grad_distance_fwd(syn, real, metric)


def _cpu_forward_grad(syn, real, metric, need_syn, need_real):
    return torch.ops.ddkernels.grad_distance_fwd_grad(syn, real, metric, need_syn, need_real)


def _cpu_backward(grad, syn, real, stats, metric, need_syn, need_real):
    return torch.ops.ddkernels.grad_distance_bwd(grad, syn, real, stats, metric, need_syn, need_real)


def _register_fakes() -> None:
    """Shape functions so torch.compile / FakeTensor tracing can see through the C++ ops."""

    @torch.library.register_fake("ddkernels::grad_distance_fwd")
    def _(syn, real, metric):
        k = syn[0].shape[0]  # statistics in the accumulation dtype
        return syn[0].new_empty(k), syn[0].new_empty(k, total_rows(t.shape[1:] for t in syn), 3,
                                                     dtype=acc_dtype(syn[0].dtype))

    @torch.library.register_fake("ddkernels::grad_distance_fwd_grad")
    def _(syn, real, metric, need_syn, need_real):
        k = syn[0].shape[0]
        return (syn[0].new_empty(k), syn[0].new_empty(k, total_rows(t.shape[1:] for t in syn), 3,
                                                      dtype=acc_dtype(syn[0].dtype)),
                [torch.empty_like(t) for t in syn] if need_syn else [],
                [torch.empty_like(t) for t in real] if need_real else [])

    @torch.library.register_fake("ddkernels::grad_distance_bwd")
    def _(grad, syn, real, stats, metric, need_syn, need_real):
        return ([torch.empty_like(t) for t in syn] if need_syn else [],
                [torch.empty_like(t) for t in real] if need_real else [])


if _ext.cpu_available()[0]:
    _register_fakes()


def _triton_forward(syn, real, metric):
    from .triton import grad_distance_forward
    return grad_distance_forward(syn, real, metric)


def _triton_backward(grad, syn, real, stats, metric, need_syn, need_real):
    from .triton import grad_distance_backward
    return grad_distance_backward(grad, syn, real, stats, metric, need_syn, need_real)


_KERNELS = {"cpu": (_cpu_forward, _cpu_backward), "triton": (_triton_forward, _triton_backward)}


def _triton_forward_grad(syn, real, metric, need_syn, need_real):
    from .triton import grad_distance_forward
    return grad_distance_forward(syn, real, metric, need_syn, need_real)


# Backends whose forward can also write the gradients, and the metrics they can do it for (global_cos
# needs every row's statistics before its first gradient).
_FUSED_GRAD = {"cpu": _cpu_forward_grad, "triton": _triton_forward_grad}
_FUSED_GRAD_METRICS = ("ours", "mse", "l1", "l1_mean")


class GradDistanceFunction(torch.autograd.Function):
    """All classes and layers in one kernel call each way. Inputs are ``n`` batched syn tensors
    followed by ``n`` batched real tensors, all ``(K, *param_shape)`` and contiguous.

    When an input needs a gradient, the forward (cpu and triton) writes it at upstream gradient 1
    while each row is still in cache, so the backward reads nothing: it hands the buffers over,
    scaled per class unless the upstream gradient is exactly 1, as every trainer's
    ``sum().backward()`` gives (the trick Liger-Kernel's fused cross-entropy uses; the check costs a
    device sync on GPUs). That is 3 passes over the data instead of 5, at the price of holding the
    gradient from forward to backward. The buffers are handed over once; a graph replayed with
    ``retain_graph=True`` recomputes from the saved inputs.

    The fused backward is first order: in gradient matching the second-order part runs inside the
    network's own autograd graph that produced ``g_syn``. When autograd asks for a differentiable
    gradient (``create_graph=True`` through this op) the backward recomputes the distance with the
    reference and differentiates it, so second derivatives are exact, never silently dropped.
    """

    @staticmethod
    def forward(ctx, metric: str, backend: str, n: int, *tensors: torch.Tensor) -> torch.Tensor:
        need = ctx.needs_input_grad[3:]
        need_syn, need_real = any(need[:n]), any(need[n:])
        syn, real = list(tensors[:n]), list(tensors[n:])
        ctx.pre = None
        if ((need_syn or need_real) and backend in _FUSED_GRAD and metric in _FUSED_GRAD_METRICS
                and not torch.compiler.is_compiling()):
            dist, stats, gs, gr = _FUSED_GRAD[backend](syn, real, metric, need_syn, need_real)
            ctx.pre = (gs, gr)
        else:
            dist, stats = _KERNELS[backend][0](syn, real, metric)
        ctx.save_for_backward(stats, *tensors)
        ctx.metric, ctx.backend, ctx.n, ctx.need = metric, backend, n, (need_syn, need_real)
        return dist

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        n, (need_syn, need_real) = ctx.n, ctx.need
        if torch.is_grad_enabled():  # create_graph=True: the result must itself be differentiable
            ctx.pre = None
            stats, *tensors = ctx.saved_tensors
            need = [need_syn] * n + [need_real] * n
            grads = recomputed_vjp(lambda *t: reference.grad_distance(t[:n], t[n:], ctx.metric, batched=True),
                                   tensors, need, grad)
            return (None, None, None, *grads)
        if ctx.pre is not None:
            gs, gr = ctx.pre
            ctx.pre = None
            if not bool((grad == 1).all()):
                for t in (*gs, *gr):
                    t.mul_(grad.view(-1, *[1] * (t.dim() - 1)))
        else:
            stats, *tensors = ctx.saved_tensors
            gs, gr = _KERNELS[ctx.backend][1](grad.contiguous(), tensors[:n], tensors[n:], stats, ctx.metric,
                                              need_syn, need_real)
        return (None, None, None, *(gs if need_syn else [None] * n), *(gr if need_real else [None] * n))


def _check_inputs(g_syn, g_real, metric, batched):
    # One lean pass: this runs on every matching step, and the fused op's point is low per-call cost.
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {', '.join(repr(m) for m in METRICS)}; got {metric!r}")
    for name, seq in (("g_syn", g_syn), ("g_real", g_real)):
        if isinstance(seq, torch.Tensor) or not isinstance(seq, Sequence):
            raise TypeError(f"{name} must be a list or tuple of per-layer tensors, got {type(seq).__name__}")
    if len(g_syn) != len(g_real):
        raise ValueError(f"g_syn and g_real must hold the same number of layers, got {len(g_syn)} and {len(g_real)}")
    if not g_syn:
        raise ValueError("g_syn and g_real must hold at least one tensor")
    first = check_tensor(g_syn[0], "g_syn[0]")
    device, dtype, lead = first.device, first.dtype, 2 if batched else 1
    k = first.shape[0] if first.dim() else None
    for i, (s, r) in enumerate(zip(g_syn, g_real)):
        if not (isinstance(s, torch.Tensor) and isinstance(r, torch.Tensor)):
            check_tensor(s, f"g_syn[{i}]")
            check_tensor(r, f"g_real[{i}]")
        if s.shape != r.shape:
            raise ValueError(f"layer {i}: g_syn[{i}] and g_real[{i}] must have the same shape, "
                             f"got {tuple(s.shape)} and {tuple(r.shape)}")
        for name, t in ((f"g_syn[{i}]", s), (f"g_real[{i}]", r)):
            if t.device != device:
                check_same_device("g_syn[0]", first, name, t)
            if t.dtype != dtype:
                raise TypeError(f"g_syn[0] and {name} must have the same dtype, got {dtype} and {t.dtype}")
        if s.dim() < lead:
            layout = "(K, *param_shape) with batched=True" if batched else "a parameter gradient"
            raise ValueError(f"g_syn[{i}] must be at least {lead}-D ({layout}), got shape {tuple(s.shape)}")
        if batched and s.shape[0] != k:
            raise ValueError(f"batched=True needs the same number of classes K in dim 0 of every tensor: "
                             f"g_syn[0] has K={k}, g_syn[{i}] has K={s.shape[0]}")
        param = s.shape[lead - 1:]
        if metric == "l1_mean" and len(param) >= 2 and param[0] and not math.prod(param[1:]):
            # IDC's mean over an empty row is nan; refuse instead of returning nan (or a kernel's 0).
            raise ValueError(f"metric 'l1_mean' averages each row (first parameter dim) of g_syn[{i}], but its "
                             f"parameter shape {tuple(param)} has rows of 0 elements, whose mean is undefined")
    if check_finite_enabled():
        for i, (s, r) in enumerate(zip(g_syn, g_real)):
            check_tensor(s, f"g_syn[{i}]")
            check_tensor(r, f"g_real[{i}]")


def grad_distance(
    g_syn: Sequence[torch.Tensor],
    g_real: Sequence[torch.Tensor],
    metric: str = "ours",
    *,
    batched: bool = False,
    backend: str = "auto",
) -> torch.Tensor:
    """Layer-wise gradient-matching distance (DC/DSA ``match_loss``, IDC ``dist``), all layers and
    classes in one fused call.

    Metrics (rows = first parameter dim, i.e. output channels / units):

    * ``"ours"`` (DC/DSA default, ``distance_wb``): per tensor Σ_rows [1 − ⟨s,r⟩ / (‖s‖·‖r‖ + 1e-6)],
      summed over tensors. Rows as DC's ``distance_wb`` cuts them: a 2-, 3- or 4-D tensor has one
      row per first-dim slice (output channel / unit), **1-D tensors contribute 0**, and a tensor
      of 5 or more dims (e.g. a Conv3d weight) is compared along its last dim only (one row per
      index of all the other dims), because ``distance_wb`` flattens only 4-D and 3-D tensors.
    * ``"mse"``: Σ (syn − real)² over all elements (a sum, as in DC and IDC).
    * ``"l1"``: Σ |syn − real|.
    * ``"l1_mean"`` (IDC): Σ_tensors Σ_rows mean_row |syn − real| (a 1-D tensor's rows are its
      elements); a parameter with rows of 0 elements (e.g. ``(3, 0)``) raises ``ValueError``: the
      mean of an empty row is undefined (IDC's code returns nan).
    * ``"global_cos"`` (DC's ``'cos'``): 1 − ⟨s,r⟩ / (‖s‖‖r‖ + 1e-6) over all tensors concatenated.

    Which layers take part is the caller's choice (IDC skips 1-D and 2-D tensors by default): the op
    computes over the tensors it is given.

    Args:
        g_syn: per-layer gradients on synthetic data (typically from ``autograd.grad(...,
            create_graph=True)``). Non-contiguous tensors are copied once for the fused backends.
        g_real: per-layer gradients on real data, same shapes (usually detached).
        metric: one of ``"ours"``, ``"mse"``, ``"l1"``, ``"l1_mean"``, ``"global_cos"``.
        batched: every tensor carries a leading class dimension ``K``; one distance per class.
        backend: ``"auto"``, ``"reference"``, ``"cpu"`` or ``"triton"``.

    Shapes:
        ``g_syn[i]``, ``g_real[i]``: ``param_shape_i``, or ``(K, *param_shape_i)`` with ``batched=True``.

    Returns:
        A scalar, or ``(K,)`` with ``batched=True``; differentiable in both ``g_syn`` and ``g_real``
        on every backend, twice (``create_graph=True``) included: the fused backends' second
        derivative runs through the reference.
    """
    amp = autocast_inputs("grad_distance", g_syn, g_real)
    if amp is not None:  # a loss: float32 under autocast, as mse_loss / cosine_similarity
        with torch.autocast(amp[0][0].device.type, enabled=False):
            return grad_distance(*amp, metric, batched=batched, backend=backend)
    _check_inputs(g_syn, g_real, metric, batched)
    name = select_backend(BACKENDS, backend, g_syn[0].device, g_syn[0].dtype)
    if name == "reference":
        return reference.grad_distance(g_syn, g_real, metric, batched)
    lead = 1 if batched else 0

    def lift(t):
        t = t.contiguous()
        if metric == "ours" and t.dim() - lead >= 5:  # DC's rows: the last dim (the kernels cut the first)
            t = t.view(*t.shape[:lead], math.prod(t.shape[lead:-1]), t.shape[-1])
        return t if batched else t.unsqueeze(0)

    tensors = [lift(t) for t in g_syn] + [lift(t) for t in g_real]
    out = GradDistanceFunction.apply(metric, name, len(g_syn), *tensors)
    return out if batched else out[0]


def stack_classes(per_class: Sequence[Sequence[torch.Tensor]]) -> list[torch.Tensor]:
    """Per-class gradient lists ``[[layer0, layer1, ...] for each class]`` -> the batched layout
    ``[(K, *layer0.shape), ...]``. One copy per layer (``torch.stack``), differentiable; a class
    list of different length raises."""
    if not per_class:
        raise ValueError("per_class must hold at least one class")
    n = len(per_class[0])
    for c, layers in enumerate(per_class):
        if len(layers) != n:
            raise ValueError(f"per_class[{c}] holds {len(layers)} layers, per_class[0] holds {n}")
    return [torch.stack([layers[i] for layers in per_class]) for i in range(n)]


__all__ = ["grad_distance", "stack_classes", "GradDistanceFunction", "BACKENDS", "METRICS"]
