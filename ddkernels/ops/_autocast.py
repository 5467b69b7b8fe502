"""How the fused ops behave under ``torch.autocast``: each follows the PyTorch op it replaces.

The ops are autograd Functions over C++ / Triton kernels, which autocast cannot look into, so the
rule is applied once at each public wrapper (:func:`autocast_inputs`), for every backend alike; the
call then runs with autocast off for that device, as PyTorch's own autocast kernels do. Policies
(PyTorch 2.13's lists, ``ATen/autocast_mode.h`` and ``autocast_mode.cpp``):

* ``"keep"``: inputs as they come (the op's own dtype rule applies);
* ``"fp32"``: half inputs cast to float32 (the "fp32" list: norms and losses on CUDA);
* ``"lower"``: float32 / half inputs cast to the autocast dtype (the lower-precision list:
  convolutions);
* ``"promote"``: floating inputs cast to the widest floating dtype among them (ordinary type
  promotion, what ``scale * x + shift`` does under autocast).

One exception to PyTorch's own lists, for the networks' plain ``nn.Conv2d`` layers
(:func:`conv_float_backward`): on CPU a convolution with a single input channel runs its forward
in the autocast dtype and its backward in float32.
"""
from __future__ import annotations

from typing import Any

import torch

from ._autograd import forward_mode

HALF = (torch.bfloat16, torch.float16)

# op -> device type -> policy. norm_relu_pool / multi_formation: CPU autocast runs group_norm and
# upsample_bilinear2d in the input's dtype (group_norm with float32 γ/β), CUDA's lists them fp32.
# grad_distance is a loss (mse_loss, l1_loss, cosine_similarity: fp32). small_conv is a conv.
POLICIES: dict[str, dict[str, str]] = {
    "norm_relu_pool": {"cpu": "keep", "cuda": "fp32"},
    "multi_formation": {"cpu": "keep", "cuda": "fp32"},
    # affine_crop samples at learned coordinates: float32 everywhere (bfloat16 spaces 14.0 by 1/16 pixel)
    "affine_crop": {"cpu": "fp32", "cuda": "fp32"},
    "grad_distance": {"cpu": "fp32", "cuda": "fp32"},
    "scale_shift": {"cpu": "promote", "cuda": "promote"},
    "small_conv": {"cpu": "lower", "cuda": "lower"},
}


def _device(arg) -> torch.device | None:
    if isinstance(arg, torch.Tensor):
        return arg.device
    if isinstance(arg, (list, tuple)) and arg and isinstance(arg[0], torch.Tensor):
        return arg[0].device
    return None


def _floats(args):
    for a in args:
        for t in (a if isinstance(a, (list, tuple)) else (a,)):
            if isinstance(t, torch.Tensor) and t.is_floating_point():
                yield t


def autocast_inputs(op: str, *args: Any) -> tuple[Any, ...] | None:
    """``args`` (tensors, sequences of tensors, None) cast by ``op``'s autocast policy for the
    device of the first one, or None when autocast is off there or the policy keeps them (the
    caller then runs as usual). Non-floating and non-tensor arguments pass through unchanged;
    the caller validates them afterwards.
    """
    device = _device(args[0]) if args else None
    if device is None or device.type not in ("cpu", "cuda") or not torch.is_autocast_enabled(device.type):
        return None
    policy = POLICIES[op][device.type]
    if policy == "keep":
        return None
    if policy == "fp32":
        def target(t):
            return torch.float32 if t.dtype in HALF else t.dtype
    elif policy == "lower":
        low = torch.get_autocast_dtype(device.type)

        def target(t):  # autocast leaves float64 alone
            return t.dtype if t.dtype == torch.float64 else low
    else:  # promote
        wide = None
        for t in _floats(args):
            wide = t.dtype if wide is None else torch.promote_types(wide, t.dtype)

        def target(t):
            return wide

    def cast(a):
        if isinstance(a, (list, tuple)):
            return type(a)(cast(t) for t in a)
        if isinstance(a, torch.Tensor) and a.is_floating_point():
            return a.to(target(a))
        return a

    return tuple(cast(a) for a in args)


#: Largest batch :func:`conv_float_backward` takes: above it the float32 backward's extra float32 copy
#: of the (N, C_out, H, W) output gradient costs more than it saves (one thread, 128 output
#: channels, 32x32: bf16 vs float32 backward 3.6 vs 1.0 ms at 10 images, 30 vs 13 ms at 32, 66 vs 75
#: ms at 64, 130 vs 154 ms at 128).
FLOAT_BACKWARD_MAX_BATCH = 32


