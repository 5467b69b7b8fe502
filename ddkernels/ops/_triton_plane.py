"""Triton device functions shared by the kernels that normalize (n, c) planes (scale_shift's
instance norm, norm_relu_pool); imported by Triton modules only."""
from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def plane_mean_rstd(x_ptr, rows, rmask, L, eps, ACC: tl.constexpr, BLOCK: tl.constexpr):
    """Mean and 1/sqrt(biased var + eps), in ACC, of the planes ``rows`` (a vector of plane numbers;
    ``rmask`` the valid ones) of L contiguous elements each. Two passes over the (cached) planes:
    the sum of squared deviations has no E[x²] − E[x]² cancellation."""
    base = x_ptr + rows[:, None] * L
    total = tl.zeros([rows.shape[0], BLOCK], dtype=ACC)
    for start in range(0, L, BLOCK):
        offs = start + tl.arange(0, BLOCK)[None, :]
        total += tl.load(base + offs, mask=rmask[:, None] & (offs < L), other=0.0).to(ACC)
    mean = tl.sum(total, axis=1) / L
    total = tl.zeros([rows.shape[0], BLOCK], dtype=ACC)
    for start in range(0, L, BLOCK):
        offs = start + tl.arange(0, BLOCK)[None, :]
        m = rmask[:, None] & (offs < L)
        d = tl.where(m, tl.load(base + offs, mask=m, other=0.0).to(ACC) - mean[:, None], 0.0)
        total += d * d
    return mean, 1.0 / tl.sqrt(tl.sum(total, axis=1) / L + eps)
