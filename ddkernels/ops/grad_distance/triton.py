"""Triton kernels for grad_distance: segmented row reductions over a packed row table.

The launcher packs each side into one ``(K, P)`` buffer (one copy: Triton takes one base pointer,
not a list of tensors) and reads the row table (tables.py). Forward: one program per
(class, row) reduces its row to ``(dot, |s|², |r|²)`` or its ``Σ(s-r)²`` / ``Σ|s-r|``; one program
per class then sums its rows in table order. Backward: one program per (class, row) computes the
row's coefficients and writes both gradients; the gradients are returned as views of one packed
buffer. No atomics: every sum has a fixed order, so results are deterministic. Half inputs
accumulate in float32.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from .tables import row_table, total_rows

BLOCK = 1024   # elements of a row per loop step
BLOCK_R = 128  # rows per loop step of the per-class reduction
METRIC_IDS = {"ours": 0, "mse": 1, "l1": 2, "l1_mean": 3, "global_cos": 4}
EPS = 1e-6


def _acc(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


@triton.jit
def _grad_distance_fwd_kernel(
    s_ptr,       # (K, P) packed syn
    r_ptr,       # (K, P) packed real
    start_ptr,   # (R,) int64 row start within P
    len_ptr,     # (R,) int32 row length
    scale_ptr,   # (R,) acc: multiplies the row's sum
    stats_ptr,   # (K, R, 3) acc out
    R, P,
    METRIC: tl.constexpr,
    BLOCK: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    k = pid // R
    q = pid % R
    base = k * P + tl.load(start_ptr + q)
    n = tl.load(len_ptr + q)
    acc_t = stats_ptr.dtype.element_ty
    a0 = tl.zeros([BLOCK], dtype=acc_t)
    a1 = tl.zeros([BLOCK], dtype=acc_t)
    a2 = tl.zeros([BLOCK], dtype=acc_t)
    for off in range(0, n, BLOCK):
        idx = off + tl.arange(0, BLOCK)
        m = idx < n
        s = tl.load(s_ptr + base + idx, mask=m, other=0.0).to(acc_t)
        r = tl.load(r_ptr + base + idx, mask=m, other=0.0).to(acc_t)
        if METRIC == 0 or METRIC == 4:
            a0 += s * r
            a1 += s * s
            a2 += r * r
        elif METRIC == 1:
            a0 += (s - r) * (s - r)
        else:
            a0 += tl.abs(s - r)
    scale = tl.load(scale_ptr + q)
    tl.store(stats_ptr + pid * 3, tl.sum(a0, axis=0) * scale)
    tl.store(stats_ptr + pid * 3 + 1, tl.sum(a1, axis=0))
    tl.store(stats_ptr + pid * 3 + 2, tl.sum(a2, axis=0))


@triton.jit
def _grad_distance_reduce_kernel(
    stats_ptr,   # (K, R, 3) acc
    active_ptr,  # (R,) int32
    dist_ptr,    # (K,) out, input dtype
    tot_ptr,     # (K, 3) acc out: class totals (global_cos backward reads them)
    R,
    METRIC: tl.constexpr,
    BLOCK_R: tl.constexpr,
):
    k = tl.program_id(0).to(tl.int64)
    acc_t = stats_ptr.dtype.element_ty
    a0 = tl.zeros([BLOCK_R], dtype=acc_t)
    a1 = tl.zeros([BLOCK_R], dtype=acc_t)
    a2 = tl.zeros([BLOCK_R], dtype=acc_t)
    for off in range(0, R, BLOCK_R):
        q = off + tl.arange(0, BLOCK_R)
        m = q < R
        row = stats_ptr + (k * R + q) * 3
        d = tl.load(row, mask=m, other=0.0)
        ss = tl.load(row + 1, mask=m, other=0.0)
        rr = tl.load(row + 2, mask=m, other=0.0)
        if METRIC == 0:
            on = tl.load(active_ptr + q, mask=m, other=0) != 0
            term = 1.0 - d / (tl.sqrt(ss) * tl.sqrt(rr) + 1e-6)
            a0 += tl.where(on, term, 0.0)
        else:
            a0 += d
            a1 += ss
            a2 += rr
    t0 = tl.sum(a0, axis=0)
    t1 = tl.sum(a1, axis=0)
    t2 = tl.sum(a2, axis=0)
    tl.store(tot_ptr + k * 3, t0)
    tl.store(tot_ptr + k * 3 + 1, t1)
    tl.store(tot_ptr + k * 3 + 2, t2)
    if METRIC == 4:
        out = 1.0 - t0 / (tl.sqrt(t1) * tl.sqrt(t2) + 1e-6)
    else:
        out = t0
    tl.store(dist_ptr + k, out.to(dist_ptr.dtype.element_ty))


@triton.jit
def _grad_distance_bwd_kernel(
    g_ptr,       # (K,) upstream gradient
    s_ptr,       # (K, P) packed syn
    r_ptr,       # (K, P) packed real
    gs_ptr,      # (K, P) out: d/d syn
    gr_ptr,      # (K, P) out: d/d real
    start_ptr,   # (R,) int64
    len_ptr,     # (R,) int32
    scale_ptr,   # (R,) acc
    active_ptr,  # (R,) int32
    cos_ptr,     # (K, R, 3) row stats ("ours") or (K, 3) class totals ("global_cos")
    R, P,
    METRIC: tl.constexpr,
    NEED_SYN: tl.constexpr,
    NEED_REAL: tl.constexpr,
    BLOCK: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    k = pid // R
    q = pid % R
    base = k * P + tl.load(start_ptr + q)
    n = tl.load(len_ptr + q)
    acc_t = scale_ptr.dtype.element_ty
    g = tl.load(g_ptr + k).to(acc_t)
    if METRIC == 0 or METRIC == 4:
        if METRIC == 0:
            st = cos_ptr + pid * 3
        else:
            st = cos_ptr + k * 3
        dot = tl.load(st)
        ns = tl.sqrt(tl.load(st + 1))
        nr = tl.sqrt(tl.load(st + 2))
        den = ns * nr + 1e-6
        # An inactive row, and a zero norm (as torch.norm's backward), get zero coefficients.
        on = (tl.load(active_ptr + q) != 0).to(acc_t)
        b = -g / den * on
        c = g * dot / (den * den) * on
        a_s = tl.where(ns > 0, c * nr / tl.where(ns > 0, ns, 1.0), 0.0)
        a_r = tl.where(nr > 0, c * ns / tl.where(nr > 0, nr, 1.0), 0.0)
    elif METRIC == 1:
        c = 2.0 * g
    else:
        c = g * tl.load(scale_ptr + q)
    for off in range(0, n, BLOCK):
        idx = off + tl.arange(0, BLOCK)
        m = idx < n
        s = tl.load(s_ptr + base + idx, mask=m, other=0.0).to(acc_t)
        r = tl.load(r_ptr + base + idx, mask=m, other=0.0).to(acc_t)
        if METRIC == 0 or METRIC == 4:
            d_s = a_s * s + b * r
            d_r = a_r * r + b * s
        else:
            e = s - r
            if METRIC == 1:
                d_s = c * e
            else:
                d_s = c * ((e > 0).to(acc_t) - (e < 0).to(acc_t))
            d_r = -d_s
        if NEED_SYN:
            tl.store(gs_ptr + base + idx, d_s.to(gs_ptr.dtype.element_ty), mask=m)
        if NEED_REAL:
            tl.store(gr_ptr + base + idx, d_r.to(gr_ptr.dtype.element_ty), mask=m)


def _pack(tensors) -> torch.Tensor:
    k = tensors[0].shape[0]
    return torch.cat([t.reshape(k, -1) for t in tensors], dim=1)


def _table(syn, metric):
    shapes = tuple(tuple(t.shape[1:]) for t in syn)
    return row_table(shapes, metric, _acc(syn[0].dtype), syn[0].device)


def _reduce(stats, active, metric, dtype):
    k, r = stats.shape[:2]
    dist = torch.empty(k, dtype=dtype, device=stats.device)
    tot = stats.new_empty(k, 3)
    if k:
        _grad_distance_reduce_kernel[(k,)](stats, active, dist, tot, r, METRIC=METRIC_IDS[metric], BLOCK_R=BLOCK_R)
    return dist, tot


def grad_distance_forward(syn, real, metric: str):
    """Batched tensors ``(K, *param_shape)`` -> ``(dist (K,), stats (K, R, 3))``."""
    start, length, scale, active = _table(syn, metric)
    s, r = _pack(syn), _pack(real)
    k, p = s.shape
    rows = total_rows(t.shape[1:] for t in syn)
    stats = torch.zeros(k, rows, 3, dtype=_acc(s.dtype), device=s.device)
    if k * rows:
        _grad_distance_fwd_kernel[(k * rows,)](s, r, start, length, scale, stats, rows, p,
                                               METRIC=METRIC_IDS[metric], BLOCK=BLOCK)
    return _reduce(stats, active, metric, s.dtype)[0], stats


def grad_distance_backward(grad, syn, real, stats, metric: str, need_syn: bool, need_real: bool):
    """Gradients w.r.t. syn and real (lists of views of one packed buffer each; [] if not needed)."""
    start, length, scale, active = _table(syn, metric)
    s, r = _pack(syn), _pack(real)
    k, p = s.shape
    rows = stats.shape[1]
    cos = _reduce(stats, active, metric, s.dtype)[1] if metric == "global_cos" else stats
    gs = torch.empty_like(s) if need_syn else s.new_empty(0)
    gr = torch.empty_like(r) if need_real else r.new_empty(0)
    if k * rows and (need_syn or need_real):
        _grad_distance_bwd_kernel[(k * rows,)](grad.contiguous(), s, r, gs, gr, start, length, scale, active, cos,
                                               rows, p, METRIC=METRIC_IDS[metric], NEED_SYN=need_syn,
                                               NEED_REAL=need_real, BLOCK=BLOCK)
    sizes = [math.prod(t.shape[1:]) for t in syn]

    def unpack(buf):
        return [v.view(t.shape) for v, t in zip(buf.split(sizes, dim=1), syn)]

    return (unpack(gs) if need_syn else []), (unpack(gr) if need_real else [])


def compile_specs():
    """(kernel, signature, constexprs) for ahead-of-time compilation checks without a GPU."""
    specs = []
    for dt in ("fp32", "fp16", "bf16"):
        for metric in METRIC_IDS.values():
            fwd = {"s_ptr": f"*{dt}", "r_ptr": f"*{dt}", "start_ptr": "*i64", "len_ptr": "*i32", "scale_ptr": "*fp32",
                   "stats_ptr": "*fp32", "R": "i32", "P": "i64", "METRIC": "constexpr", "BLOCK": "constexpr"}
            specs.append((_grad_distance_fwd_kernel, fwd, {"METRIC": metric, "BLOCK": BLOCK}))
            red = {"stats_ptr": "*fp32", "active_ptr": "*i32", "dist_ptr": f"*{dt}", "tot_ptr": "*fp32", "R": "i32",
                   "METRIC": "constexpr", "BLOCK_R": "constexpr"}
            specs.append((_grad_distance_reduce_kernel, red, {"METRIC": metric, "BLOCK_R": BLOCK_R}))
            bwd = {"g_ptr": f"*{dt}", "s_ptr": f"*{dt}", "r_ptr": f"*{dt}", "gs_ptr": f"*{dt}", "gr_ptr": f"*{dt}",
                   "start_ptr": "*i64", "len_ptr": "*i32", "scale_ptr": "*fp32", "active_ptr": "*i32",
                   "cos_ptr": "*fp32", "R": "i32", "P": "i64", "METRIC": "constexpr", "NEED_SYN": "constexpr",
                   "NEED_REAL": "constexpr", "BLOCK": "constexpr"}
            specs.append((_grad_distance_bwd_kernel, bwd, {"METRIC": metric, "NEED_SYN": True, "NEED_REAL": False,
                                                           "BLOCK": BLOCK}))
    return specs
