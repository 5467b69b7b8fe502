"""affine_crop: backend declarations, the autograd Function and the functional API."""
from __future__ import annotations

import math

import torch

from ... import _ext, dispatch
from ..._checks import check_int, check_same_device, check_tensor
from .._autocast import autocast_inputs
from .._autograd import empty_result, recomputed_vjp, select_backend
from ..multi_formation.function import _normalize_size
from . import reference

BACKENDS = dispatch.op_backends("affine_crop", cpu_dtypes=dispatch.FLOATS)


# --- cpu backend: C++ ops registered by ddkernels._C -------------------------------------------

def _cpu_forward(x, theta, out_h, out_w, pad):
    return torch.ops.ddkernels.affine_crop_fwd(x, theta, out_h, out_w, pad)


def _cpu_backward(grad_y, x, theta, pad, need_x, need_theta):
    return torch.ops.ddkernels.affine_crop_bwd(grad_y, x, theta, pad, need_x, need_theta)


def _register_fakes() -> None:
    """Shape functions so torch.compile / FakeTensor tracing can see through the C++ ops."""

    @torch.library.register_fake("ddkernels::affine_crop_fwd")
    def _(x, theta, out_h, out_w, pad):
        return x.new_empty(theta.shape[1] * x.shape[0], x.shape[1], out_h, out_w)

    @torch.library.register_fake("ddkernels::affine_crop_bwd")
    def _(grad_y, x, theta, pad, need_x, need_theta):
        return x.new_empty(x.shape if need_x else (0,)), theta.new_empty(theta.shape if need_theta else (0,))


if _ext.cpu_available()[0]:
    _register_fakes()


def _triton_forward(*args):
    from .triton import affine_crop_forward
    return affine_crop_forward(*args)


def _triton_backward(*args):
    from .triton import affine_crop_backward
    return affine_crop_backward(*args)


_KERNELS = {"cpu": (_cpu_forward, _cpu_backward), "triton": (_triton_forward, _triton_backward)}


class AffineCropFunction(torch.autograd.Function):
    """Fused affine crop for the kernel backends; saves ``x`` and ``theta``. The fused backward is
    first order; asked for a differentiable gradient (``create_graph=True``) it differentiates the
    reference instead, so second derivatives are exact."""

    @staticmethod
    def forward(ctx, x, theta, out_h: int, out_w: int, pad: float, backend: str):
        ctx.save_for_backward(x, theta)
        ctx.size, ctx.pad, ctx.backend = (out_h, out_w), pad, backend
        return _KERNELS[backend][0](x, theta, out_h, out_w, pad)

    @staticmethod
    def backward(ctx, grad_y):
        x, theta = ctx.saved_tensors
        need_x, need_theta = ctx.needs_input_grad[:2]
        if torch.is_grad_enabled():  # create_graph=True: the result must itself be differentiable
            gx, gt = recomputed_vjp(lambda a, b: reference.affine_crop(a, b, ctx.size, ctx.pad), (x, theta),
                                    (need_x, need_theta), grad_y)
            return gx, gt, None, None, None, None
        # Autograd may hand us an expanded/strided gradient; the kernels read it densely.
        gx, gt = _KERNELS[ctx.backend][1](grad_y.contiguous(), x, theta, ctx.pad, need_x, need_theta)
        return gx if need_x else None, gt if need_theta else None, None, None, None, None


def _check_theta(theta, x: torch.Tensor) -> None:
    check_tensor(theta, "theta", ndim=3, layout="(N, T, 4)")
    check_same_device("x", x, "theta", theta)
    if theta.dtype != x.dtype:
        raise TypeError(f"theta must have the dtype of x ({x.dtype}), got {theta.dtype}")
    if theta.shape[0] != x.shape[0] or theta.shape[2] != 4:
        raise ValueError(f"theta must have shape (N={x.shape[0]}, T, 4) (top, left, height, width per window), "
                         f"got {tuple(theta.shape)}")


