"""Triton kernels for norm_relu_pool: instance norm + affine + ReLU + 2×2 average pool, fused.

x is (N, C, H, W) contiguous. Each program takes a tile of PLANES whole (n, c) planes (PLANES·L ≈
1024 elements: ConvNet-3's 8×8 planes go 16 to a program, its 32×32 ones one each), so small planes
still fill a program; a plane larger than one block is looped over. Mirrors
csrc/cpu/norm_relu_pool.cpp:

* ``_norm_relu_pool_fwd_kernel``: two stat passes (mean, then the sum of squared deviations),
  then one pass that normalizes, applies weight/bias and ReLU and, with POOL, averages each 2×2
  window (its four corners loaded with strided offsets); only the output is written.
* ``_norm_relu_pool_bwd_kernel``: the pooled gradient spread over its windows (×0.25, zero on the
  odd last row/column the floor-mode pool drops), masked by the ReLU recomputed from x, gives d;
  one pass sums Σd and Σd·x̂, a second writes dx = weight·rstd·((d − mean d) − x̂·mean(d·x̂)). The
  per-plane Σd·x̂ and Σd go to an (N, C) buffer that torch sums over n: no atomics, deterministic.
Accumulation is float32 for half types (float64 for float64). The double backward runs as torch
ops (``reference.double_backward``).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._dtypes import acc_dtype, tl_acc
from .._triton_plane import plane_mean_rstd

TILE = 1024  # elements per program and loop step: PLANES·BLOCK


@triton.jit
def _act(x, mean, rstd, g, b):
    # (x − mean)·rstd first, not folded into one affine map, which cancels badly when
    # |mean| ≫ std. `z < 0 ? 0 : z` keeps NaN, like torch.relu.
    z = g * ((x - mean) * rstd) + b
    return tl.where(z < 0, 0.0, z)


@triton.jit
def _tile_rows(NC, PLANES: tl.constexpr):
    """This program's plane numbers (int64) and which of them exist."""
    rows = tl.program_id(0).to(tl.int64) * PLANES + tl.arange(0, PLANES)
    return rows, rows < NC


@triton.jit
def _channel_affine(w_ptr, b_ptr, rows, rmask, C, ACC: tl.constexpr):
    """Each plane's weight and bias (its channel's), as columns to broadcast over the plane."""
    c = rows % C
    g = tl.load(w_ptr + c, mask=rmask, other=0.0).to(ACC)[:, None]
    b = tl.load(b_ptr + c, mask=rmask, other=0.0).to(ACC)[:, None]
    return g, b


