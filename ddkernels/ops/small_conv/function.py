"""small_conv: backend declarations, the autograd Function and the functional API.

An internal op for :class:`ddkernels.nn.HallucinatorBank`: PyTorch's CPU convolutions run at a few
GFLOP/s for 3 channels per group on 30×30 planes, while a direct loop (``csrc/cpu/small_conv.cpp``)
keeps everything in L1. Only stride 1, no dilation, square kernels and padding in ``[0, K-1]``;
a transposed conv (stride 1, padding 0) is run as the equivalent padded conv.
"""
from __future__ import annotations

import torch

from ... import _ext, dispatch
from ..._checks import check_int, check_tensor
from .._autocast import autocast_inputs
from .._autograd import recomputed_vjp, select_backend
from . import reference

BACKENDS = dispatch.op_backends("small_conv", triton=False, gpu_note="GPU tensors run cuDNN through the reference",
                                cpu_dtypes=dispatch.FLOATS)


def _register_fakes() -> None:
    """Shape functions so torch.compile / FakeTensor tracing can see through the C++ ops."""

    @torch.library.register_fake("ddkernels::small_conv2d_fwd")
    def _(x, weight, bias, padding, groups):
        k = weight.shape[2]
        return x.new_empty(x.shape[0], weight.shape[0], x.shape[2] + 2 * padding - k + 1,
                           x.shape[3] + 2 * padding - k + 1)

    @torch.library.register_fake("ddkernels::small_conv2d_bwd")
    def _(grad_y, x, weight, padding, groups, need_x, need_w, need_b):
        return (x.new_empty(x.shape) if need_x else x.new_empty(0),
                weight.new_empty(weight.shape) if need_w else x.new_empty(0),
                x.new_empty(weight.shape[0]) if need_b else x.new_empty(0))


if _ext.cpu_available()[0]:
    _register_fakes()


