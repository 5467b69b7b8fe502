"""Triton kernels for scale_shift: plane statistics, the forward affine map and the backward.

All tensors arrive as planes: x (N, C, L), scale/shift (Hn, C, S) with S = L (per-pixel) or 1
(per-channel); row n of x uses hallucinator index[n] (product mode passes the implied index).

* ``_scale_shift_stats_kernel``: one program per (n, c) plane, mean and 1/sqrt(var + eps).
* ``_scale_shift_fwd_kernel``: one program per (plane, block of pixels).
* ``_scale_shift_bwd_param_kernel``: one program per (hallucinator k, channel c, block of pixels)
  walks the samples of k in the segment table's order (``order``/``offsets``), so dscale/dshift
  are summed in a fixed order with no atomics. Without normalization dx = scale * dy needs nothing
  else, so the same program writes it: the backward is one pass. Per-channel parameters store one
  partial per pixel block, summed afterwards in a fixed order.
* ``_scale_shift_bwd_dx_kernel`` (normalize only): dx needs two plane-wide sums of dy, so it runs
  one program per plane — N·C programs keep a GPU busy, where Hn·C would not.
Accumulation is float32 for half types (float64 for float64).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._dtypes import acc_dtype, tl_acc
from .._triton_plane import plane_mean_rstd

BLOCK = 1024        # pixels per program for per-plane kernels (a HaBa plane is 900)
BLOCK_PARAM = 128   # smaller blocks give the Hn·C-wide parameter reduction more programs


@triton.jit
def _scale_shift_stats_kernel(
    x_ptr,     # (N, C, L)
    mean_ptr,  # (N, C) accumulation dtype
    rstd_ptr,  # (N, C)
    L, eps,
    ACC: tl.constexpr,
    BLOCK: tl.constexpr,
):
    rows = tl.program_id(0).to(tl.int64) + tl.arange(0, 1)
    mean, rstd = plane_mean_rstd(x_ptr, rows, rows >= 0, L, eps, ACC, BLOCK)
    tl.store(mean_ptr + rows, mean)
    tl.store(rstd_ptr + rows, rstd)


@triton.jit
def _scale_shift_fwd_kernel(
    x_ptr,      # (N, C, L)
    scale_ptr,  # (Hn, C, S), S = L or 1
    shift_ptr,  # (Hn, C, S)
    index_ptr,  # (N,) int64
    mean_ptr,   # (N, C) accumulation dtype; read only when NORMALIZE
    rstd_ptr,   # (N, C)
    y_ptr,      # (N, C, L)
    C, L,
    PER_PIXEL: tl.constexpr,
    NORMALIZE: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK: tl.constexpr,
):
    p = tl.program_id(0)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < L
    k = tl.load(index_ptr + p // C)
    row = k * C + p % C
    if PER_PIXEL:
        s = tl.load(scale_ptr + row * L + offs, mask=mask, other=0.0).to(ACC)
        t = tl.load(shift_ptr + row * L + offs, mask=mask, other=0.0).to(ACC)
    else:
        s = tl.load(scale_ptr + row).to(ACC)
        t = tl.load(shift_ptr + row).to(ACC)
    x = tl.load(x_ptr + p.to(tl.int64) * L + offs, mask=mask, other=0.0).to(ACC)
    if NORMALIZE:
        x = (x - tl.load(mean_ptr + p)) * tl.load(rstd_ptr + p)
    tl.store(y_ptr + p.to(tl.int64) * L + offs, (s * x + t).to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _scale_shift_bwd_param_kernel(
    gy_ptr,       # (N, C, L)
    x_ptr,        # (N, C, L)
    scale_ptr,    # (Hn, C, S)
    order_ptr,    # (N,) int64: samples sorted by hallucinator (stable)
    offsets_ptr,  # (Hn + 1,) int64: hallucinator k owns order[offsets[k]:offsets[k+1]]
    mean_ptr,     # (N, C) accumulation dtype; read only when NORMALIZE
    rstd_ptr,     # (N, C)
    gx_ptr,       # (N, C, L); written only when not NORMALIZE
    gscale_ptr,   # PER_PIXEL: (Hn, C, L); else partials (Hn, C, NBLOCKS) in accumulation dtype
    gshift_ptr,   # same as gscale_ptr
    C, L, NBLOCKS,
    PER_PIXEL: tl.constexpr,
    NORMALIZE: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK: tl.constexpr,
):
    kc = tl.program_id(0)
    blk = tl.program_id(1)
    k = kc // C
    c = kc % C
    offs = blk * BLOCK + tl.arange(0, BLOCK)
    mask = offs < L
    if PER_PIXEL:
        s = tl.load(scale_ptr + kc * L + offs, mask=mask, other=0.0).to(ACC)
    else:
        s = tl.load(scale_ptr + kc).to(ACC)
    acc_s = tl.zeros([BLOCK], dtype=ACC)
    acc_t = tl.zeros([BLOCK], dtype=ACC)
    for q in range(tl.load(offsets_ptr + k), tl.load(offsets_ptr + k + 1)):
        p = tl.load(order_ptr + q) * C + c
        g = tl.load(gy_ptr + p * L + offs, mask=mask, other=0.0).to(ACC)
        x = tl.load(x_ptr + p * L + offs, mask=mask, other=0.0).to(ACC)
        if NORMALIZE:
            x = (x - tl.load(mean_ptr + p)) * tl.load(rstd_ptr + p)
        else:
            tl.store(gx_ptr + p * L + offs, (s * g).to(gx_ptr.dtype.element_ty), mask=mask)
        acc_s += g * x
        acc_t += g
    if PER_PIXEL:
        tl.store(gscale_ptr + kc * L + offs, acc_s.to(gscale_ptr.dtype.element_ty), mask=mask)
        tl.store(gshift_ptr + kc * L + offs, acc_t.to(gshift_ptr.dtype.element_ty), mask=mask)
    else:
        tl.store(gscale_ptr + kc * NBLOCKS + blk, tl.sum(acc_s, axis=0))
        tl.store(gshift_ptr + kc * NBLOCKS + blk, tl.sum(acc_t, axis=0))


@triton.jit
def _d_xhat(gy_ptr, x_ptr, scale_ptr, s_channel, row, base, offs, mask, L, mean, rstd,
            PER_PIXEL: tl.constexpr, ACC: tl.constexpr):
    """d = scale ⊙ dy and the normalized input x̂ for one block of a plane (both passes need them)."""
    if PER_PIXEL:
        s = tl.load(scale_ptr + row * L + offs, mask=mask, other=0.0).to(ACC)
    else:
        s = s_channel
    d = s * tl.load(gy_ptr + base + offs, mask=mask, other=0.0).to(ACC)
    xh = (tl.load(x_ptr + base + offs, mask=mask, other=0.0).to(ACC) - mean) * rstd
    return d, xh


@triton.jit
def _scale_shift_bwd_dx_kernel(
    gy_ptr,     # (N, C, L)
    x_ptr,      # (N, C, L)
    scale_ptr,  # (Hn, C, S)
    index_ptr,  # (N,) int64
    mean_ptr,   # (N, C) accumulation dtype
    rstd_ptr,   # (N, C)
    gx_ptr,     # (N, C, L)
    C, L,
    PER_PIXEL: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK: tl.constexpr,
):
    p = tl.program_id(0)
    row = tl.load(index_ptr + p // C) * C + p % C
    base = p.to(tl.int64) * L
    mean = tl.load(mean_ptr + p)
    rstd = tl.load(rstd_ptr + p)
    s_channel = tl.load(scale_ptr + row).to(ACC)  # the per-channel scale (unused when PER_PIXEL)
    # Instance-norm backward: dx = rstd * (d - mean(d) - xhat * mean(d * xhat)), d = scale * dy.
    sum_d = tl.zeros([BLOCK], dtype=ACC)
    sum_dx = tl.zeros([BLOCK], dtype=ACC)
    for start in range(0, L, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        mask = offs < L
        d, xh = _d_xhat(gy_ptr, x_ptr, scale_ptr, s_channel, row, base, offs, mask, L, mean, rstd, PER_PIXEL, ACC)
        sum_d += d
        sum_dx += d * xh
    md = tl.sum(sum_d, axis=0) / L
    mdx = tl.sum(sum_dx, axis=0) / L
    for start in range(0, L, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        mask = offs < L
        d, xh = _d_xhat(gy_ptr, x_ptr, scale_ptr, s_channel, row, base, offs, mask, L, mean, rstd, PER_PIXEL, ACC)
        tl.store(gx_ptr + base + offs, (rstd * (d - md - xh * mdx)).to(gx_ptr.dtype.element_ty), mask=mask)


def _block(L: int, cap: int) -> int:
    return min(cap, triton.next_power_of_2(max(L, 1)))


def scale_shift_forward(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, index: torch.Tensor,
                        normalize: bool, eps: float):
    """x (N, C, L), scale/shift (Hn, C, S), index (N,) -> y (N, C, L), mean and rstd ((N, C) or empty)."""
    n, c, L = x.shape
    acc = acc_dtype(x.dtype)
    mean = torch.empty(n if normalize else 0, c, dtype=acc, device=x.device)
    rstd = torch.empty_like(mean)
    y = torch.empty_like(x)
    if y.numel() == 0:
        return y, mean, rstd
    blk = _block(L, BLOCK)
    if normalize:
        _scale_shift_stats_kernel[(n * c,)](x, mean, rstd, L, eps, ACC=tl_acc(x.dtype), BLOCK=blk)
    _scale_shift_fwd_kernel[(n * c, triton.cdiv(L, blk))](
        x, scale, shift, index, mean, rstd, y, c, L,
        PER_PIXEL=scale.shape[2] != 1, NORMALIZE=normalize, ACC=tl_acc(x.dtype), BLOCK=blk)
    return y, mean, rstd


def scale_shift_backward(grad_y: torch.Tensor, x: torch.Tensor, scale: torch.Tensor, index: torch.Tensor,
                         order: torch.Tensor, offsets: torch.Tensor, mean: torch.Tensor, rstd: torch.Tensor,
                         normalize: bool):
    """Gradients of :func:`scale_shift_forward` for x, scale and shift."""
    n, c, L = x.shape
    hn = scale.shape[0]
    per_pixel = scale.shape[2] != 1
    grad_x = torch.empty_like(x)
    if x.numel() == 0:
        return grad_x, torch.zeros_like(scale), torch.zeros_like(scale)
    blk = _block(L, BLOCK_PARAM)
    nblocks = triton.cdiv(L, blk)
    if per_pixel:
        gs, gt = torch.empty_like(scale), torch.empty_like(scale)
    else:
        gs = torch.empty(hn, c, nblocks, dtype=acc_dtype(x.dtype), device=x.device)
        gt = torch.empty_like(gs)
    _scale_shift_bwd_param_kernel[(hn * c, nblocks)](
        grad_y, x, scale, order, offsets, mean, rstd, grad_x, gs, gt, c, L, nblocks,
        PER_PIXEL=per_pixel, NORMALIZE=normalize, ACC=tl_acc(x.dtype), BLOCK=blk)
    if not per_pixel:
        gs = gs.sum(-1, keepdim=True).to(scale.dtype)
        gt = gt.sum(-1, keepdim=True).to(scale.dtype)
    if normalize:
        _scale_shift_bwd_dx_kernel[(n * c,)](grad_y, x, scale, index, mean, rstd, grad_x, c, L,
                                             PER_PIXEL=per_pixel, ACC=tl_acc(x.dtype), BLOCK=_block(L, BLOCK))
    return grad_x, gs, gt


def compile_specs():
    """(kernel, signature, constexprs) for ahead-of-time compilation checks without a GPU."""
    specs = []
    for dt in ("fp32", "fp16", "bf16"):
        acc = "fp32"
        specs.append((_scale_shift_stats_kernel,
                      {"x_ptr": f"*{dt}", "mean_ptr": f"*{acc}", "rstd_ptr": f"*{acc}", "L": "i32", "eps": "fp32",
                       "ACC": "constexpr", "BLOCK": "constexpr"},
                      {"ACC": tl.float32, "BLOCK": BLOCK}))
        for per_pixel in (True, False):
            for normalize in (True, False):
                specs.append((_scale_shift_fwd_kernel,
                              {"x_ptr": f"*{dt}", "scale_ptr": f"*{dt}", "shift_ptr": f"*{dt}", "index_ptr": "*i64",
                               "mean_ptr": f"*{acc}", "rstd_ptr": f"*{acc}", "y_ptr": f"*{dt}", "C": "i32", "L": "i32",
                               "PER_PIXEL": "constexpr", "NORMALIZE": "constexpr", "ACC": "constexpr",
                               "BLOCK": "constexpr"},
                              {"PER_PIXEL": per_pixel, "NORMALIZE": normalize, "ACC": tl.float32, "BLOCK": BLOCK}))
                param = f"*{dt}" if per_pixel else f"*{acc}"
                specs.append((_scale_shift_bwd_param_kernel,
                              {"gy_ptr": f"*{dt}", "x_ptr": f"*{dt}", "scale_ptr": f"*{dt}", "order_ptr": "*i64",
                               "offsets_ptr": "*i64", "mean_ptr": f"*{acc}", "rstd_ptr": f"*{acc}", "gx_ptr": f"*{dt}",
                               "gscale_ptr": param, "gshift_ptr": param, "C": "i32", "L": "i32", "NBLOCKS": "i32",
                               "PER_PIXEL": "constexpr", "NORMALIZE": "constexpr", "ACC": "constexpr",
                               "BLOCK": "constexpr"},
                              {"PER_PIXEL": per_pixel, "NORMALIZE": normalize, "ACC": tl.float32,
                               "BLOCK": BLOCK_PARAM}))
            specs.append((_scale_shift_bwd_dx_kernel,
                          {"gy_ptr": f"*{dt}", "x_ptr": f"*{dt}", "scale_ptr": f"*{dt}", "index_ptr": "*i64",
                           "mean_ptr": f"*{acc}", "rstd_ptr": f"*{acc}", "gx_ptr": f"*{dt}", "C": "i32", "L": "i32",
                           "PER_PIXEL": "constexpr", "ACC": "constexpr", "BLOCK": "constexpr"},
                          {"PER_PIXEL": per_pixel, "ACC": tl.float32, "BLOCK": BLOCK}))
    return specs
