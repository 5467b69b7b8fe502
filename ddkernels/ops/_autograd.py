"""Autograd helpers shared by the fused ops: double backward by recomputation, empty results that
stay in the graph, the torch.func guard, and the forward-mode test."""
from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.autograd.forward_ad as fwAD


def forward_mode(*tensors: torch.Tensor | None) -> bool:
    """Whether any of ``tensors`` is a dual tensor (carries a forward-mode tangent). A Function with a
    ``jvp`` is one Dynamo cannot trace, so the ops keep their ``jvp`` on a subclass used only then."""
    if getattr(fwAD, "_current_level", 0) < 0:  # outside every dual_level: nothing can carry a tangent
        return False
    return any(t is not None and fwAD.unpack_dual(t).tangent is not None for t in tensors)


def recomputed_vjp(fn: Callable[..., torch.Tensor], inputs: Sequence[torch.Tensor | None], need: Sequence[bool],
                   grad_out: torch.Tensor) -> list[torch.Tensor | None]:
    """``grad_out``-weighted gradients of ``fn(*inputs)`` for the inputs flagged in ``need``, recorded
    in the autograd graph: a fused backward calls this when autograd asks it for a differentiable
    result (``create_graph=True``), so a second derivative is exact instead of silently lost.

    The inputs are fresh views of the saved tensors, so the result stays connected to them (and to
    ``grad_out``) and autograd can differentiate it once more; a flagged input that is a constant
    stand-in (requires no grad) becomes a leaf. Unused inputs get ``None`` (zero).
    """
    with torch.enable_grad():
        xs = [t if t is None else t.view_as(t) if n and t.requires_grad else t.detach().requires_grad_(n)
              for t, n in zip(inputs, need)]
        wanted = [x for x, n in zip(xs, need) if n]
        out = fn(*xs)
        if not out.requires_grad:  # a constant (e.g. "ours" over 1-D tensors only): zero gradients
            return [None] * len(need)
        grads = iter(torch.autograd.grad(out, wanted, grad_out, create_graph=True, allow_unused=True))
    return [next(grads) if n else None for n in need]


def empty_result(x: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """A zero-element result of ``shape`` taken from ``x`` (which has no elements either), so it
    carries ``x``'s autograd history like a computed one: PyTorch's own layers reject empty inputs."""
    return x.reshape(-1)[:0].reshape(tuple(shape))


def functorch_reasons() -> list[str]:
    """Why a fused backend cannot run inside a ``torch.func`` transform (``vmap``, ``grad``, ...).

    The fused Functions write gradients in the forward, keep per-call state on ``ctx`` and call C++
    / Triton kernels without batching rules, which functorch cannot transform; the reference
    backend is plain torch ops, so ``backend="auto"`` takes it there.
    """
    active = getattr(torch._C, "_are_functorch_transforms_active", None)
    if active is not None and active():
        return ["torch.func transforms (vmap, grad, jacrev, ...) are active: the fused kernels do not support "
                "them; use backend='reference' (or 'auto', which picks it)"]
    return []


def fused_extra(backends, extra: dict[str, list[str]] | None = None) -> dict[str, list[str]] | None:
    """``extra`` reasons for ``backends.select`` (an :class:`~ddkernels.dispatch.OpBackends`) with
    the torch.func reason added to every backend but the reference (``extra`` unchanged when there
    is nothing to add: the common, cheap case)."""
    why = functorch_reasons()
    if not why:
        return extra
    out = {name: list(reasons) for name, reasons in (extra or {}).items()}
    for name in backends.backends:
        if name != "reference":
            out[name] = out.get(name, []) + why
    return out


def _select(backends, backend: str, device: torch.device, dtype: torch.dtype, extra) -> str:
    return backends.select(backend, device, dtype, fused_extra(backends, extra))


# Under torch.compile the choice is a constant of the traced graph (Dynamo re-traces, and so
# re-selects, when a tensor's device or dtype changes): tracing into it would break the graph at
# the extension import and the environment lookups.
_select_traced = torch._dynamo.assume_constant_result(_select)


def select_backend(backends, backend: str, device: torch.device, dtype: torch.dtype,
                   extra: dict[str, list[str]] | None = None) -> str:
    """``backends.select`` for a public op, with the torch.func reason of :func:`fused_extra`;
    ``torch.compile(fullgraph=True)`` sees a constant."""
    if torch.compiler.is_compiling():
        return _select_traced(backends, backend, device, dtype, extra)
    return _select(backends, backend, device, dtype, extra)
