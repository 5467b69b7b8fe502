"""The reverse-mode gradient of an unrolled SGD / momentum-SGD student (MTT, HaBa on MTT, RTP).

The student takes ``T`` steps on a flat weight vector ``θ`` (``f(θ, x) -> logits``, loss
``CE(f(θ, x_t), y_t)``)::

    v_{t+1} = μ v_t + g_t,   g_t = ∇_θ CE(f(θ_t, x_t), y_t),   θ_{t+1} = θ_t − η v_{t+1},   v_0 = 0

(PyTorch's SGD; ``μ = 0`` is plain SGD, MTT's student). ``x_t`` is built from the stored tensors
(``inputs``: plain images, HaBa's bases and hallucinators, RTP's memory) by ``build(record_t)``,
where ``record_t = draw(t)`` holds every random choice of step ``t`` (minibatch indices, a
parameterization's draws, the augmentation's parameters), drawn once in the forward and replayed
exactly in the reverse. ``y_t`` are class indices or float ``(N, C)`` target distributions (the soft-target
cross-entropy; RTP's learned labels, a stored tensor the targets are built from being an input like the images).

**Forward** (:func:`unroll_forward`): no graph; the weights before every step go into one ``(T, P)``
buffer (on ``θ_0``'s device, or in pinned host memory with ``pinned=True``), plus one ``(T, P)``
buffer of the velocities ``v_{t+1}`` only when the gradient of ``η`` or ``μ`` is wanted under momentum
(plain SGD recomputes ``v_{t+1} = g_t`` in the reverse).

**Reverse** (:func:`unroll_reverse`), with ``a = ∂L/∂θ_{t+1}`` and ``c`` the adjoint of ``v_{t+1}``
(``c ← μc − ηa``): recompute step ``t`` from its weights and record, ``g_t`` with a graph, then one
mixed second-derivative (vector-Jacobian) product ``∂⟨g_t, c⟩/∂(θ_t, inputs)``;
``a += ∂⟨g_t, c⟩/∂θ_t``, ``η̄ −= ⟨a, v_{t+1}⟩``, ``μ̄ += ⟨c, v_t⟩``. Memory: the buffers plus one step's double-backward graph,
whatever ``T`` (autograd through the unroll keeps all ``T``). The gradient is the exact one, the
same as autograd's through the same unroll (tests/distill/methods/test_unroll.py, float64).

:class:`UnrolledSGD` wraps the pair as an ``autograd.Function`` (``θ_T`` differentiable in ``θ_0``,
``η``, ``μ`` and the inputs), so an objective's loss on ``θ_T`` backpropagates as usual;
:func:`autograd_unroll` is the same unroll with ``create_graph=True``, the reference.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

Number = float | torch.Tensor

#: hp ``unroll``: how TrajectoryMatching differentiates its student unroll
MODES = ("reverse", "autograd")


class FlatParams:
    """Evaluate ``net`` at a flat parameter vector ``θ`` (``P,``): the parameters are views into it,
    so one ``autograd.grad`` w.r.t. ``θ`` returns the whole flat gradient."""

    def __init__(self, net: nn.Module):
        self.net = net
        self.names = [n for n, _ in net.named_parameters()]
        self.shapes = [p.shape for _, p in net.named_parameters()]
        self.numels = [p.numel() for _, p in net.named_parameters()]

    def flat(self) -> torch.Tensor:
        return torch.cat([p.detach().reshape(-1) for p in self.net.parameters()])

    def __call__(self, theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        views = {n: t.view(s) for n, t, s in zip(self.names, theta.split(self.numels), self.shapes)}
        return functional_call(self.net, views, (x,))


def _value(x: Number) -> Number:
    return x.detach() if isinstance(x, torch.Tensor) else x


def _step_grad(f: Callable, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor, graph: bool) -> torch.Tensor:
    (g,) = torch.autograd.grad(F.cross_entropy(f(theta, x), y), theta, create_graph=graph)
    return g


@dataclass
class Tape:
    """What the forward keeps for the reverse: the records, the ``(T, P)`` weight buffer ``weights[t] =
    θ_t`` and, where needed, ``velocities[t] = v_{t+1}``."""

    f: Callable
    build: Callable[[Any], tuple[torch.Tensor, torch.Tensor]]
    lr: Number
    momentum: Number
    device: torch.device
    records: list = field(default_factory=list)
    weights: torch.Tensor | None = None
    velocities: torch.Tensor | None = None

    def buffer_bytes(self) -> int:
        return sum(b.numel() * b.element_size() for b in (self.weights, self.velocities) if b is not None)


def _buffer(steps: int, like: torch.Tensor, pinned: bool) -> torch.Tensor:
    # Pinned host memory lets the copies overlap the device's work; on a CPU run the host is the device.
    if pinned and like.device.type != "cpu":
        return torch.empty(steps, like.numel(), dtype=like.dtype, device="cpu", pin_memory=True)
    return torch.empty(steps, like.numel(), dtype=like.dtype, device=like.device)


def _check(steps: int, momentum: Number) -> None:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    if not isinstance(momentum, (int, float, torch.Tensor)):
        raise ValueError(f"momentum must be a float or a 0-d tensor, got {momentum!r}")


def unroll_forward(f: Callable, theta0: torch.Tensor, steps: int, draw: Callable[[int], Any],
                   build: Callable[[Any], tuple[torch.Tensor, torch.Tensor]], lr: Number, momentum: Number = 0.0,
                   *, pinned: bool = False, keep_velocities: bool = False) -> tuple[torch.Tensor, Tape]:
    """``steps`` of (momentum) SGD from ``θ_0`` without a graph (see the module doc).

    Args:
        f: ``f(θ, x) -> logits`` for a flat ``θ``.
        theta0: ``(P,)``.
        draw: ``draw(t) -> record``, every random choice of step ``t`` (called once, in order).
        build: ``build(record) -> (x, y)``; differentiable in the inputs when grad mode is on.
        lr, momentum: floats or 0-d tensors (their values are read; see :class:`UnrolledSGD`).
        pinned: the buffers in pinned host memory instead of ``θ_0``'s device.
        keep_velocities: keep ``v_{t+1}`` per step (needed for ``η``'s or ``μ``'s gradient when ``μ ≠ 0``).

    Returns:
        ``(θ_T, tape)``.
    """
    _check(steps, momentum)
    lr, momentum = _value(lr), _value(momentum)
    plain = not isinstance(momentum, torch.Tensor) and momentum == 0
    tape = Tape(f, build, lr, momentum, theta0.device, weights=_buffer(steps, theta0, pinned))
    if keep_velocities and not plain:
        tape.velocities = _buffer(steps, theta0, pinned)
    theta, buf = theta0.detach().clone(), None
    for t in range(steps):
        tape.weights[t].copy_(theta, non_blocking=True)
        rec = draw(t)
        tape.records.append(rec)
        with torch.no_grad():
            x, y = build(rec)
        with torch.enable_grad():
            g = _step_grad(f, theta.detach().requires_grad_(True), x, y, False)
        if plain:
            buf = g
        elif buf is None:
            buf = g.clone()  # PyTorch SGD: the first step's buffer is g itself (μ·0 + g)
        else:
            buf.mul_(momentum).add_(g)
        if tape.velocities is not None:
            tape.velocities[t].copy_(buf, non_blocking=True)
        if isinstance(lr, torch.Tensor):
            theta = theta - lr * buf
        else:
            theta.sub_(buf, alpha=lr)
    return theta, tape


@dataclass
class Grads:
    """The reverse pass's result: ``∂L/∂θ_0``, ``∂L/∂η`` and ``∂L/∂μ`` (``None`` where not asked)
    and one gradient per input (``None`` where the unroll does not depend on it)."""

    theta0: torch.Tensor
    lr: torch.Tensor | None
    momentum: torch.Tensor | None
    inputs: list[torch.Tensor | None]


def unroll_reverse(tape: Tape, theta_bar: torch.Tensor, inputs: Sequence[torch.Tensor], *, lr_grad: bool = False,
                   momentum_grad: bool = False) -> Grads:
    """The gradient of ``L`` through the unrolled steps, given ``θ̄_T = ∂L/∂θ_T`` (see the module doc).

    Args:
        tape: from :func:`unroll_forward`.
        inputs: tensors requiring grad that ``tape.build`` reads (the stored tensors).
        lr_grad, momentum_grad: also return ``∂L/∂η`` / ``∂L/∂μ`` (as 0-d tensors).
    """
    lr, mu = tape.lr, tape.momentum
    plain = not isinstance(mu, torch.Tensor) and mu == 0
    if (lr_grad or momentum_grad) and not plain and tape.velocities is None:
        raise ValueError("lr_grad/momentum_grad under momentum need the velocities: "
                         "unroll_forward(keep_velocities=True)")
    inputs = list(inputs)
    for i, p in enumerate(inputs):
        if not p.requires_grad:
            raise ValueError(f"inputs[{i}] does not require grad (the reverse differentiates every input)")
    dev = tape.device
    a = theta_bar.detach().clone()
    c = torch.zeros_like(a)
    lr_bar = torch.zeros((), dtype=a.dtype, device=dev) if lr_grad else None
    mu_bar = torch.zeros((), dtype=a.dtype, device=dev) if momentum_grad else None
    bars: list[torch.Tensor | None] = [None] * len(inputs)
    for t in reversed(range(len(tape.records))):
        # Adjoint of v_{t+1} (θ_{t+1} = θ_t − η v_{t+1} and v_{t+2} = μ v_{t+1} + g_{t+1}).
        if isinstance(lr, torch.Tensor) or not isinstance(mu, (int, float)):
            c = c * mu - a * lr
        else:
            c.mul_(mu).add_(a, alpha=-lr)
        th = tape.weights[t].to(dev, non_blocking=True).clone().requires_grad_(True)
        with torch.enable_grad():
            x, y = tape.build(tape.records[t])
            g = _step_grad(tape.f, th, x, y, True)
        if lr_bar is not None:
            lr_bar -= torch.dot(a, g.detach() if plain else tape.velocities[t].to(dev))
        if mu_bar is not None and t > 0:  # v_0 = 0
            mu_bar += torch.dot(c, tape.velocities[t - 1].to(dev))
        h = torch.autograd.grad(g, [th, *inputs], grad_outputs=c, allow_unused=True)
        a += h[0]
        for i, hi in enumerate(h[1:]):
            if hi is not None:
                bars[i] = hi if bars[i] is None else bars[i] + hi
    return Grads(a, lr_bar, mu_bar, bars)


class UnrolledSGD(torch.autograd.Function):
    """``θ_T = UnrolledSGD.apply(spec, θ_0, η, μ, *inputs)``: the forward of :func:`unroll_forward`,
    the backward of :func:`unroll_reverse`. ``spec = (f, steps, draw, build, pinned)``; ``η``/``μ`` are
    floats or 0-d tensors (a gradient for those that require one); ``inputs`` are the tensors
    ``build`` reads, each requiring grad (a gradient for each)."""

    @staticmethod
    def forward(ctx, spec, theta0, lr, momentum, *inputs):
        f, steps, draw, build, pinned = spec
        grads_of = [isinstance(v, torch.Tensor) and v.requires_grad for v in (lr, momentum)]
        theta, tape = unroll_forward(f, theta0, steps, draw, build, lr, momentum, pinned=pinned,
                                     keep_velocities=any(grads_of))
        ctx.tape, ctx.grads_of, ctx.inputs = tape, grads_of, inputs
        return theta

    @staticmethod
    def backward(ctx, theta_bar):
        lr_grad, mu_grad = ctx.grads_of
        r = unroll_reverse(ctx.tape, theta_bar, ctx.inputs, lr_grad=lr_grad, momentum_grad=mu_grad)
        ctx.tape = None  # frees the buffers once the gradient is out
        return (None, r.theta0, r.lr, r.momentum, *r.inputs)


def unrolled_sgd(f: Callable, theta0: torch.Tensor, steps: int, draw: Callable[[int], Any],
                 build: Callable[[Any], tuple[torch.Tensor, torch.Tensor]], lr: Number, momentum: Number = 0.0,
                 inputs: Sequence[torch.Tensor] = (), *, pinned: bool = False) -> torch.Tensor:
    """``θ_T`` of the unroll, differentiable by the reverse pass (see :class:`UnrolledSGD`)."""
    return UnrolledSGD.apply((f, steps, draw, build, pinned), theta0, lr, momentum,
                             *[p for p in inputs if p.requires_grad])


def autograd_unroll(f: Callable, theta0: torch.Tensor, steps: int, draw: Callable[[int], Any],
                    build: Callable[[Any], tuple[torch.Tensor, torch.Tensor]], lr: Number,
                    momentum: Number = 0.0) -> torch.Tensor:
    """The same unroll with ``create_graph=True``: every step's graph stays alive (memory ∝ ``steps``);
    the reference the reverse pass is tested against, and hp ``unroll="autograd"``."""
    _check(steps, momentum)
    theta = theta0 if theta0.requires_grad else theta0.clone().requires_grad_(True)
    buf = None
    for t in range(steps):
        x, y = build(draw(t))
        g = _step_grad(f, theta, x, y, True)
        if isinstance(momentum, (int, float)) and momentum == 0:
            buf = g
        else:
            buf = g if buf is None else momentum * buf + g
        theta = theta - lr * buf
    return theta


__all__ = ["FlatParams", "Grads", "MODES", "Tape", "UnrolledSGD", "autograd_unroll", "unroll_forward",
           "unroll_reverse", "unrolled_sgd"]
