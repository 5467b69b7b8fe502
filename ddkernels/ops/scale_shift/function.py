"""scale_shift: backend declarations, the autograd Function and the functional API."""
from __future__ import annotations

import torch

from ... import _ext, dispatch
from ..._checks import check_same_device, check_tensor
from .._autocast import autocast_inputs
from .._dtypes import acc_dtype
from .._autograd import empty_result, recomputed_vjp, select_backend
from . import reference

BACKENDS = dispatch.op_backends("scale_shift", cpu_dtypes=dispatch.FLOATS)


# --- cpu backend: C++ ops registered by ddkernels._C -------------------------------------------

def _cpu_forward(x, scale, shift, index, normalize, eps):
    return torch.ops.ddkernels.scale_shift_fwd(x, scale, shift, index, normalize, eps)


def _cpu_backward(grad_y, x, scale, index, order, offsets, mean, rstd, normalize):
    # The C++ backward walks hallucinator segments only; index is implied by order/offsets.
    return torch.ops.ddkernels.scale_shift_bwd(grad_y, x, scale, order, offsets, mean, rstd, normalize)


def _register_fakes() -> None:
    """Shape functions so torch.compile / FakeTensor tracing can see through the C++ ops."""

    @torch.library.register_fake("ddkernels::scale_shift_fwd")
    def _(x, scale, shift, index, normalize, eps):
        stats = x.new_empty(x.shape[0] if normalize else 0, x.shape[1], dtype=acc_dtype(x.dtype))
        return x.new_empty(x.shape), stats, stats.new_empty(stats.shape)

    @torch.library.register_fake("ddkernels::scale_shift_bwd")
    def _(grad_y, x, scale, order, offsets, mean, rstd, normalize):
        return x.new_empty(x.shape), scale.new_empty(scale.shape), scale.new_empty(scale.shape)


if _ext.cpu_available()[0]:
    _register_fakes()


def _triton_forward(*args):
    from .triton import scale_shift_forward
    return scale_shift_forward(*args)


def _triton_backward(*args):
    from .triton import scale_shift_backward
    return scale_shift_backward(*args)


_KERNELS = {"cpu": (_cpu_forward, _cpu_backward), "triton": (_triton_forward, _triton_backward)}


