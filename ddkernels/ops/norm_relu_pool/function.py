"""norm_relu_pool: backend declarations, the autograd Functions and the functional API.

ConvNet-3's block epilogue ``AvgPool2d(2)(ReLU(GroupNorm(C, C)(x)))`` (docs/spec.md §0.1/§0.2) in one pass
per (n, c) plane forward and two L1-resident passes backward; only ``x`` and the per-plane
statistics are saved. The first-order backward is itself an autograd Function
(:class:`NormReluPoolBackward`), so gradient matching's ``create_graph=True`` keeps the fused
kernel on the way down; its own backward (the double backward) is the closed form of
:func:`reference.double_backward` — a C++ kernel on CPU (two L1-resident passes per plane), torch
ops elsewhere and whenever autograd must differentiate it once more (third order). Dual inputs (forward
mode, the unrolled trainers' reverse-over-forward product) go through :class:`NormReluPoolDual`, whose
tangent is that double backward's ``grad_out`` term (:class:`NormReluPoolTangent` on CPU), reverse mode
through it included.
"""
from __future__ import annotations

import torch

from ... import _ext, dispatch
from ..._checks import check_same_device, check_tensor
from .._autocast import HALF, autocast_inputs
from .._dtypes import acc_dtype
from .._autograd import forward_mode, select_backend
from . import reference

BACKENDS = dispatch.op_backends("norm_relu_pool", cpu_dtypes=dispatch.FLOATS)


# The C++ kernels take half x (computed in float32) with float32 or half weight/bias; mean and
# rstd are in the accumulation dtype, the parameter gradients in the parameters' dtype.
def _cpu_forward(x, weight, bias, eps, pool):
    return torch.ops.ddkernels.norm_relu_pool_fwd(x, weight, bias, eps, pool)


def _cpu_backward(grad_out, x, weight, bias, mean, rstd, pool, need_x, need_wb):
    return torch.ops.ddkernels.norm_relu_pool_bwd(grad_out, x, weight, bias, mean, rstd, pool, need_x, need_wb)


def _cpu_double_backward(grad_out, x, weight, bias, mean, rstd, pool, ggx, ggw, ggb, need):
    return torch.ops.ddkernels.norm_relu_pool_bwd2(grad_out, x, weight, bias, mean, rstd, pool, ggx, ggw, ggb, *need)


