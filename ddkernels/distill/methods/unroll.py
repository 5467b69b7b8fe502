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
(``c ← μc − ηa``): recompute step ``t`` from its weights and record, then one mixed second-derivative
product ``∂⟨g_t, c⟩/∂(θ_t, inputs)``; ``a += ∂⟨g_t, c⟩/∂θ_t``, ``η̄ −= ⟨a, v_{t+1}⟩``,
``μ̄ += ⟨c, v_t⟩``.
Memory: the buffers plus one step's graph, whatever ``T`` (autograd through the unroll keeps all
``T``). The gradient is the exact one, the same as autograd's through the same unroll
(tests/distill/methods/test_unroll.py, float64).

The product (``product``): ``"forward"`` (default) takes it reverse over forward: the scalar
``⟨g_t, c⟩ = d/dε CE(f(θ_t + εc, x_t), y_t)`` is the logits' forward-mode tangent along ``c``
contracted with ``∇_z CE``, and one backward of that scalar gives both terms. Per conv layer that is
8 convolution passes (forward: the primal and the tangent's two; backward: five) where
``"backward"`` — ``g_t`` with a graph, then the double backward, as autograd through the unroll does
it — takes 9 (forward, two backward, six double backward), so the recompute costs less than
autograd's own step. Under plain SGD the tangent is ``a`` (``c = −ηa``), which also gives
``⟨a, g_t⟩`` for ``η̄`` without ``g_t``. A network with an op that has no forward-mode formula falls
back to ``"backward"`` with a warning.

Cost: autograd's (one forward and create-graph backward per step, then the double backward) plus
the forward's graph-free gradient per step, less what the forward-mode product saves. The last step
is built with its graph in the forward and that graph kept for the reverse (``keep=1``,
:func:`unrolled_sgd`'s default: the reverse's first step holds it anyway, so the peak is the same);
each further kept step would hold one more step's graph.
With ``θ_0`` not requiring grad, the reverse's last step (``t = 0``) differentiates the inputs only.

:class:`UnrolledSGD` wraps the pair as an ``autograd.Function`` (``θ_T`` differentiable in ``θ_0``,
``η``, ``μ`` and the inputs), so an objective's loss on ``θ_T`` backpropagates as usual;
:func:`autograd_unroll` is the same unroll with ``create_graph=True``, the reference.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

Number = float | torch.Tensor

#: hp ``unroll``: how TrajectoryMatching differentiates its student unroll
MODES = ("reverse", "autograd")
#: how :func:`unroll_reverse` takes each step's second-derivative product (see the module doc)
PRODUCTS = ("forward", "backward")


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


def _directional(f: Callable, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
                 tangent: torch.Tensor) -> torch.Tensor:
    """``⟨∇_θ CE(f(θ, x), y), tangent⟩`` as a scalar differentiable in ``θ`` and ``x``: the logits'
    forward-mode tangent along ``tangent``, contracted with ``∇_z CE`` (which keeps the loss's own forward
    mode out of it)."""
    with fwAD.dual_level():
        z, zt = fwAD.unpack_dual(f(fwAD.make_dual(theta, tangent), x))
    (gz,) = torch.autograd.grad(F.cross_entropy(z, y), z, create_graph=True)
    return (gz * zt).sum() if zt is not None else (gz * 0).sum()


def check_product(product: str, name: str = "product") -> None:
    """``product`` is one of :data:`PRODUCTS` (``name``: what the caller calls it, e.g. an hp)."""
    if product not in PRODUCTS:
        raise ValueError(f"{name} must be one of {PRODUCTS}, got {product!r}")


def _no_forward_mode(err: Exception) -> bool:
    """Whether ``err`` is PyTorch saying an op (or a custom Function without ``jvp``) has no forward mode."""
    msg = str(err)
    return (isinstance(err, NotImplementedError) and "jvp" in msg) or "forward AD" in msg


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
    #: ``{t: (θ_t, g_t)}`` for the last ``keep`` steps: ``g_t`` with its graph (built by the forward, used
    #: once by the reverse instead of a recompute)
    kept: dict = field(default_factory=dict)

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
                   *, pinned: bool = False, keep_velocities: bool = False,
                   keep: int = 0) -> tuple[torch.Tensor, Tape]:
    """``steps`` of (momentum) SGD from ``θ_0`` without a graph (see the module doc).

    Args:
        f: ``f(θ, x) -> logits`` for a flat ``θ``.
        theta0: ``(P,)``.
        draw: ``draw(t) -> record``, every random choice of step ``t`` (called once, in order).
        build: ``build(record) -> (x, y)``; differentiable in the inputs when grad mode is on.
        lr, momentum: floats or 0-d tensors (their values are read; see :class:`UnrolledSGD`).
        pinned: the buffers in pinned host memory instead of ``θ_0``'s device.
        keep_velocities: keep ``v_{t+1}`` per step (needed for ``η``'s or ``μ``'s gradient when ``μ ≠ 0``).
        keep: build the last ``keep`` steps with their double-backward graph and keep it for
            :func:`unroll_reverse`, which then skips their recompute. ``keep=1`` costs no peak memory
            when the reverse follows (its first step holds that graph anyway); each further step holds
            one more step's graph. ``0`` for a forward that no reverse follows.

    Returns:
        ``(θ_T, tape)``.
    """
    _check(steps, momentum)
    if isinstance(keep, bool) or not isinstance(keep, int) or keep < 0:
        raise ValueError(f"keep must be a non-negative int, got {keep!r}")
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
        if t >= steps - keep:
            with torch.enable_grad():
                # A copy: theta is updated in place below, and later rows of the buffer are written (a view
                # of it would share their version counter).
                th = theta.clone().requires_grad_(True)
                x, y = build(rec)
                g_graph = _step_grad(f, th, x, y, True)
            tape.kept[t] = (th, g_graph)
            g = g_graph.detach()
        else:
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

    theta0: torch.Tensor | None
    lr: torch.Tensor | None
    momentum: torch.Tensor | None
    inputs: list[torch.Tensor | None]


