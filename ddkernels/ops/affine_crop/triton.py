"""Triton kernels for affine_crop: forward blend, the image's gradient as a gather, the windows'
gradient as per-plane partials.

Forward: one program per (output plane, block of pixels) computes its taps from the window directly
(the arithmetic of the reference and the C++ kernel). Image gradient: one program per (input plane,
block of stored pixels) *gathers*, window by window, the output pixels that read each stored pixel:
taps are monotone in the output coordinate, so they form a contiguous range per source row/column
(tables from the reference's taps and ``searchsorted``) and there are no atomics. Windows' gradient:
one program per (window, image, channel) reduces its plane; the partials are summed over channels
afterwards in a fixed order. Accumulation is float32 for half types.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._dtypes import acc_dtype, tl_acc
from .reference import axis_taps

BLOCK = 256


@triton.jit
def _taps(start, length, o, n, size):
    """Per output coordinate ``o`` (of ``n``): padded lower/upper tap indices, upper weight, ds/dlength."""
    u = o.to(start.dtype) + 0.5
    scale = length / n
    s = start + (scale * u - 0.5)
    upper = start + tl.maximum(length - 1.0, 0.0)
    dlen = tl.where(s < start, 0.0, tl.where(s > upper, tl.where(length - 1.0 >= 0.0, 1.0, 0.0), u / n))
    s = tl.where(s < start, start, tl.where(s > upper, upper, s))
    f = tl.floor(s)
    lam = s - f
    i0 = tl.minimum(tl.maximum(f + 1.0, 0.0), size + 1.0).to(tl.int32)
    i1 = tl.minimum(tl.maximum(f + 2.0, 0.0), size + 1.0).to(tl.int32)
    return i0, i1, lam, dlen.to(start.dtype)


@triton.jit
def _tap(base, r, c, h, w, pad, mask, ACC: tl.constexpr):
    """The padded plane at padded (r, c): the image inside, ``pad`` on the ring."""
    inside = mask & (r >= 1) & (r <= h) & (c >= 1) & (c <= w)
    return tl.load(base + (r - 1) * w + (c - 1), mask=inside, other=0.0).to(ACC) + tl.where(inside, 0.0, pad)


@triton.jit
def _samples(x_ptr, th_ptr, plane, offs, mask, N, C, T, h, w, H, W, pad, ACC: tl.constexpr):
    """Output plane ``plane`` (= k·N·C + b·C + c) at pixels ``offs``: the four taps, both upper
    weights and both ds/dlength, from window ``theta[b, k]``."""
    k = plane // (N * C)
    p = plane % (N * C)
    tb = th_ptr + ((p // C) * T + k) * 4
    ry0, ry1, ly, dly = _taps(tl.load(tb).to(ACC), tl.load(tb + 2).to(ACC), offs // W, H, h)
    cx0, cx1, lx, dlx = _taps(tl.load(tb + 1).to(ACC), tl.load(tb + 3).to(ACC), offs % W, W, w)
    base = x_ptr + p.to(tl.int64) * h * w
    v00 = _tap(base, ry0, cx0, h, w, pad, mask, ACC)
    v01 = _tap(base, ry0, cx1, h, w, pad, mask, ACC)
    v10 = _tap(base, ry1, cx0, h, w, pad, mask, ACC)
    v11 = _tap(base, ry1, cx1, h, w, pad, mask, ACC)
    return v00, v01, v10, v11, ly, lx, dly, dlx


@triton.jit
def _affine_crop_fwd_kernel(
    x_ptr,      # (N, C, h, w) contiguous
    th_ptr,     # (N, T, 4) contiguous
    y_ptr,      # (T*N, C, H, W) contiguous
    N, C, T, h, w, H, W, pad,
    ACC: tl.constexpr,
    BLOCK: tl.constexpr,
):
    plane = tl.program_id(0)  # = k * N*C + (b*C + c), tile-major
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < H * W
    v00, v01, v10, v11, ly, lx, _dly, _dlx = _samples(x_ptr, th_ptr, plane, offs, mask, N, C, T, h, w, H, W, pad, ACC)
    out = (1.0 - ly) * ((1.0 - lx) * v00 + lx * v01) + ly * ((1.0 - lx) * v10 + lx * v11)
    tl.store(y_ptr + plane.to(tl.int64) * H * W + offs, out.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _affine_crop_bwd_x_kernel(
    gy_ptr,                       # (T*N, C, H, W) contiguous
    gx_ptr,                       # (N, C, h, w) contiguous
    ri0_ptr, ri1_ptr, rl_ptr,     # (N, T, H): padded row taps, upper weight
    rlo_ptr, rn_ptr,              # (N, T, h): first output row reading each stored row, how many
    ci0_ptr, ci1_ptr, cl_ptr,     # (N, T, W)
    clo_ptr, cn_ptr,              # (N, T, w)
    N, C, T, h, w, H, W, KH, KW,
    ACC: tl.constexpr,
    BLOCK: tl.constexpr,
):
    p = tl.program_id(0)  # input plane b*C + c
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < h * w
    b = p // C
    r = offs // w
    x = offs % w
    acc = tl.zeros([BLOCK], dtype=ACC)
    for k in range(T):
        bk = b * T + k
        gbase = gy_ptr + ((k * N) * C + p).to(tl.int64) * H * W
        lo_r = tl.load(rlo_ptr + bk * h + r, mask=mask, other=0)
        n_r = tl.load(rn_ptr + bk * h + r, mask=mask, other=0)
        lo_c = tl.load(clo_ptr + bk * w + x, mask=mask, other=0)
        n_c = tl.load(cn_ptr + bk * w + x, mask=mask, other=0)
        for a in range(KH):
            ma = mask & (a < n_r)
            oy = lo_r + a
            i0 = tl.load(ri0_ptr + bk * H + oy, mask=ma, other=0)
            lam = tl.load(rl_ptr + bk * H + oy, mask=ma, other=0.0).to(ACC)
            wy = tl.where(i0 == r + 1, 1.0 - lam, lam)
            for q in range(KW):
                mq = ma & (q < n_c)
                ox = lo_c + q
                j0 = tl.load(ci0_ptr + bk * W + ox, mask=mq, other=0)
                mu = tl.load(cl_ptr + bk * W + ox, mask=mq, other=0.0).to(ACC)
                wx = tl.where(j0 == x + 1, 1.0 - mu, mu)
                g = tl.load(gbase + oy * W + ox, mask=mq, other=0.0).to(ACC)
                acc += tl.where(mq, wy * wx * g, 0.0)
    tl.store(gx_ptr + p.to(tl.int64) * h * w + offs, acc.to(gx_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _affine_crop_bwd_theta_kernel(
    gy_ptr, x_ptr, th_ptr,
    part_ptr,   # (N, C, T, 4) in the accumulation type
    N, C, T, h, w, H, W, pad,
    ACC: tl.constexpr,
    BLOCK: tl.constexpr,
):
    plane = tl.program_id(0)  # = k * N*C + (b*C + c)
    k = plane // (N * C)
    p = plane % (N * C)
    gbase = gy_ptr + plane.to(tl.int64) * H * W
    a_top = tl.zeros([BLOCK], dtype=ACC)
    a_left = tl.zeros([BLOCK], dtype=ACC)
    a_hgt = tl.zeros([BLOCK], dtype=ACC)
    a_wid = tl.zeros([BLOCK], dtype=ACC)
    for start in range(0, H * W, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        mask = offs < H * W
        v00, v01, v10, v11, ly, lx, dly, dlx = _samples(x_ptr, th_ptr, plane, offs, mask, N, C, T, h, w, H, W, pad, ACC)
        g = tl.load(gbase + offs, mask=mask, other=0.0).to(ACC)
        dsy = g * ((1.0 - lx) * (v10 - v00) + lx * (v11 - v01))
        dsx = g * ((1.0 - ly) * (v01 - v00) + ly * (v11 - v10))
        a_top += dsy
        a_hgt += dsy * dly
        a_left += dsx
        a_wid += dsx * dlx
    out = part_ptr + ((p * T) + k) * 4
    tl.store(out, tl.sum(a_top, 0))
    tl.store(out + 1, tl.sum(a_left, 0))
    tl.store(out + 2, tl.sum(a_hgt, 0))
    tl.store(out + 3, tl.sum(a_wid, 0))


def affine_crop_forward(x: torch.Tensor, theta: torch.Tensor, out_h: int, out_w: int, pad: float) -> torch.Tensor:
    n, c, h, w = x.shape
    t = theta.shape[1]
    y = x.new_empty(t * n, c, out_h, out_w)
    if y.numel():
        grid = (t * n * c, triton.cdiv(out_h * out_w, BLOCK))
        _affine_crop_fwd_kernel[grid](x, theta, y, n, c, t, h, w, out_h, out_w, pad, ACC=tl_acc(x.dtype), BLOCK=BLOCK)
    return y


def gather_ranges(i0: torch.Tensor, i1: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """For every stored index ``r`` (padded ``r + 1``) of every window: the first output coordinate
    whose taps read it and how many do (``(N, T, size)`` each): ``i1 >= r + 1`` and ``i0 <= r + 1``,
    a contiguous range because the taps are non-decreasing."""
    pr = torch.arange(1, size + 1, device=i0.device, dtype=i0.dtype).expand(*i0.shape[:-1], size).contiguous()
    lo = torch.searchsorted(i1.contiguous(), pr, right=False)
    hi = torch.searchsorted(i0.contiguous(), pr, right=True)
    return lo.to(torch.int32).contiguous(), (hi - lo).clamp_min(0).to(torch.int32).contiguous()


def affine_crop_backward(grad_y: torch.Tensor, x: torch.Tensor, theta: torch.Tensor, pad: float,
                         need_x: bool, need_theta: bool):
    n, c, h, w = x.shape
    t, out_h, out_w = theta.shape[1], grad_y.shape[2], grad_y.shape[3]
    acc = tl_acc(x.dtype)
    gx = x.new_zeros(x.shape if need_x else (0,))
    gt = theta.new_zeros(theta.shape if need_theta else (0,))
    if not grad_y.numel() or not x.numel():
        return gx, gt
    if need_x:
        th = theta.to(acc_dtype(theta.dtype))  # the tables in the kernels' coordinate precision
        ri0, ri1, rl = axis_taps(th[..., 0], th[..., 2], out_h, h)
        ci0, ci1, cl = axis_taps(th[..., 1], th[..., 3], out_w, w)
        rlo, rn = gather_ranges(ri0, ri1, h)
        clo, cn = gather_ranges(ci0, ci1, w)
        kh, kw = max(1, int(rn.max())), max(1, int(cn.max()))
        tabs = [ri0.to(torch.int32).contiguous(), ri1.to(torch.int32).contiguous(), rl.contiguous(), rlo, rn,
                ci0.to(torch.int32).contiguous(), ci1.to(torch.int32).contiguous(), cl.contiguous(), clo, cn]
        grid = (n * c, triton.cdiv(h * w, BLOCK))
        _affine_crop_bwd_x_kernel[grid](grad_y, gx, *tabs, n, c, t, h, w, out_h, out_w, kh, kw, ACC=acc, BLOCK=BLOCK)
    if need_theta:
        part = torch.empty(n, c, t, 4, dtype=acc_dtype(x.dtype), device=x.device)
        _affine_crop_bwd_theta_kernel[(t * n * c,)](grad_y, x, theta, part, n, c, t, h, w, out_h, out_w, pad,
                                                    ACC=acc, BLOCK=BLOCK)
        gt = part.sum(1).to(theta.dtype)  # channels in a fixed order
    return gx, gt


def compile_specs():
    """(kernel, signature, constexprs) for ahead-of-time compilation checks without a GPU."""
    ints = {k: "i32" for k in ("N", "C", "T", "h", "w", "H", "W")}
    specs = []
    for dt in ("fp32", "fp16", "bf16"):
        fwd = {"x_ptr": f"*{dt}", "th_ptr": f"*{dt}", "y_ptr": f"*{dt}", **ints, "pad": "fp32",
               "ACC": "constexpr", "BLOCK": "constexpr"}
        specs.append((_affine_crop_fwd_kernel, fwd, {"ACC": tl.float32, "BLOCK": BLOCK}))
        tabs = {"ri0_ptr": "*i32", "ri1_ptr": "*i32", "rl_ptr": "*fp32", "rlo_ptr": "*i32", "rn_ptr": "*i32",
                "ci0_ptr": "*i32", "ci1_ptr": "*i32", "cl_ptr": "*fp32", "clo_ptr": "*i32", "cn_ptr": "*i32"}
        bx = {"gy_ptr": f"*{dt}", "gx_ptr": f"*{dt}", **tabs, **ints, "KH": "i32", "KW": "i32",
              "ACC": "constexpr", "BLOCK": "constexpr"}
        specs.append((_affine_crop_bwd_x_kernel, bx, {"ACC": tl.float32, "BLOCK": BLOCK}))
        bt = {"gy_ptr": f"*{dt}", "x_ptr": f"*{dt}", "th_ptr": f"*{dt}", "part_ptr": "*fp32", **ints, "pad": "fp32",
              "ACC": "constexpr", "BLOCK": "constexpr"}
        specs.append((_affine_crop_bwd_theta_kernel, bt, {"ACC": tl.float32, "BLOCK": BLOCK}))
    return specs