def _register_fakes() -> None:
    """Shape functions so torch.compile / FakeTensor tracing can see through the C++ ops."""

    @torch.library.register_fake("ddkernels::norm_relu_pool_fwd")
    def _(x, weight, bias, eps, pool):
        n, c, h, w = x.shape
        stats = x.new_empty(n, c, dtype=acc_dtype(x.dtype))
        return x.new_empty(n, c, h // 2 if pool else h, w // 2 if pool else w), stats, stats.new_empty(n, c)

    @torch.library.register_fake("ddkernels::norm_relu_pool_bwd")
    def _(grad_out, x, weight, bias, mean, rstd, pool, need_x, need_wb):
        return (x.new_empty(x.shape) if need_x else x.new_empty(0),
                weight.new_empty(weight.shape) if need_wb else x.new_empty(0),
                weight.new_empty(weight.shape) if need_wb else x.new_empty(0))

    @torch.library.register_fake("ddkernels::norm_relu_pool_bwd2")
    def _(grad_out, x, weight, bias, mean, rstd, pool, ggx, ggw, ggb, need_go, need_x, need_w):
        return (grad_out.new_empty(grad_out.shape) if need_go else x.new_empty(0),
                x.new_empty(x.shape) if need_x else x.new_empty(0),
                weight.new_empty(weight.shape) if need_w else x.new_empty(0))


if _ext.cpu_available()[0]:
    _register_fakes()


def _triton_forward(*args):
    from .triton import norm_relu_pool_forward
    return norm_relu_pool_forward(*args)


def _triton_backward(*args):
    from .triton import norm_relu_pool_backward
    return norm_relu_pool_backward(*args)


_KERNELS = {"cpu": (_cpu_forward, _cpu_backward), "triton": (_triton_forward, _triton_backward)}


def _forward(ctx, x, weight, bias, eps: float, pool: bool, backend: str, dual: bool) -> torch.Tensor:
    out, mean, rstd = _KERNELS[backend][0](x, weight, bias, eps, pool)
    ctx.save_for_backward(x, weight, bias, mean, rstd)
    if dual:
        ctx.save_for_forward(x, weight, bias, mean, rstd)
    ctx.eps, ctx.pool, ctx.backend = eps, pool, backend
    return out


class NormReluPoolFunction(torch.autograd.Function):
    """The fused block for the kernel backends: x (N, C, H, W) contiguous, weight/bias (C,).
    Saves x, weight, bias and the per-plane mean/rstd."""

    @staticmethod
    def forward(ctx, x, weight, bias, eps: float, pool: bool, backend: str):
        return _forward(ctx, x, weight, bias, eps, pool, backend, dual=False)

    @staticmethod
    def backward(ctx, grad_out):
        x, weight, bias, mean, rstd = ctx.saved_tensors
        need_x = ctx.needs_input_grad[0]
        need_wb = ctx.needs_input_grad[1] or ctx.needs_input_grad[2]
        gx, gw, gb = NormReluPoolBackward.apply(grad_out, x, weight, bias, mean, rstd, ctx.eps, ctx.pool,
                                                ctx.backend, need_x, need_wb)
        return (gx if need_x else None, gw if ctx.needs_input_grad[1] else None,
                gb if ctx.needs_input_grad[2] else None, None, None, None)


class NormReluPoolDual(NormReluPoolFunction):
    """:class:`NormReluPoolFunction` with forward mode, used when an input is a dual tensor (Dynamo cannot
    trace a Function with a ``jvp``, so the plain one has none)."""

    @staticmethod
    def forward(ctx, x, weight, bias, eps: float, pool: bool, backend: str):
        return _forward(ctx, x, weight, bias, eps, pool, backend, dual=True)

    @staticmethod
    def jvp(ctx, tx, tw, tb, *_):
        """The tangent ``J·(tx, tw, tb)``, itself differentiable, so reverse mode can run through it
        (reverse over forward, the unrolled trainers' reverse pass)."""
        x, weight, bias, mean, rstd = ctx.saved_tensors
        if ctx.backend != "cpu":  # the closed form in torch ops (its grad_out term does not read grad_out)
            zero = x.new_zeros(_out_shape(x, ctx.pool))
            return reference.double_backward(zero, x, weight, bias, ctx.eps, ctx.pool, tx, tw, tb)[0]
        return NormReluPoolTangent.apply(x, weight, bias, mean, rstd, tx, tw, tb, ctx.pool)


class NormReluPoolBackward(torch.autograd.Function):
    """First-order gradients of the block (the fused kernel), differentiable in closed form
    (:func:`reference.double_backward`) for ``create_graph=True``."""

    @staticmethod
    def forward(ctx, grad_out, x, weight, bias, mean, rstd, eps: float, pool: bool, backend: str,
                need_x: bool, need_wb: bool):
        # Autograd may hand over an expanded/strided gradient; the kernels read it densely.
        grad_out = grad_out.contiguous()
        grads = _KERNELS[backend][1](grad_out, x, weight, bias, mean, rstd, pool, need_x, need_wb)
        ctx.save_for_backward(grad_out, x, weight, bias, mean, rstd)
        ctx.eps, ctx.pool, ctx.backend = eps, pool, backend
        ctx.set_materialize_grads(False)  # unused outputs stay None: no zero terms in the double backward
        return grads

    @staticmethod
    def backward(ctx, ggx, ggw, ggb):
        grad_out, x, weight, bias, mean, rstd = ctx.saved_tensors
        if ctx.backend == "cpu" and not torch.is_grad_enabled():
            # The usual case (the meta-gradient's backward, no third derivative): the C++ closed form.
            need = ctx.needs_input_grad[:3]
            ggx, ggw, ggb = (None if g is None else g.contiguous() for g in (ggx, ggw, ggb))
            g_go, g_x, g_w = _cpu_double_backward(grad_out, x, weight, bias, mean, rstd, ctx.pool, ggx, ggw, ggb, need)
            gg = (g_go if need[0] else None, g_x if need[1] else None, g_w if need[2] else None, None)
        else:
            # create_graph=True once more (third order), or the GPU: the same closed form in torch ops.
            gg = reference.double_backward(grad_out, x, weight, bias, ctx.eps, ctx.pool, ggx, ggw, ggb)
        return (*gg, None, None, None, None, None, None, None)


def _out_shape(x: torch.Tensor, pool: bool) -> tuple[int, ...]:
    n, c, h, w = x.shape
    return (n, c, h // 2, w // 2) if pool else (n, c, h, w)


class NormReluPoolTangent(torch.autograd.Function):
    """The block's tangent ``J(x, γ)·(tx, tγ, tβ)`` on the CPU kernels (``NormReluPoolFunction.jvp``):
    the double-backward kernel's ``grad_out`` term. Its backward — the reverse of forward mode — is two
    kernels: ``Jᵀ·ḡ`` (the first-order backward) for the tangents and the double backward's mixed terms
    ``∂⟨ḡ, J·t⟩/∂(x, γ)`` for the primals (``β`` reaches ``J`` through the ReLU mask only: zero)."""

    @staticmethod
    def forward(ctx, x, weight, bias, mean, rstd, tx, tw, tb, pool: bool):
        tx, tw, tb = (None if t is None else t.contiguous() for t in (tx, tw, tb))
        zero = x.new_zeros(_out_shape(x, pool))
        out = _cpu_double_backward(zero, x, weight, bias, mean, rstd, pool, tx, tw, tb, (True, False, False))[0]
        ctx.save_for_backward(x, weight, bias, mean, rstd, tx, tw, tb)
        ctx.pool = pool
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        x, weight, bias, mean, rstd, tx, tw, tb = ctx.saved_tensors
        need = ctx.needs_input_grad
        grad = grad.contiguous()
        gx = gw = gtx = gtw = gtb = None
        if need[5] or need[6] or need[7]:
            gtx, gtw, gtb = _cpu_backward(grad, x, weight, bias, mean, rstd, ctx.pool, need[5], need[6] or need[7])
        if (need[0] or need[1]) and not (tx is None and tw is None):
            _, gx, gw = _cpu_double_backward(grad, x, weight, bias, mean, rstd, ctx.pool, tx, tw, tb,
                                             (False, need[0], need[1]))
        return (gx if need[0] else None, gw if need[1] else None, None, None, None,
                gtx if need[5] else None, gtw if need[6] else None, gtb if need[7] else None, None)


def _check(x, weight, bias, eps, pool) -> None:
    check_tensor(x, "x", ndim=4, layout="(N, C, H, W)")
    c = x.shape[1]
    for name, t in (("weight", weight), ("bias", bias)):
        if t is None:
            continue
        check_tensor(t, name, ndim=1, layout=f"(C,) = ({c},)")
        check_same_device("x", x, name, t)
        if t.dtype != x.dtype and not (x.dtype in HALF and t.dtype == torch.float32):
            raise TypeError(f"{name} must have the dtype of x ({x.dtype}) or, for a bfloat16/float16 x, "
                            f"float32 (as F.group_norm under autocast); got {t.dtype}")
        if t.shape[0] != c:
            raise ValueError(f"{name} must have shape (C,) = ({c},) like x.shape[1], got {tuple(t.shape)}")
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps > 0:
        raise ValueError(f"eps must be a positive float, got {eps!r}")
    if not isinstance(pool, bool):
        raise TypeError(f"pool must be a bool, got {type(pool).__name__}")
    if pool and min(x.shape[2:]) < 2:
        raise ValueError(f"pool=True needs x's H and W >= 2 (AvgPool2d(2, 2)), got shape {tuple(x.shape)}")


def norm_relu_pool(x: torch.Tensor, weight: torch.Tensor | None = None, bias: torch.Tensor | None = None,
                   eps: float = 1e-5, *, pool: bool = True, backend: str = "auto") -> torch.Tensor:
    """ConvNet-3's block epilogue: ``avg_pool2d(relu(group_norm(x, C, weight, bias, eps)), 2)``.

    "Instance norm" as every original repository writes it (``GroupNorm(C, C, affine=True)``):
    each (n, c) plane is normalized by its own mean and biased variance, then scaled by
    ``weight[c]`` and shifted by ``bias[c]``; ReLU; then a 2×2 average pool with stride 2 (floor
    mode: an odd last row/column is dropped, as ``AvgPool2d``).

    Args:
        x: the conv output, floating point; non-contiguous ``x`` is copied to contiguous for the
            kernel backends.
        weight, bias: ``(C,)`` affine parameters (None: 1 and 0).
        eps: added to the variance (GroupNorm's 1e-5).
        pool: apply the 2×2 average pool (False: normalize and ReLU only).
        backend: ``"auto"``, ``"reference"``, ``"cpu"`` or ``"triton"``.

    Shapes:
        x: ``(N, C, H, W)``. Returns ``(N, C, H // 2, W // 2)`` with ``pool``, else ``(N, C, H, W)``.

    Returns:
        The block output in ``x``'s dtype, differentiable in ``x``, ``weight`` and ``bias`` on every
        backend, twice (``create_graph=True``, e.g. gradient matching) included.

    Dtypes: ``weight``/``bias`` have ``x``'s dtype, or are float32 for a bfloat16/float16 ``x`` (a
    GroupNorm's float32 parameters after an autocast conv); half inputs compute in float32 and the
    result has ``x``'s dtype, as CPU ``F.group_norm`` does. Under ``torch.autocast`` the op follows
    ``group_norm``'s rule for the device: on CPU the inputs are used as they come (half in, half
    out); on CUDA (group_norm is on autocast's fp32 list) half inputs are cast to float32 and the
    result is float32.
    """
    amp = autocast_inputs("norm_relu_pool", x, weight, bias)
    if amp is not None:
        with torch.autocast(x.device.type, enabled=False):
            return norm_relu_pool(*amp, eps, pool=pool, backend=backend)
    _check(x, weight, bias, eps, pool)
    name = select_backend(BACKENDS, backend, x.device, x.dtype)
    if name == "reference":
        return reference.norm_relu_pool(x, weight, bias, float(eps), pool)
    c = x.shape[1]
    w = weight.contiguous() if weight is not None else x.new_ones(c)
    b = bias.contiguous() if bias is not None else x.new_zeros(c)
    fn = NormReluPoolDual if forward_mode(x, w, b) else NormReluPoolFunction
    return fn.apply(x.contiguous(), w, b, float(eps), pool, name)


__all__ = ["BACKENDS", "NormReluPoolBackward", "NormReluPoolDual", "NormReluPoolFunction", "NormReluPoolTangent",
           "norm_relu_pool"]
