"""multi_formation: backend declarations, the autograd Function and the functional API."""
from __future__ import annotations

from typing import Sequence

import torch

from ... import _ext, dispatch
from ..._checks import check_int, check_tensor
from .._autocast import autocast_inputs
from .._autograd import empty_result, select_backend
from . import reference
from .tables import adjoint_taps, forward_taps

BACKENDS = dispatch.op_backends("multi_formation", cpu_dtypes=dispatch.FLOATS)


# --- cpu backend: C++ ops registered by ddkernels._C -------------------------------------------

def _cpu_forward(x: torch.Tensor, factor: int, out_h: int, out_w: int) -> torch.Tensor:
    sh, sw = -(-x.shape[2] // factor), -(-x.shape[3] // factor)
    ri, rw = forward_taps(sh, out_h, x.dtype, x.device)  # weights in the accumulation dtype
    ci, cw = forward_taps(sw, out_w, x.dtype, x.device)
    return torch.ops.ddkernels.multi_formation_fwd(x, factor, ri, rw, ci, cw)


def _cpu_backward(grad_y: torch.Tensor, factor: int, h: int, w: int) -> torch.Tensor:
    sh, sw = -(-h // factor), -(-w // factor)
    ri, rw = adjoint_taps(sh, grad_y.shape[2], grad_y.dtype, grad_y.device)
    ci, cw = adjoint_taps(sw, grad_y.shape[3], grad_y.dtype, grad_y.device)
    return torch.ops.ddkernels.multi_formation_bwd(grad_y, factor, h, w, ri, rw, ci, cw)


def _register_fakes() -> None:
    """Shape functions so torch.compile / FakeTensor tracing can see through the C++ ops."""

    @torch.library.register_fake("ddkernels::multi_formation_fwd")
    def _(x, factor, row_idx, row_w, col_idx, col_w):
        n, c = x.shape[:2]
        return x.new_empty(factor * factor * n, c, row_idx.shape[1], col_idx.shape[1])

    @torch.library.register_fake("ddkernels::multi_formation_bwd")
    def _(grad_out, factor, in_h, in_w, row_idx, row_w, col_idx, col_w):
        return grad_out.new_empty(grad_out.shape[0] // (factor * factor), grad_out.shape[1], in_h, in_w)


if _ext.cpu_available()[0]:
    _register_fakes()


def _triton_forward(x, factor, out_h, out_w):
    from .triton import multi_formation_forward
    return multi_formation_forward(x, factor, out_h, out_w)


def _triton_backward(grad_y, factor, h, w):
    from .triton import multi_formation_backward
    return multi_formation_backward(grad_y, factor, h, w)


_KERNELS = {"cpu": (_cpu_forward, _cpu_backward), "triton": (_triton_forward, _triton_backward)}


class MultiFormationFunction(torch.autograd.Function):
    """Fused decode for the kernel backends. The backward needs only shapes: nothing is saved.
    It is itself a Function (:class:`MultiFormationBackward`), so derivatives of every order exist."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, factor: int, out_h: int, out_w: int, backend: str) -> torch.Tensor:
        ctx.factor, ctx.in_hw, ctx.backend = factor, x.shape[2:], backend
        return _KERNELS[backend][0](x, factor, out_h, out_w)

    @staticmethod
    def backward(ctx, grad_y: torch.Tensor):
        grad_x = MultiFormationBackward.apply(grad_y, ctx.factor, *ctx.in_hw, ctx.backend)
        return grad_x, None, None, None, None


class MultiFormationBackward(torch.autograd.Function):
    """The decode's adjoint ``grad_y -> grad_x``: linear in ``grad_y`` and independent of ``x``
    (the decode is affine: a linear map plus the 0.5 padding), so its own derivative applies the
    decode's linear part to the grad-of-grad: the decode minus the decode of zeros, whose only
    non-zero values come from the padding."""

    @staticmethod
    def forward(ctx, grad_y: torch.Tensor, factor: int, h: int, w: int, backend: str) -> torch.Tensor:
        ctx.factor, ctx.out_hw, ctx.backend = factor, grad_y.shape[2:], backend
        ctx.padded = bool(h % factor or w % factor)
        # Autograd may hand us an expanded/strided gradient; the kernels read it densely.
        return _KERNELS[backend][1](grad_y.contiguous(), factor, h, w)

    @staticmethod
    def backward(ctx, gg_x: torch.Tensor):
        gg_y = MultiFormationFunction.apply(gg_x.contiguous(), ctx.factor, *ctx.out_hw, ctx.backend)
        if ctx.padded:
            gg_y = gg_y - _KERNELS[ctx.backend][0](torch.zeros_like(gg_x), ctx.factor, *ctx.out_hw)
        return gg_y, None, None, None, None


def _normalize_size(size, h: int, w: int) -> tuple[int, int]:
    if size is None:
        return h, w
    if isinstance(size, int) and not isinstance(size, bool):
        size = (size, size)
    if (not isinstance(size, Sequence) or len(size) != 2
            or not all(isinstance(s, int) and not isinstance(s, bool) for s in size)):
        raise TypeError(f"size must be None, an int or a pair of ints (H, W), got {size!r}")
    if min(size) < 1:
        raise ValueError(f"size must be positive, got {tuple(size)}")
    return int(size[0]), int(size[1])


def _decode(x: torch.Tensor, factor: int, size: tuple[int, int], backend: str) -> torch.Tensor:
    name = select_backend(BACKENDS, backend, x.device, x.dtype)
    if name == "reference":
        if not x.numel():  # N = 0 or C = 0: F.interpolate refuses empty batches
            return empty_result(x, (factor * factor * x.shape[0], x.shape[1], *size))
        return reference.multi_formation(x, factor, size)
    return MultiFormationFunction.apply(x.contiguous(), factor, size[0], size[1], name)


def multi_formation(
    x: torch.Tensor,
    factor: int,
    size: int | tuple[int, int] | None = None,
    *,
    multi: bool = False,
    backend: str = "auto",
) -> torch.Tensor:
    """IDC multi-formation decode: every stored image becomes ``factor²`` full-size images.

    Pads the right/bottom edge with 0.5 up to a multiple of ``factor``, cuts ``factor×factor``
    tiles of side ``ceil(h / factor)`` in row-major tile order, and resizes each tile bilinearly
    (``align_corners=False``) to ``size``. Outputs are stacked tile-major: row ``k·N + b`` is tile
    ``k`` of image ``b`` (use :func:`multi_formation_targets` for the matching labels).

    Args:
        x: stored images, floating point. Non-contiguous ``x`` (e.g. channels_last) is copied
            once to contiguous layout before a fused kernel runs; the reference backend reads it as is.
        factor: tiles per side, ``1 <= factor <= min(h, w)`` (every tile holds at least one pixel).
        size: output ``(H, W)`` or an int for square outputs; default the stored size ``(h, w)``.
        multi: IDC's ``decode_type='multi'``: concatenate the decodes for factors ``1..factor``.
        backend: ``"auto"``, ``"reference"``, ``"cpu"`` or ``"triton"``.

    Shapes:
        x: ``(N, C, h, w)``. Returns ``(factor²·N, C, H, W)``, or with ``multi=True``
        ``(Σ_{f=1..factor} f²·N, C, H, W)`` ordered by factor, then tile, then image.

    Returns:
        The decoded images; differentiable in ``x`` on every backend, to any order.
    """
    amp = autocast_inputs("multi_formation", x)
    if amp is not None:  # CUDA autocast: float32, as upsample_bilinear2d
        with torch.autocast(x.device.type, enabled=False):
            return multi_formation(*amp, factor, size, multi=multi, backend=backend)
    check_tensor(x, "x", ndim=4, layout="(N, C, h, w)")
    h, w = x.shape[2], x.shape[3]
    if not (h and w):
        raise ValueError(f"x must hold images of at least 1×1 pixels (h, w >= 1), got shape {tuple(x.shape)}")
    check_int(factor, "factor", low=1, high=min(h, w))
    size = _normalize_size(size, h, w)
    if not multi:
        return _decode(x, factor, size, backend)
    return torch.cat([_decode(x, f, size, backend) for f in range(1, factor + 1)])


# The largest factor multi_formation_targets accepts: a decode with it needs stored images of
# at least 4096×4096 pixels and gives 16.7 M images per stored one.
MAX_FACTOR = 4096


def multi_formation_targets(y: torch.Tensor, factor: int, *, multi: bool = False) -> torch.Tensor:
    """Labels for :func:`multi_formation`'s output: ``y`` repeated tile-major (``cat([y] * factor²)``).

    Args:
        y: labels of the stored images, any dtype.
        factor: the factor given to :func:`multi_formation`, at most :data:`MAX_FACTOR` (labels
            alone cannot check the decode's own limit, ``factor <= min(h, w)``; this one keeps a
            typo from allocating terabytes).
        multi: match ``multi=True`` decodes (factors ``1..factor``).

    Shapes:
        y: ``(N, ...)``. Returns ``(factor²·N, ...)`` (or the ``multi`` total).
    """
    check_tensor(y, "y", floating=False)
    if y.dim() < 1:
        raise ValueError(f"y must have a leading batch dimension, got shape {tuple(y.shape)}")
    check_int(factor, "factor", low=1, high=MAX_FACTOR)
    reps = sum(f * f for f in range(1, factor + 1)) if multi else factor * factor
    return y.repeat(reps, *([1] * (y.dim() - 1)))


def output_count(n: int, factor: int, multi: bool = False) -> int:
    """Number of decoded images for ``n`` stored ones."""
    return n * (sum(f * f for f in range(1, factor + 1)) if multi else factor * factor)


__all__ = ["multi_formation", "multi_formation_targets", "MultiFormationFunction", "MultiFormationBackward",
           "BACKENDS", "MAX_FACTOR", "output_count"]
