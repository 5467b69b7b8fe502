"""Triton kernels for multi-formation: forward blend and backward gather.

Forward: one program per (output plane, block of pixels) computes its 4 taps directly from the
tile-local tap tables (padding = masked loads with other=0.5). Backward: one program per (input
plane, block of stored pixels) *gathers* the ≤ KH·KW output gradients that read each pixel, so
there are no atomics and the result is deterministic. Accumulation is float32 for half types.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._dtypes import tl_acc
from .tables import adjoint_taps, forward_taps

BLOCK = 256


@triton.jit
def _multi_formation_fwd_kernel(
    x_ptr,        # (N, C, h, w) contiguous
    y_ptr,        # (f*f*N, C, H, W) contiguous
    row_idx_ptr,  # (2, H) int64, tile-local source rows
    row_w_ptr,    # (2, H) fp32/fp64
    col_idx_ptr,  # (2, W) int64
    col_w_ptr,    # (2, W)
    NC, h, w, sh, sw, H, W,
    F: tl.constexpr,
    ACC: tl.constexpr,  # accumulation type: float64 for float64 inputs, else float32
    BLOCK: tl.constexpr,
):
    plane = tl.program_id(0)  # = k * N*C + (b*C + c), output planes are tile-major
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < H * W
    k = plane // NC
    p = plane % NC
    ti = k // F
    tj = k % F
    oy = offs // W
    ox = offs % W
    ry0 = tl.load(row_idx_ptr + oy, mask=mask, other=0) + ti * sh
    ry1 = tl.load(row_idx_ptr + H + oy, mask=mask, other=0) + ti * sh
    wy0 = tl.load(row_w_ptr + oy, mask=mask, other=0.0).to(ACC)
    wy1 = tl.load(row_w_ptr + H + oy, mask=mask, other=0.0).to(ACC)
    rx0 = tl.load(col_idx_ptr + ox, mask=mask, other=0) + tj * sw
    rx1 = tl.load(col_idx_ptr + W + ox, mask=mask, other=0) + tj * sw
    wx0 = tl.load(col_w_ptr + ox, mask=mask, other=0.0).to(ACC)
    wx1 = tl.load(col_w_ptr + W + ox, mask=mask, other=0.0).to(ACC)
    base = x_ptr + p.to(tl.int64) * h * w
    # Taps that fall in the 0.5 padding (right/bottom) are masked loads with other=0.5.
    v00 = tl.load(base + ry0 * w + rx0, mask=mask & (ry0 < h) & (rx0 < w), other=0.5).to(ACC)
    v01 = tl.load(base + ry0 * w + rx1, mask=mask & (ry0 < h) & (rx1 < w), other=0.5).to(ACC)
    v10 = tl.load(base + ry1 * w + rx0, mask=mask & (ry1 < h) & (rx0 < w), other=0.5).to(ACC)
    v11 = tl.load(base + ry1 * w + rx1, mask=mask & (ry1 < h) & (rx1 < w), other=0.5).to(ACC)
    out = wy0 * (wx0 * v00 + wx1 * v01) + wy1 * (wx0 * v10 + wx1 * v11)
    tl.store(y_ptr + plane.to(tl.int64) * H * W + offs, out.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _multi_formation_bwd_kernel(
    gy_ptr,       # (f*f*N, C, H, W) contiguous
    gx_ptr,       # (N, C, h, w) contiguous
    row_idx_ptr,  # (sh, KH) int64: output rows reading each tile-local source row
    row_w_ptr,    # (sh, KH)
    col_idx_ptr,  # (sw, KW) int64
    col_w_ptr,    # (sw, KW)
    NC, h, w, sh, sw, H, W,
    F: tl.constexpr,
    KH: tl.constexpr,
    KW: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK: tl.constexpr,
):
    p = tl.program_id(0)  # input plane b*C + c
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < h * w
    sy = offs // w
    sx = offs % w
    ti = sy // sh
    tj = sx // sw
    ry = sy - ti * sh
    rx = sx - tj * sw
    plane = (ti * F + tj) * NC + p
    gbase = gy_ptr + plane.to(tl.int64) * H * W
    acc = tl.zeros([BLOCK], dtype=ACC)
    for a in tl.static_range(KH):
        oy = tl.load(row_idx_ptr + ry * KH + a, mask=mask, other=0)
        wy = tl.load(row_w_ptr + ry * KH + a, mask=mask, other=0.0).to(ACC)
        for c in tl.static_range(KW):
            ox = tl.load(col_idx_ptr + rx * KW + c, mask=mask, other=0)
            wx = tl.load(col_w_ptr + rx * KW + c, mask=mask, other=0.0).to(ACC)
            g = tl.load(gbase + oy * W + ox, mask=mask, other=0.0).to(ACC)
            acc += (wy * wx) * g
    tl.store(gx_ptr + p.to(tl.int64) * h * w + offs, acc.to(gx_ptr.dtype.element_ty), mask=mask)


def multi_formation_forward(x: torch.Tensor, factor: int, out_h: int, out_w: int) -> torch.Tensor:
    n, c, h, w = x.shape
    sh, sw = -(-h // factor), -(-w // factor)
    ri, rw = forward_taps(sh, out_h, x.dtype, x.device)
    ci, cw = forward_taps(sw, out_w, x.dtype, x.device)
    y = x.new_empty(factor * factor * n, c, out_h, out_w)
    if y.numel():
        grid = (factor * factor * n * c, triton.cdiv(out_h * out_w, BLOCK))
        _multi_formation_fwd_kernel[grid](x, y, ri, rw, ci, cw, n * c, h, w, sh, sw, out_h, out_w,
                                          F=factor, ACC=tl_acc(x.dtype), BLOCK=BLOCK)
    return y


def multi_formation_backward(grad_y: torch.Tensor, factor: int, h: int, w: int) -> torch.Tensor:
    ff_n, c, out_h, out_w = grad_y.shape
    n = ff_n // (factor * factor)
    sh, sw = -(-h // factor), -(-w // factor)
    ri, rw = adjoint_taps(sh, out_h, grad_y.dtype, grad_y.device)
    ci, cw = adjoint_taps(sw, out_w, grad_y.dtype, grad_y.device)
    gx = grad_y.new_empty(n, c, h, w)
    if gx.numel():
        grid = (n * c, triton.cdiv(h * w, BLOCK))
        _multi_formation_bwd_kernel[grid](grad_y, gx, ri, rw, ci, cw, n * c, h, w, sh, sw, out_h, out_w,
                                          F=factor, KH=ri.shape[1], KW=ci.shape[1],
                                          ACC=tl_acc(grad_y.dtype), BLOCK=BLOCK)
    return gx


def compile_specs():
    """(kernel, signature, constexprs) for ahead-of-time compilation checks without a GPU."""
    ints = {k: "i32" for k in ("NC", "h", "w", "sh", "sw", "H", "W")}
    specs = []
    for dt in ("fp32", "fp16", "bf16"):
        acc = "fp32"
        fwd = {"x_ptr": f"*{dt}", "y_ptr": f"*{dt}", "row_idx_ptr": "*i64", "row_w_ptr": f"*{acc}",
               "col_idx_ptr": "*i64", "col_w_ptr": f"*{acc}", **ints, "F": "constexpr", "ACC": "constexpr", "BLOCK": "constexpr"}
        specs.append((_multi_formation_fwd_kernel, fwd, {"F": 2, "ACC": tl.float32, "BLOCK": BLOCK}))
        bwd = {"gy_ptr": f"*{dt}", "gx_ptr": f"*{dt}", "row_idx_ptr": "*i64", "row_w_ptr": f"*{acc}",
               "col_idx_ptr": "*i64", "col_w_ptr": f"*{acc}", **ints, "F": "constexpr", "KH": "constexpr",
               "KW": "constexpr", "ACC": "constexpr", "BLOCK": "constexpr"}
        specs.append((_multi_formation_bwd_kernel, bwd, {"F": 2, "KH": 4, "KW": 4, "ACC": tl.float32, "BLOCK": BLOCK}))
    return specs