def affine_crop(
    x: torch.Tensor,
    theta: torch.Tensor,
    size: int | tuple[int, int] | None = None,
    *,
    pad: float = 0.5,
    backend: str = "auto",
) -> torch.Tensor:
    """Crop windows of every stored image and resize each bilinearly: a learnable multi-formation.

    Window ``k`` of image ``b`` is ``theta[b, k] = (top, left, height, width)`` in stored-image pixels
    (real-valued). Per axis, output ``o`` of ``n`` samples ``s = top + (height / n)·(o + 0.5) − 0.5``
    clamped to ``[top, top + max(height − 1, 0)]``, bilinearly between ``floor(s)`` and ``floor(s)+1``;
    taps outside the image read ``pad``. A window of integer ``(i·t, j·t, t, t)`` is exactly a tile of
    :func:`ddkernels.multi_formation` (``crop_grid`` gives IDC's grid), so learning ``theta`` from
    the grid starts at IDC's decode. Outputs are tile-major like multi_formation's: row ``k·N + b``.

    Args:
        x: stored images, any float dtype (the fused kernels compute bfloat16 / float16 in float32);
            non-contiguous ``x`` is copied once to contiguous layout before a fused kernel runs.
        theta: the windows, dtype and device of ``x``; finite (the fused kernels refuse NaN/Inf).
            Half windows are exact only on coarse grids (bfloat16 spaces 14.0 by 1/16 pixel):
            autocast gives ``x`` and ``theta`` to the op in float32.
        size: output ``(H, W)`` or an int for square outputs; default the stored size ``(h, w)``.
        pad: the value read outside the image (IDC pads with 0.5).
        backend: ``"auto"``, ``"reference"``, ``"cpu"`` or ``"triton"``.

    Shapes:
        x: ``(N, C, h, w)``, theta: ``(N, T, 4)``. Returns ``(T·N, C, H, W)``.

    Returns:
        The crops; differentiable in ``x`` and ``theta`` on every backend, twice included. The
        gradient in ``theta`` is the one-sided derivative where a tap crosses a pixel (``floor``).
    """
    amp = autocast_inputs("affine_crop", x, theta)
    if amp is not None:  # sampling coordinates need float32: a bfloat16 14.0 is only 1/16 pixel apart
        with torch.autocast(x.device.type, enabled=False):
            return affine_crop(*amp, size, pad=pad, backend=backend)
    check_tensor(x, "x", ndim=4, layout="(N, C, h, w)")
    h, w = x.shape[2], x.shape[3]
    if not (h and w):
        raise ValueError(f"x must hold images of at least 1×1 pixels (h, w >= 1), got shape {tuple(x.shape)}")
    _check_theta(theta, x)
    size = _normalize_size(size, h, w)
    if isinstance(pad, bool) or not isinstance(pad, (int, float)) or not math.isfinite(pad):
        raise ValueError(f"pad must be a finite number, got {pad!r}")
    name = select_backend(BACKENDS, backend, x.device, x.dtype)
    out_shape = (theta.shape[1] * x.shape[0], x.shape[1], *size)
    if not x.numel() or not theta.numel():
        return empty_result(x, out_shape) if not x.numel() else x.new_zeros(out_shape) + 0 * theta.sum()
    if name == "reference":
        return reference.affine_crop(x, theta, size, float(pad))
    # One reduction over the (small) windows: a NaN would index out of bounds in the kernels.
    if theta.device.type != "meta" and not torch.compiler.is_compiling() and not bool(torch.isfinite(theta).all()):
        raise ValueError("theta must be finite (NaN or Inf found)")
    return AffineCropFunction.apply(x.contiguous(), theta.contiguous(), size[0], size[1], float(pad), name)


def crop_grid(h: int, w: int, factor: int, n: int = 1, *, dtype: torch.dtype = torch.float32,
              device: torch.device | str | None = None) -> torch.Tensor:
    """IDC's ``factor × factor`` tile grid as :func:`affine_crop` windows, ``(n, factor², 4)``, tiles
    row-major: tile ``(i, j)`` is ``(i·⌈h/f⌉, j·⌈w/f⌉, ⌈h/f⌉, ⌈w/f⌉)``."""
    check_int(h, "h", low=1)
    check_int(w, "w", low=1)
    check_int(factor, "factor", low=1, high=min(h, w))
    check_int(n, "n", low=0)
    return reference.grid_theta(h, w, factor, n, dtype, device)


__all__ = ["AffineCropFunction", "BACKENDS", "affine_crop", "crop_grid"]