def conv_float_backward(x: torch.Tensor, conv: torch.nn.Conv2d) -> bool:
    """Whether ``conv(x)`` should go through :func:`conv2d_float_backward` under CPU autocast: a
    conv with one input channel (ConvNet-3's first layer on Fashion-MNIST) on a small batch (the
    synthetic images of MTT, HaBa, DC's per-class batches). oneDNN's bfloat16 backward for it is
    2-4x slower than its float32 one there (the weight gradient's share), while its bfloat16 forward
    is the faster one; MTT and HaBa pay the backward three times per unrolled step. Larger batches
    keep autocast's plain bfloat16 conv (:data:`FLOAT_BACKWARD_MAX_BATCH`)."""
    return (x.device.type == "cpu" and conv.in_channels == 1 and x.dim() == 4
            and x.shape[0] <= FLOAT_BACKWARD_MAX_BATCH and conv.padding_mode == "zeros"
            and not isinstance(conv.padding, str) and torch.is_autocast_enabled("cpu")
            and torch.get_autocast_dtype("cpu") in HALF)


class _HalfForwardFloatBackward(torch.autograd.Function):
    """``F.conv2d`` with the forward in ``dtype`` (the autocast dtype, as autocast runs it) and the
    backward in float32 (or wider) from the saved inputs: the gradient of the float32 conv, itself
    differentiable (``aten.convolution_backward`` has a double backward), so unrolled trainers can
    take second derivatives through it."""

    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding, dilation, groups, dtype):
        ctx.save_for_backward(x, weight)
        ctx.conf = (stride, padding, dilation, groups, None if bias is None else bias.dtype)
        return torch.nn.functional.conv2d(x.to(dtype), weight.to(dtype), None if bias is None else bias.to(dtype),
                                          stride, padding, dilation, groups)

    @staticmethod
    def backward(ctx, gy):
        x, weight = ctx.saved_tensors
        stride, padding, dilation, groups, bias_dtype = ctx.conf
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        acc = torch.promote_types(x.dtype, torch.float32)  # float64 stays float64 (gradcheck)
        with torch.autocast("cpu", enabled=False):
            gx, gw, gb = torch.ops.aten.convolution_backward(
                gy.to(acc), x.to(acc), weight.to(acc), None if bias_dtype is None else [weight.shape[0]], stride,
                padding, dilation, False, [0] * len(stride), groups, [need_x, need_w, need_b])
        return (gx.to(x.dtype) if need_x else None, gw.to(weight.dtype) if need_w else None,
                gb.to(bias_dtype) if need_b else None, None, None, None, None, None)


class _HalfForwardFloatBackwardDual(_HalfForwardFloatBackward):
    """:class:`_HalfForwardFloatBackward` with forward mode, for dual inputs (the unrolled trainers'
    reverse-over-forward product; Dynamo cannot trace a Function with a ``jvp``, so the plain one has none)."""

    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding, dilation, groups, dtype):
        ctx.save_for_forward(x, weight)
        ctx.dtype = dtype
        return _HalfForwardFloatBackward.forward(ctx, x, weight, bias, stride, padding, dilation, groups, dtype)

    @staticmethod
    def jvp(ctx, tx, tw, tb, *_):
        """``conv(tx, W) + conv(x, tW) + tb``, each conv half forward / float backward again, so reverse
        mode runs through the tangent too."""
        x, weight = ctx.saved_tensors
        stride, padding, dilation, groups, _ = ctx.conf
        terms = [_HalfForwardFloatBackward.apply(a, w, None, stride, padding, dilation, groups, ctx.dtype)
                 for a, w in ((tx, weight), (x, tw)) if a is not None and w is not None]
        if tb is not None:
            terms.append(tb.to(ctx.dtype).view(1, -1, *[1] * (x.dim() - 2)))
        return sum(terms[1:], terms[0]) if terms else None


def conv2d_float_backward(conv: torch.nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """``conv(x)`` under CPU autocast with the forward in the autocast dtype and the backward in
    float32 (see :func:`conv_float_backward`)."""
    with torch.autocast("cpu", enabled=False):
        fn = _HalfForwardFloatBackwardDual if forward_mode(x, conv.weight, conv.bias) else _HalfForwardFloatBackward
        return fn.apply(x, conv.weight, conv.bias, conv.stride, conv.padding, conv.dilation, conv.groups,
                        torch.get_autocast_dtype("cpu"))