def unroll_reverse(tape: Tape, theta_bar: torch.Tensor, inputs: Sequence[torch.Tensor], *, lr_grad: bool = False,
                   momentum_grad: bool = False, theta_grad: bool = True, product: str = "forward") -> Grads:
    """The gradient of ``L`` through the unrolled steps, given ``θ̄_T = ∂L/∂θ_T`` (see the module doc).

    Args:
        tape: from :func:`unroll_forward` (its kept graphs are used up).
        inputs: tensors requiring grad that ``tape.build`` reads (the stored tensors).
        lr_grad, momentum_grad: also return ``∂L/∂η`` / ``∂L/∂μ`` (as 0-d tensors).
        theta_grad: also return ``∂L/∂θ_0`` (``False`` spares the last step's weight terms).
        product: ``"forward"`` (reverse over forward mode) or ``"backward"`` (double backward): how each
            recomputed step's second-derivative product is taken; the same gradient either way.
    """
    check_product(product)
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
        g = s = None  # g_t with its graph, or s = ⟨g_t, a⟩ (plain SGD) / ⟨g_t, c⟩ in forward mode
        if t in tape.kept:
            th, g = tape.kept.pop(t)
        else:
            # A view of the buffer row where it lives on the device (nothing writes to it any more); a copy
            # for forward mode, where a view's tangent would be one of the whole (T, P) buffer.
            th = tape.weights[t].to(dev, non_blocking=True)
            th = (th.clone() if product == "forward" and th._base is not None else th.detach()).requires_grad_(True)
            with torch.enable_grad():
                x, y = tape.build(tape.records[t])
                if product == "forward":
                    try:
                        s = _directional(tape.f, th, x, y, a if plain else c)
                    except (NotImplementedError, RuntimeError) as err:
                        if not _no_forward_mode(err):
                            raise
                        warnings.warn(f"unroll_reverse: the student has no forward mode ({err}); "
                                      "taking the double backward (product='backward') instead", stacklevel=2)
                        product = "backward"
                if s is None:
                    g = _step_grad(tape.f, th, x, y, True)
        if lr_bar is not None:
            if plain:
                lr_bar -= s.detach() if s is not None else torch.dot(a, g.detach())
            else:
                lr_bar -= torch.dot(a, tape.velocities[t].to(dev))
        if mu_bar is not None and t > 0:  # v_0 = 0
            mu_bar += torch.dot(c, tape.velocities[t - 1].to(dev))
        wrt = [th, *inputs] if t > 0 or theta_grad else inputs
        if not wrt:
            break  # θ_0's own terms are not wanted and nothing else is left
        if s is None:
            h = torch.autograd.grad(g, wrt, grad_outputs=c, allow_unused=True)
        else:  # ∂⟨g_t, c⟩ = −η ∂⟨g_t, a⟩ under plain SGD
            seed = torch.as_tensor(-lr, dtype=s.dtype, device=s.device) if plain else None
            h = torch.autograd.grad(s, wrt, grad_outputs=seed, allow_unused=True)
        if len(wrt) > len(inputs):
            a += h[0]
        for i, hi in enumerate(h[len(wrt) - len(inputs):]):
            if hi is not None:
                bars[i] = hi if bars[i] is None else bars[i] + hi
    tape.kept.clear()
    return Grads(a if theta_grad else None, lr_bar, mu_bar, bars)


