"""Triton kernels for grad_distance: segmented row reductions over a packed row table.

Multi-tensor without copies: the launcher passes a table of the tensors' base addresses (one
int64 per tensor, cast back to pointers in the kernel, as Triton's grouped-GEMM tutorial does) and
the row table of tables.py. Forward: one program per (class, row) reduces its row to
``(dot, |s|², |r|²)`` or its ``Σ(s-r)²`` / ``Σ|s-r|``; one program per class then sums its rows in
table order. Backward: one program per (class, row) computes the row's coefficients and writes
both gradients. No atomics: every sum has a fixed order, so results are deterministic. Half
inputs accumulate in float32.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._dtypes import acc_dtype, tl_dtype
from .tables import row_table

BLOCK = 1024   # elements of a row per loop step
BLOCK_R = 128  # rows per loop step of the per-class reduction
METRIC_IDS = {"ours": 0, "mse": 1, "l1": 2, "l1_mean": 3, "global_cos": 4}


@triton.jit
def _row_base(addr_ptr, tensor_ptr, offset_ptr, per_class_ptr, k, q, T, which, DT: tl.constexpr):
    """Pointer to row q of class k in tensor list ``which`` (0 syn, 1 real, 2 d/dsyn, 3 d/dreal)."""
    t = tl.load(tensor_ptr + q)
    base = tl.load(addr_ptr + which * T + t).to(tl.pointer_type(DT))
    return base + k * tl.load(per_class_ptr + t) + tl.load(offset_ptr + q)


@triton.jit
def _row_block(s_row, r_row, off, n, acc_t: tl.constexpr, BLOCK: tl.constexpr):
    """Elements [off, off + BLOCK) of a row on both sides, masked to its length n, as acc_t."""
    idx = off + tl.arange(0, BLOCK)
    m = idx < n
    s = tl.load(s_row + idx, mask=m, other=0.0).to(acc_t)
    r = tl.load(r_row + idx, mask=m, other=0.0).to(acc_t)
    return idx, m, s, r


@triton.jit
def _coeffs(METRIC: tl.constexpr, dot, ss, rr, on, scale, acc_t: tl.constexpr):
    """A row's gradient coefficients at upstream gradient 1: d/ds = a_s·s + b·r, d/dr = a_r·r + b·s
    (cosine metrics); c with d/ds = c·(s-r) or c·sign(s-r) otherwise. An inactive row, and a zero
    norm (as torch.norm's backward), get zero coefficients."""
    a_s = tl.zeros([], dtype=acc_t)
    a_r = tl.zeros([], dtype=acc_t)
    b = tl.zeros([], dtype=acc_t)
    c = tl.zeros([], dtype=acc_t)
    if METRIC == 0 or METRIC == 4:
        ns = tl.sqrt(ss)
        nr = tl.sqrt(rr)
        den = ns * nr + 1e-6
        b = -1.0 / den * on
        cc = dot / (den * den) * on
        a_s = tl.where(ns > 0, cc * nr / tl.where(ns > 0, ns, 1.0), 0.0)
        a_r = tl.where(nr > 0, cc * ns / tl.where(nr > 0, nr, 1.0), 0.0)
    elif METRIC == 1:
        c = c + 2.0
    else:
        c = c + scale
    return a_s, a_r, b, c


@triton.jit
def _write_grads(addr_ptr, tensor_ptr, offset_ptr, per_class_ptr, s_row, r_row, n, k, q, T, a_s, a_r, b, c, g,
                 acc_t: tl.constexpr, DT: tl.constexpr, METRIC: tl.constexpr, NEED_SYN: tl.constexpr,
                 NEED_REAL: tl.constexpr, BLOCK: tl.constexpr):
    """One row's gradients from its coefficients at upstream gradient 1 (see _coeffs), times g: the
    forward's g = 1 is exact, so the backward's result is the forward's buffer scaled by g."""
    for off in range(0, n, BLOCK):
        idx, m, s, r = _row_block(s_row, r_row, off, n, acc_t, BLOCK)
        if METRIC == 0 or METRIC == 4:
            d_s = (a_s * s + b * r) * g
            d_r = (a_r * r + b * s) * g
        else:
            e = s - r
            if METRIC == 1:
                d_s = (c * e) * g
            else:
                d_s = (c * ((e > 0).to(acc_t) - (e < 0).to(acc_t))) * g
            d_r = -d_s
        if NEED_SYN:
            gs_row = _row_base(addr_ptr, tensor_ptr, offset_ptr, per_class_ptr, k, q, T, 2, DT)
            tl.store(gs_row + idx, d_s.to(DT), mask=m)
        if NEED_REAL:
            gr_row = _row_base(addr_ptr, tensor_ptr, offset_ptr, per_class_ptr, k, q, T, 3, DT)
            tl.store(gr_row + idx, d_r.to(DT), mask=m)


@triton.jit
def _grad_distance_fwd_kernel(
    addr_ptr,       # (4, T) int64 base addresses: syn, real, d/dsyn, d/dreal (grads: if NEED_*)
    tensor_ptr,     # (R,) int32 tensor of each row
    offset_ptr,     # (R,) int64 row offset within its tensor's class slice
    len_ptr,        # (R,) int32 row length
    scale_ptr,      # (R,) acc: multiplies the row's sum
    active_ptr,     # (R,) int32
    per_class_ptr,  # (T,) int64 elements per class of each tensor
    stats_ptr,      # (K, R, 3) acc out
    R, T,
    DT: tl.constexpr,
    METRIC: tl.constexpr,
    NEED_SYN: tl.constexpr,   # also write the gradients at upstream gradient 1 (not global_cos)
    NEED_REAL: tl.constexpr,
    BLOCK: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    k = pid // R
    q = pid % R
    s_row = _row_base(addr_ptr, tensor_ptr, offset_ptr, per_class_ptr, k, q, T, 0, DT)
    r_row = _row_base(addr_ptr, tensor_ptr, offset_ptr, per_class_ptr, k, q, T, 1, DT)
    n = tl.load(len_ptr + q)
    acc_t = stats_ptr.dtype.element_ty
    a0 = tl.zeros([BLOCK], dtype=acc_t)
    a1 = tl.zeros([BLOCK], dtype=acc_t)
    a2 = tl.zeros([BLOCK], dtype=acc_t)
    for off in range(0, n, BLOCK):
        idx, m, s, r = _row_block(s_row, r_row, off, n, acc_t, BLOCK)
        if METRIC == 0 or METRIC == 4:
            a0 += s * r
            a1 += s * s
            a2 += r * r
        elif METRIC == 1:
            a0 += (s - r) * (s - r)
        else:
            a0 += tl.abs(s - r)
    scale = tl.load(scale_ptr + q)
    dot = tl.sum(a0, axis=0)
    ss = tl.sum(a1, axis=0)
    rr = tl.sum(a2, axis=0)
    tl.store(stats_ptr + pid * 3, dot * scale)
    tl.store(stats_ptr + pid * 3 + 1, ss)
    tl.store(stats_ptr + pid * 3 + 2, rr)
    if NEED_SYN or NEED_REAL:
        # The row was just read: its second read for the gradients mostly hits cache.
        on = (tl.load(active_ptr + q) != 0).to(acc_t)
        a_s, a_r, b, c = _coeffs(METRIC, dot, ss, rr, on, scale, acc_t)
        _write_grads(addr_ptr, tensor_ptr, offset_ptr, per_class_ptr, s_row, r_row, n, k, q, T, a_s, a_r, b, c, 1.0,
                     acc_t, DT, METRIC, NEED_SYN, NEED_REAL, BLOCK)


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
    g_ptr,          # (K,) upstream gradient
    addr_ptr,       # (4, T) int64 base addresses: syn, real, d/dsyn, d/dreal
    tensor_ptr,     # (R,) int32
    offset_ptr,     # (R,) int64
    len_ptr,        # (R,) int32
    scale_ptr,      # (R,) acc
    active_ptr,     # (R,) int32
    per_class_ptr,  # (T,) int64
    cos_ptr,        # (K, R, 3) row stats ("ours") or (K, 3) class totals ("global_cos")
    R, T,
    DT: tl.constexpr,
    METRIC: tl.constexpr,
    NEED_SYN: tl.constexpr,
    NEED_REAL: tl.constexpr,
    BLOCK: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    k = pid // R
    q = pid % R
    s_row = _row_base(addr_ptr, tensor_ptr, offset_ptr, per_class_ptr, k, q, T, 0, DT)
    r_row = _row_base(addr_ptr, tensor_ptr, offset_ptr, per_class_ptr, k, q, T, 1, DT)
    n = tl.load(len_ptr + q)
    acc_t = scale_ptr.dtype.element_ty
    g = tl.load(g_ptr + k).to(acc_t)
    if METRIC == 0:
        st = cos_ptr + pid * 3
    else:
        st = cos_ptr + k * 3  # global_cos: the class totals (other metrics read no statistics)
    on = (tl.load(active_ptr + q) != 0).to(acc_t)
    if METRIC == 0 or METRIC == 4:
        a_s, a_r, b, c = _coeffs(METRIC, tl.load(st), tl.load(st + 1), tl.load(st + 2), on, 0.0, acc_t)
    else:
        a_s, a_r, b, c = _coeffs(METRIC, 0.0, 0.0, 0.0, on, tl.load(scale_ptr + q), acc_t)
    _write_grads(addr_ptr, tensor_ptr, offset_ptr, per_class_ptr, s_row, r_row, n, k, q, T, a_s, a_r, b, c, g,
                 acc_t, DT, METRIC, NEED_SYN, NEED_REAL, BLOCK)


def _table(syn, metric):
    shapes = tuple(tuple(t.shape[1:]) for t in syn)
    return row_table(shapes, metric, acc_dtype(syn[0].dtype), syn[0].device)


def _addresses(*lists, n: int, device) -> torch.Tensor:
    """(4, T) base addresses; an absent list (a gradient not asked for) is all zeros, never read."""
    return torch.tensor([[t.data_ptr() for t in ts] if ts else [0] * n for ts in lists], dtype=torch.int64,
                        device=device)


def _reduce(stats, active, metric, dtype):
    k, r = stats.shape[:2]
    dist = torch.empty(k, dtype=dtype, device=stats.device)
    tot = stats.new_empty(k, 3)
    if k:
        _grad_distance_reduce_kernel[(k,)](stats, active, dist, tot, r, METRIC=METRIC_IDS[metric], BLOCK_R=BLOCK_R)
    return dist, tot


def grad_distance_forward(syn, real, metric: str, need_syn: bool = False, need_real: bool = False):
    """Batched contiguous tensors ``(K, *param_shape)`` -> ``(dist (K,), stats (K, R, 3))``; with
    ``need_syn``/``need_real`` (not global_cos) also the gradients at upstream gradient 1:
    ``(dist, stats, d/dsyn list, d/dreal list)``."""
    fused = need_syn or need_real
    if fused and metric == "global_cos":
        raise ValueError("global_cos needs every row's statistics before its first gradient")
    tensor, offset, length, scale, active, per_class = _table(syn, metric)
    k, n, rows = syn[0].shape[0], len(syn), tensor.numel()
    stats = torch.zeros(k, rows, 3, dtype=acc_dtype(syn[0].dtype), device=syn[0].device)
    gs = [torch.empty_like(t) for t in syn] if need_syn else []
    gr = [torch.empty_like(t) for t in real] if need_real else []
    if k * rows:
        addr = _addresses(syn, real, gs, gr, n=n, device=syn[0].device)
        _grad_distance_fwd_kernel[(k * rows,)](addr, tensor, offset, length, scale, active, per_class, stats, rows, n,
                                               DT=tl_dtype(syn[0].dtype), METRIC=METRIC_IDS[metric],
                                               NEED_SYN=need_syn, NEED_REAL=need_real, BLOCK=BLOCK)
    dist = _reduce(stats, active, metric, syn[0].dtype)[0]
    return (dist, stats, gs, gr) if fused else (dist, stats)


def grad_distance_backward(grad, syn, real, stats, metric: str, need_syn: bool, need_real: bool):
    """Gradients w.r.t. syn and real (lists; [] for one not asked for)."""
    tensor, offset, length, scale, active, per_class = _table(syn, metric)
    k, n, rows = syn[0].shape[0], len(syn), stats.shape[1]
    cos = _reduce(stats, active, metric, syn[0].dtype)[1] if metric == "global_cos" else stats
    gs = [torch.empty_like(t) for t in syn] if need_syn else []
    gr = [torch.empty_like(t) for t in real] if need_real else []
    if k * rows and (need_syn or need_real):
        addr = _addresses(syn, real, gs, gr, n=n, device=syn[0].device)
        _grad_distance_bwd_kernel[(k * rows,)](grad.contiguous(), addr, tensor, offset, length, scale, active,
                                               per_class, cos, rows, n, DT=tl_dtype(syn[0].dtype),
                                               METRIC=METRIC_IDS[metric], NEED_SYN=need_syn, NEED_REAL=need_real,
                                               BLOCK=BLOCK)
    return gs, gr


def compile_specs():
    """(kernel, signature, constexprs) for ahead-of-time compilation checks without a GPU."""
    table = {"tensor_ptr": "*i32", "offset_ptr": "*i64", "len_ptr": "*i32", "scale_ptr": "*fp32"}
    specs = []
    for dt, tdt in (("fp32", tl.float32), ("fp16", tl.float16), ("bf16", tl.bfloat16)):
        for metric in (0, 1, 2, 4):  # 3 (l1_mean) takes the l1 branches with another scale
            fwd = {"addr_ptr": "*i64", **table, "active_ptr": "*i32", "per_class_ptr": "*i64", "stats_ptr": "*fp32",
                   "R": "i32", "T": "i32", "DT": "constexpr", "METRIC": "constexpr", "NEED_SYN": "constexpr",
                   "NEED_REAL": "constexpr", "BLOCK": "constexpr"}
            for need in ((False, False),) + (((True, False),) if metric != 4 else ()):
                specs.append((_grad_distance_fwd_kernel, fwd, {"DT": tdt, "METRIC": metric, "NEED_SYN": need[0],
                                                               "NEED_REAL": need[1], "BLOCK": BLOCK}))
            red = {"stats_ptr": "*fp32", "active_ptr": "*i32", "dist_ptr": f"*{dt}", "tot_ptr": "*fp32", "R": "i32",
                   "METRIC": "constexpr", "BLOCK_R": "constexpr"}
            specs.append((_grad_distance_reduce_kernel, red, {"METRIC": metric, "BLOCK_R": BLOCK_R}))
            bwd = {"g_ptr": f"*{dt}", "addr_ptr": "*i64", **table, "active_ptr": "*i32", "per_class_ptr": "*i64",
                   "cos_ptr": "*fp32", "R": "i32", "T": "i32", "DT": "constexpr", "METRIC": "constexpr",
                   "NEED_SYN": "constexpr", "NEED_REAL": "constexpr", "BLOCK": "constexpr"}
            specs.append((_grad_distance_bwd_kernel, bwd, {"DT": tdt, "METRIC": metric, "NEED_SYN": True,
                                                           "NEED_REAL": True, "BLOCK": BLOCK}))
    return specs