def segment_table(index: torch.Tensor, num_hallucinators: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Samples grouped by hallucinator: ``order[offsets[k]:offsets[k+1]]`` are the rows using ``k``,
    in increasing row order. The backward reduces each group in this fixed order (no atomics)."""
    order = torch.argsort(index, stable=True)
    offsets = index.new_zeros(num_hallucinators + 1)
    offsets[1:] = torch.bincount(index, minlength=num_hallucinators).cumsum(0)
    return order, offsets


def _planes_reference(x, scale, shift, index, normalize: bool, eps: float) -> torch.Tensor:
    """The reference on the kernels' plane layout (x (N, C, L), scale/shift (Hn, C, L or 1)): a
    trailing unit dim makes each plane the ``(h, w)`` the reference normalizes over."""
    return reference.scale_shift(x.unsqueeze(-1), scale.unsqueeze(-1), shift.unsqueeze(-1), index, normalize,
                                 eps).squeeze(-1)


class ScaleShiftFunction(torch.autograd.Function):
    """Fused scale-shift for the kernel backends on plane layouts: x (N, C, L), scale/shift
    (Hn, C, L or 1), index (N,). Saves x, scale and (with normalize) the plane statistics.

    The fused backward is first order; when autograd asks for a differentiable gradient
    (``create_graph=True`` through this op) it recomputes the reference and differentiates it, so
    second derivatives are exact."""

    @staticmethod
    def forward(ctx, x, scale, shift, index, normalize: bool, eps: float, backend: str):
        y, mean, rstd = _KERNELS[backend][0](x, scale, shift, index, normalize, eps)
        ctx.save_for_backward(x, scale, index, mean, rstd)
        ctx.normalize, ctx.eps, ctx.backend = normalize, eps, backend
        return y

    @staticmethod
    def backward(ctx, grad_y):
        x, scale, index, mean, rstd = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph=True: the result must itself be differentiable
            # shift enters additively: its value does not matter to any derivative, zeros stand in
            grads = recomputed_vjp(lambda a, b, c: _planes_reference(a, b, c, index, ctx.normalize, ctx.eps),
                                   (x, scale, torch.zeros_like(scale)), ctx.needs_input_grad[:3], grad_y)
            return (*grads, None, None, None, None)
        order, offsets = segment_table(index, scale.shape[0])
        # Autograd may hand us an expanded/strided gradient; the kernels read it densely.
        gx, gs, gt = _KERNELS[ctx.backend][1](grad_y.contiguous(), x, scale, index, order, offsets,
                                              mean, rstd, ctx.normalize)
        return gx, gs, gt, None, None, None, None


def _check_params(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, hn: int | None) -> torch.Tensor:
    """Validate scale/shift against x (..., C, h, w); return scale's 4-D shape (Hn, C, h|1, w|1)."""
    c, h, w = x.shape[-3:]
    for name, t in (("scale", scale), ("shift", shift)):
        check_tensor(t, name)
        check_same_device("x", x, name, t)
        if t.dtype != x.dtype:
            raise TypeError(f"{name} must have the dtype of x ({x.dtype}), got {t.dtype}")
    if scale.dim() not in (2, 4):
        raise ValueError(f"scale must be 4-D (Hn, C, h, w) / (Hn, C, 1, 1) or 2-D (Hn, C), got shape {tuple(scale.shape)}")
    if shift.shape != scale.shape:
        raise ValueError(f"shift must have the shape of scale {tuple(scale.shape)}, got {tuple(shift.shape)}")
    full = tuple(scale.shape) + (1, 1) if scale.dim() == 2 else tuple(scale.shape)
    if hn is not None and full[0] != hn:
        raise ValueError(f"scale and shift must have Hn={hn} hallucinators (x.shape[0]), got shape {tuple(scale.shape)}")
    if full[1] != c:
        raise ValueError(f"scale must have C={c} channels like x, got shape {tuple(scale.shape)}")
    if full[2:] not in ((h, w), (1, 1)):
        raise ValueError(f"scale must be per-pixel (Hn, {c}, {h}, {w}) or per-channel (Hn, {c}) / (Hn, {c}, 1, 1) "
                         f"to match x of shape {tuple(x.shape)}, got shape {tuple(scale.shape)}")
    return full


def check_index(index, batch: int, hn: int, device: torch.device) -> None:
    """Validate a sampled-mode ``index``: int64, shape ``(batch,)``, values in ``[0, hn)``."""
    if not isinstance(index, torch.Tensor):
        raise TypeError(f"index must be a torch.Tensor of dtype int64, got {type(index).__name__}")
    if index.dtype != torch.int64:
        raise TypeError(f"index must have dtype int64 (torch.long), got {index.dtype}")
    if index.device != device:
        raise ValueError(f"x and index must be on the same device, got {device} and {index.device}")
    if index.shape != (batch,):
        raise ValueError(f"index must have shape (B,) = ({batch},) like x.shape[0], got {tuple(index.shape)}")
    # One reduction (a sync on GPU) buys a readable error instead of an out-of-bounds read; meta
    # tensors (shape tracing) hold no values to check.
    if batch and index.device.type != "meta" and (int(index.min()) < 0 or int(index.max()) >= hn):
        raise ValueError(f"index must hold hallucinator numbers in [0, Hn={hn}), got values in "
                         f"[{int(index.min())}, {int(index.max())}]")


def scale_shift(
    x: torch.Tensor,
    scale: torch.Tensor,
    shift: torch.Tensor,
    *,
    index: torch.Tensor | None = None,
    normalize: bool = False,
    eps: float = 1e-5,
    backend: str = "auto",
) -> torch.Tensor:
    """HaBa's hallucinator modulation ``y = scale[k] ⊙ n(x) + shift[k]`` for many hallucinators at once.

    ``n`` is the identity (HaBa's official code, the default) or, with ``normalize=True``,
    instance normalization of every ``(sample, channel)`` plane over ``(h, w)`` (biased variance,
    ``eps`` inside the square root; the AdaIN reading of the paper). The backward is fused:
    ``dscale = Σ_b dy ⊙ n(x)`` and ``dshift = Σ_b dy`` are summed per hallucinator in a fixed order,
    so gradients are bitwise repeatable.

    Args:
        x: encoded features, floating point. Product mode (``index=None``): hallucinator ``k``'s
            features of every base. Sampled mode: one feature map per sample. Non-contiguous ``x``
            is copied once to contiguous layout before a fused kernel runs.
        scale: per-pixel (HaBa) or per-channel scale of each hallucinator; dtype and device of ``x``.
        shift: the matching shift, same shape as ``scale``.
        index: sampled mode: the hallucinator each sample uses, int64 in ``[0, Hn)``.
        normalize: instance-normalize ``x`` over ``(h, w)`` first.
        eps: added to the variance when ``normalize`` (keeps constant planes, e.g. ``h·w = 1``, finite).
        backend: ``"auto"``, ``"reference"``, ``"cpu"`` or ``"triton"``.

    Shapes:
        Product mode: x ``(Hn, B, C, h, w)``; sampled mode: x ``(B, C, h, w)``, index ``(B,)``.
        scale, shift: ``(Hn, C, h, w)`` (per-pixel), ``(Hn, C)`` or ``(Hn, C, 1, 1)`` (per-channel).

    Returns:
        ``y`` with the shape of ``x``: ``y[k, b] = scale[k] ⊙ n(x[k, b]) + shift[k]`` (product) or
        ``y[b] = scale[index[b]] ⊙ n(x[b]) + shift[index[b]]`` (sampled); differentiable in ``x``,
        ``scale`` and ``shift`` on every backend, twice (``create_graph=True``) included.
    """
    amp = autocast_inputs("scale_shift", x, scale, shift)
    if amp is not None:  # elementwise: the widest dtype, as scale * x + shift under autocast
        with torch.autocast(x.device.type, enabled=False):
            return scale_shift(*amp, index=index, normalize=normalize, eps=eps, backend=backend)
    check_tensor(x, "x")
    if index is None:
        if x.dim() != 5:
            raise ValueError(f"x must be 5-D (Hn, B, C, h, w) in product mode (index=None), got shape {tuple(x.shape)}")
        hn = x.shape[0]
        full = _check_params(x, scale, shift, hn)
    else:
        if x.dim() != 4:
            raise ValueError(f"x must be 4-D (B, C, h, w) in sampled mode (index given), got shape {tuple(x.shape)}")
        full = _check_params(x, scale, shift, None)
        hn = full[0]
        check_index(index, x.shape[0], hn, x.device)
    if not isinstance(normalize, bool):
        raise TypeError(f"normalize must be a bool, got {type(normalize).__name__}")
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps >= 0:
        raise ValueError(f"eps must be a non-negative number, got {eps!r}")
    eps = float(eps)

    name = select_backend(BACKENDS, backend, x.device, x.dtype)
    scale4, shift4 = scale.reshape(full), shift.reshape(full)
    if name == "reference":
        if index is None and hn == 0:  # no hallucinators: an empty result, in the graph of every input
            return empty_result(x, x.shape) + scale4.sum() + shift4.sum()
        return reference.scale_shift(x, scale4, shift4, index, normalize, eps)

    c, h, w = x.shape[-3:]
    if index is None:
        # Product mode is sampled mode with every base row of hallucinator k tagged k.
        index = torch.arange(hn, device=x.device).repeat_interleave(x.shape[1])
    planes = (hn, c, h * w if full[2:] == (h, w) else 1)
    y = ScaleShiftFunction.apply(x.contiguous().view(index.numel(), c, h * w), scale4.contiguous().view(planes),
                                 shift4.contiguous().view(planes), index.contiguous(), normalize, eps, name)
    return y.view(x.shape)


__all__ = ["scale_shift", "ScaleShiftFunction", "BACKENDS", "segment_table"]