class UnrolledSGD(torch.autograd.Function):
    """``θ_T = UnrolledSGD.apply(spec, θ_0, η, μ, *inputs)``: the forward of :func:`unroll_forward`,
    the backward of :func:`unroll_reverse`. ``spec = (f, steps, draw, build, pinned, keep, product)``; ``η``/``μ``
    are floats or 0-d tensors (a gradient for those that require one); ``inputs`` are the tensors
    ``build`` reads, each requiring grad (a gradient for each)."""

    @staticmethod
    def forward(ctx, spec, theta0, lr, momentum, *inputs):
        f, steps, draw, build, pinned, keep, product = spec
        grads_of = [isinstance(v, torch.Tensor) and v.requires_grad for v in (lr, momentum)]
        theta, tape = unroll_forward(f, theta0, steps, draw, build, lr, momentum, pinned=pinned,
                                     keep_velocities=any(grads_of), keep=keep)
        ctx.tape, ctx.grads_of, ctx.inputs, ctx.product = tape, grads_of, inputs, product
        return theta

    @staticmethod
    def backward(ctx, theta_bar):
        lr_grad, mu_grad = ctx.grads_of
        r = unroll_reverse(ctx.tape, theta_bar, ctx.inputs, lr_grad=lr_grad, momentum_grad=mu_grad,
                           theta_grad=ctx.needs_input_grad[1], product=ctx.product)
        ctx.tape = None  # frees the buffers once the gradient is out
        return (None, r.theta0, r.lr, r.momentum, *r.inputs)


def unrolled_sgd(f: Callable, theta0: torch.Tensor, steps: int, draw: Callable[[int], Any],
                 build: Callable[[Any], tuple[torch.Tensor, torch.Tensor]], lr: Number, momentum: Number = 0.0,
                 inputs: Sequence[torch.Tensor] = (), *, pinned: bool = False, keep: int = 1,
                 product: str = "forward") -> torch.Tensor:
    """``θ_T`` of the unroll, differentiable by the reverse pass (see :class:`UnrolledSGD`); ``keep``: the
    last steps whose graph the forward keeps (:func:`unroll_forward`; 1, the last, costs no peak memory);
    ``product``: how the reverse takes each step's second-derivative product (:func:`unroll_reverse`)."""
    check_product(product)
    return UnrolledSGD.apply((f, steps, draw, build, pinned, keep, product), theta0, lr, momentum,
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


__all__ = ["FlatParams", "Grads", "MODES", "PRODUCTS", "Tape", "UnrolledSGD", "autograd_unroll", "check_product",
           "unroll_forward", "unroll_reverse", "unrolled_sgd"]