class SmallConv2dFunction(torch.autograd.Function):
    """The C++ direct conv; the backward saves ``x`` and ``weight`` and returns only the gradients
    autograd asks for. Asked for a differentiable gradient (``create_graph=True``), it
    differentiates the reference instead, so second derivatives are exact."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, padding: int,
                groups: int) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.padding, ctx.groups = padding, groups
        return torch.ops.ddkernels.small_conv2d_fwd(x, weight, bias, padding, groups)

    @staticmethod
    def backward(ctx, grad_y: torch.Tensor):
        x, weight = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        if torch.is_grad_enabled():  # the bias enters additively: a zero stand-in gives its gradient
            bias = weight.new_zeros(weight.shape[0]) if need_b else None
            grads = recomputed_vjp(lambda a, b, c: reference.small_conv2d(a, b, c, ctx.padding, ctx.groups),
                                   (x, weight, bias), (need_x, need_w, need_b), grad_y)
            return (*grads, None, None)
        # Autograd may hand us an expanded/strided gradient; the kernel reads it densely.
        gx, gw, gb = torch.ops.ddkernels.small_conv2d_bwd(grad_y.contiguous(), x, weight, ctx.padding,
                                                          ctx.groups, need_x, need_w, need_b)
        return gx if need_x else None, gw if need_w else None, gb if need_b else None, None, None


def _check(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, groups: int) -> None:
    check_tensor(x, "x", ndim=4, layout="(N, C, H, W)")
    check_tensor(weight, "weight", ndim=4, layout="(O, C/groups, K, K) or (C, O/groups, K, K)")
    check_int(groups, "groups", low=1)
    if weight.dtype != x.dtype or weight.device != x.device:
        raise ValueError(f"weight must match x's dtype {x.dtype} and device {x.device}, "
                         f"got {weight.dtype} on {weight.device}")
    if weight.shape[2] != weight.shape[3]:
        raise ValueError(f"weight must have a square kernel, got shape {tuple(weight.shape)}")
    if bias is not None:
        check_tensor(bias, "bias", ndim=1, layout="(O,)")
        if bias.dtype != x.dtype or bias.device != x.device:
            raise ValueError(f"bias must match x's dtype {x.dtype} and device {x.device}, "
                             f"got {bias.dtype} on {bias.device}")


def small_conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, padding: int = 0,
                 groups: int = 1, *, backend: str = "auto") -> torch.Tensor:
    """``F.conv2d(x, weight, bias, padding=padding, groups=groups)`` with stride 1 and no dilation.

    Args:
        x: input, floating point; non-contiguous ``x`` is copied to contiguous for the cpu backend.
        weight: ``(O, C/groups, K, K)``.
        bias: ``(O,)`` or None.
        padding: zero padding on every side, ``0 <= padding <= K-1``.
        groups: channel groups; ``C`` and ``O`` must be multiples of it.
        backend: ``"auto"``, ``"reference"`` or ``"cpu"`` (``"triton"`` is declared unavailable: GPU
            tensors run cuDNN through the reference).

    Shapes:
        x: ``(N, C, H, W)``. Returns ``(N, O, H + 2·padding − K + 1, W + 2·padding − K + 1)``.

    Returns:
        The convolution, differentiable in ``x``, ``weight`` and ``bias`` on every backend.
    """
    amp = autocast_inputs("small_conv", x, weight, bias)
    if amp is not None:  # a convolution: the autocast dtype
        with torch.autocast(x.device.type, enabled=False):
            return small_conv2d(*amp, padding, groups, backend=backend)
    _check(x, weight, bias, groups)
    k = weight.shape[2]
    check_int(padding, "padding", low=0, high=k - 1)
    if x.shape[1] != weight.shape[1] * groups or weight.shape[0] % groups:
        raise ValueError(f"x has {x.shape[1]} channels and weight shape {tuple(weight.shape)}: with groups={groups} "
                         "x needs weight.size(1)·groups channels and weight.size(0) must be a multiple of groups")
    if bias is not None and bias.shape[0] != weight.shape[0]:
        raise ValueError(f"bias must have weight.size(0)={weight.shape[0]} elements, got shape {tuple(bias.shape)}")
    if min(x.shape[2:]) + 2 * padding < k:
        raise ValueError(f"x spatial size {tuple(x.shape[2:])} with padding {padding} is smaller than the kernel size {k}")
    name = select_backend(BACKENDS, backend, x.device, x.dtype)
    if name == "reference":
        return reference.small_conv2d(x, weight, bias, padding, groups)
    return SmallConv2dFunction.apply(x.contiguous(), weight.contiguous(),
                                     None if bias is None else bias.contiguous(), padding, groups)


def transpose_weight(weight: torch.Tensor, groups: int) -> torch.Tensor:
    """The conv weight ``(groups·O_g, C_g, K, K)`` equal to ``conv_transpose2d``'s ``(C, O_g, K, K)``:
    in/out swapped within each group and the kernel flipped (differentiable; the weight is tiny)."""
    c, og, k, _ = weight.shape
    w = weight.view(groups, c // groups, og, k, k).transpose(1, 2).flip(-1, -2)
    return w.reshape(groups * og, c // groups, k, k)


def small_conv_transpose2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                           groups: int = 1, *, backend: str = "auto") -> torch.Tensor:
    """``F.conv_transpose2d(x, weight, bias, groups=groups)`` with stride 1 and no padding.

    Runs as :func:`small_conv2d` with padding ``K−1`` and :func:`transpose_weight`'s kernel.

    Args:
        x: input, floating point.
        weight: ``(C, O/groups, K, K)`` (``conv_transpose2d``'s layout).
        bias: ``(O,)`` or None.
        groups: channel groups; ``C`` must be a multiple of it.
        backend: as for :func:`small_conv2d`.

    Shapes:
        x: ``(N, C, H, W)``. Returns ``(N, O, H + K − 1, W + K − 1)``.
    """
    amp = autocast_inputs("small_conv", x, weight, bias)
    if amp is not None:
        with torch.autocast(x.device.type, enabled=False):
            return small_conv_transpose2d(*amp, groups, backend=backend)
    _check(x, weight, bias, groups)
    if x.shape[1] != weight.shape[0] or weight.shape[0] % groups:
        raise ValueError(f"x has {x.shape[1]} channels and weight shape {tuple(weight.shape)}: x needs "
                         f"weight.size(0) channels and weight.size(0) must be a multiple of groups={groups}")
    if bias is not None and bias.shape[0] != weight.shape[1] * groups:
        raise ValueError(f"bias must have weight.size(1)·groups={weight.shape[1] * groups} elements, "
                         f"got shape {tuple(bias.shape)}")
    name = select_backend(BACKENDS, backend, x.device, x.dtype)
    if name == "reference":
        return reference.small_conv_transpose2d(x, weight, bias, groups)
    return small_conv2d(x, transpose_weight(weight, groups), bias, weight.shape[2] - 1, groups, backend=name)


__all__ = ["BACKENDS", "SmallConv2dFunction", "small_conv2d", "small_conv_transpose2d", "transpose_weight"]