@triton.jit
def _norm_relu_pool_fwd_kernel(
    x_ptr,     # (N, C, H, W)
    w_ptr,     # (C,)
    b_ptr,     # (C,)
    out_ptr,   # (N, C, H // 2, W // 2) with POOL, else (N, C, H, W)
    mean_ptr,  # (N, C) accumulation dtype
    rstd_ptr,  # (N, C)
    NC, C, H, W, eps,
    POOL: tl.constexpr,
    ACC: tl.constexpr,
    PLANES: tl.constexpr,
    BLOCK: tl.constexpr,
):
    rows, rmask = _tile_rows(NC, PLANES)
    L = H * W
    mean, rstd = plane_mean_rstd(x_ptr, rows, rmask, L, eps, ACC, BLOCK)
    tl.store(mean_ptr + rows, mean, mask=rmask)
    tl.store(rstd_ptr + rows, rstd, mask=rmask)
    g, b = _channel_affine(w_ptr, b_ptr, rows, rmask, C, ACC)
    mean = mean[:, None]
    rstd = rstd[:, None]
    base = x_ptr + rows[:, None] * L
    if POOL:
        Wo = W // 2
        Lo = (H // 2) * Wo
        obase = out_ptr + rows[:, None] * Lo
        for start in range(0, Lo, BLOCK):
            offs = start + tl.arange(0, BLOCK)[None, :]
            mask = rmask[:, None] & (offs < Lo)
            # Top-left corner of each output pixel's window; floor mode never reaches an odd
            # last row/column, so the other three corners are in the plane too.
            top = base + (offs // Wo) * (2 * W) + (offs % Wo) * 2
            row0 = (_act(tl.load(top, mask=mask, other=0.0).to(ACC), mean, rstd, g, b)
                    + _act(tl.load(top + 1, mask=mask, other=0.0).to(ACC), mean, rstd, g, b))
            row1 = (_act(tl.load(top + W, mask=mask, other=0.0).to(ACC), mean, rstd, g, b)
                    + _act(tl.load(top + W + 1, mask=mask, other=0.0).to(ACC), mean, rstd, g, b))
            tl.store(obase + offs, ((row0 + row1) * 0.25).to(out_ptr.dtype.element_ty), mask=mask)
    else:
        obase = out_ptr + rows[:, None] * L
        for start in range(0, L, BLOCK):
            offs = start + tl.arange(0, BLOCK)[None, :]
            mask = rmask[:, None] & (offs < L)
            y = _act(tl.load(base + offs, mask=mask, other=0.0).to(ACC), mean, rstd, g, b)
            tl.store(obase + offs, y.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _d_xhat(go_base, x_base, offs, mask, H, W, mean, rstd, g, b, POOL: tl.constexpr, ACC: tl.constexpr):
    """d (the gradient at the norm's output: the pixel's share of the pooled gradient where the
    ReLU passed) and x̂ for one block of a tile; both backward passes need them."""
    xh = (tl.load(x_base + offs, mask=mask, other=0.0).to(ACC) - mean) * rstd
    if POOL:
        i = offs // W
        j = offs % W
        Wo = W // 2
        inside = mask & (i < (H // 2) * 2) & (j < Wo * 2)
        u = tl.load(go_base + (i // 2) * Wo + j // 2, mask=inside, other=0.0).to(ACC) * 0.25
    else:
        u = tl.load(go_base + offs, mask=mask, other=0.0).to(ACC)
    # The same expression as the forward's _act, so the mask matches the ReLU it saw.
    d = tl.where(g * xh + b > 0, u, 0.0)
    return d, xh


@triton.jit
def _norm_relu_pool_bwd_kernel(
    go_ptr,    # (N, C, H // 2, W // 2) with POOL, else (N, C, H, W)
    x_ptr,     # (N, C, H, W)
    w_ptr,     # (C,)
    b_ptr,     # (C,)
    mean_ptr,  # (N, C) accumulation dtype
    rstd_ptr,  # (N, C)
    gx_ptr,    # (N, C, H, W); written only with NEED_X
    pw_ptr,    # (N, C) accumulation dtype: per-plane Σd·x̂; written only with NEED_WB
    pb_ptr,    # (N, C): per-plane Σd
    NC, C, H, W,
    POOL: tl.constexpr,
    NEED_X: tl.constexpr,
    NEED_WB: tl.constexpr,
    ACC: tl.constexpr,
    PLANES: tl.constexpr,
    BLOCK: tl.constexpr,
):
    rows, rmask = _tile_rows(NC, PLANES)
    L = H * W
    x_base = x_ptr + rows[:, None] * L
    if POOL:
        go_base = go_ptr + rows[:, None] * ((H // 2) * (W // 2))
    else:
        go_base = go_ptr + rows[:, None] * L
    mean = tl.load(mean_ptr + rows, mask=rmask, other=0.0)[:, None]
    rstd = tl.load(rstd_ptr + rows, mask=rmask, other=0.0)[:, None]
    g, b = _channel_affine(w_ptr, b_ptr, rows, rmask, C, ACC)
    sum_d = tl.zeros([PLANES, BLOCK], dtype=ACC)
    sum_dx = tl.zeros([PLANES, BLOCK], dtype=ACC)
    for start in range(0, L, BLOCK):
        offs = start + tl.arange(0, BLOCK)[None, :]
        d, xh = _d_xhat(go_base, x_base, offs, rmask[:, None] & (offs < L), H, W, mean, rstd, g, b, POOL, ACC)
        sum_d += d
        sum_dx += d * xh
    sd = tl.sum(sum_d, axis=1)
    sdx = tl.sum(sum_dx, axis=1)
    if NEED_WB:
        tl.store(pw_ptr + rows, sdx, mask=rmask)
        tl.store(pb_ptr + rows, sd, mask=rmask)
    if NEED_X:
        md = (sd / L)[:, None]
        mdx = (sdx / L)[:, None]
        k = g * rstd
        gx_base = gx_ptr + rows[:, None] * L
        for start in range(0, L, BLOCK):
            offs = start + tl.arange(0, BLOCK)[None, :]
            mask = rmask[:, None] & (offs < L)
            d, xh = _d_xhat(go_base, x_base, offs, mask, H, W, mean, rstd, g, b, POOL, ACC)
            tl.store(gx_base + offs, (k * ((d - md) - xh * mdx)).to(gx_ptr.dtype.element_ty), mask=mask)


def _tiling(L: int) -> tuple[int, int]:
    """(PLANES, BLOCK): a block covers a whole plane up to TILE elements, and small planes share a
    program so that each still handles about TILE elements."""
    block = min(TILE, triton.next_power_of_2(max(L, 1)))
    return TILE // block, block


def norm_relu_pool_forward(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float, pool: bool):
    """x (N, C, H, W), weight/bias (C,) -> out ((N, C, H // 2, W // 2) with pool, else x's shape),
    mean and rstd ((N, C), accumulation dtype)."""
    n, c, h, w = x.shape
    acc = acc_dtype(x.dtype)
    out = x.new_empty(n, c, h // 2 if pool else h, w // 2 if pool else w)
    mean = torch.empty(n, c, dtype=acc, device=x.device)
    rstd = torch.empty_like(mean)
    if n * c == 0 or h * w == 0:
        return out, mean, rstd
    planes, block = _tiling(h * w)
    _norm_relu_pool_fwd_kernel[(triton.cdiv(n * c, planes),)](
        x, weight, bias, out, mean, rstd, n * c, c, h, w, eps,
        POOL=pool, ACC=tl_acc(x.dtype), PLANES=planes, BLOCK=block)
    return out, mean, rstd


def norm_relu_pool_backward(grad_out: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                            mean: torch.Tensor, rstd: torch.Tensor, pool: bool, need_x: bool, need_wb: bool):
    """Gradients of :func:`norm_relu_pool_forward` for x, weight and bias (empty where not needed)."""
    n, c, h, w = x.shape
    acc = acc_dtype(x.dtype)
    grad_x = torch.empty_like(x) if need_x else x.new_empty(0)
    launch = n * c > 0 and h * w > 0 and (need_x or need_wb)
    # Zeros only when no kernel fills the partials (empty planes still get zero dweight/dbias).
    alloc = torch.empty if launch else torch.zeros
    part_w = alloc(n if need_wb else 0, c, dtype=acc, device=x.device)
    part_b = alloc(n if need_wb else 0, c, dtype=acc, device=x.device)
    if launch:
        planes, block = _tiling(h * w)
        _norm_relu_pool_bwd_kernel[(triton.cdiv(n * c, planes),)](
            grad_out, x, weight, bias, mean, rstd, grad_x, part_w, part_b, n * c, c, h, w,
            POOL=pool, NEED_X=need_x, NEED_WB=need_wb, ACC=tl_acc(x.dtype), PLANES=planes, BLOCK=block)
    if not need_wb:
        return grad_x, x.new_empty(0), x.new_empty(0)
    # Summed over n by torch's reduction: a fixed order, no atomics.
    return grad_x, part_w.sum(0).to(weight.dtype), part_b.sum(0).to(weight.dtype)


def compile_specs():
    """(kernel, signature, constexprs) for ahead-of-time compilation checks without a GPU: a
    32×32-plane tiling and an 8×8 one (16 planes per program)."""
    specs = []
    for dt in ("fp32", "fp16", "bf16"):
        acc = "fp32"
        for pool in (True, False):
            for planes, block in (_tiling(1024), _tiling(64)):
                specs.append((_norm_relu_pool_fwd_kernel,
                              {"x_ptr": f"*{dt}", "w_ptr": f"*{dt}", "b_ptr": f"*{dt}", "out_ptr": f"*{dt}",
                               "mean_ptr": f"*{acc}", "rstd_ptr": f"*{acc}", "NC": "i32", "C": "i32", "H": "i32",
                               "W": "i32", "eps": "fp32", "POOL": "constexpr", "ACC": "constexpr",
                               "PLANES": "constexpr", "BLOCK": "constexpr"},
                              {"POOL": pool, "ACC": tl.float32, "PLANES": planes, "BLOCK": block}))
                for need_x, need_wb in ((True, True), (True, False), (False, True)):
                    specs.append((_norm_relu_pool_bwd_kernel,
                                  {"go_ptr": f"*{dt}", "x_ptr": f"*{dt}", "w_ptr": f"*{dt}", "b_ptr": f"*{dt}",
                                   "mean_ptr": f"*{acc}", "rstd_ptr": f"*{acc}", "gx_ptr": f"*{dt}",
                                   "pw_ptr": f"*{acc}", "pb_ptr": f"*{acc}", "NC": "i32", "C": "i32", "H": "i32",
                                   "W": "i32", "POOL": "constexpr", "NEED_X": "constexpr", "NEED_WB": "constexpr",
                                   "ACC": "constexpr", "PLANES": "constexpr", "BLOCK": "constexpr"},
                                  {"POOL": pool, "NEED_X": need_x, "NEED_WB": need_wb, "ACC": tl.float32,
                                   "PLANES": planes, "BLOCK": block}))
    return specs
