"""Triton device functions shared by the kernels that normalize (n, c) planes (scale_shift's
instance norm, norm_relu_pool); imported by Triton modules only."""
from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def plane_mean_rstd(base, L, eps, ACC: tl.constexpr, BLOCK: tl.constexpr):
    """Mean and 1/sqrt(biased var + eps) of the L contiguous elements at ``base``, in ACC. Two passes
    over the (cached) plane: the sum of squared deviations has no E[x²] − E[x]² cancellation."""
    total = tl.zeros([BLOCK], dtype=ACC)
    for start in range(0, L, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        total += tl.load(base + offs, mask=offs < L, other=0.0).to(ACC)
    mean = tl.sum(total, axis=0) / L
    total = tl.zeros([BLOCK], dtype=ACC)
    for start in range(0, L, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        d = tl.where(offs < L, tl.load(base + offs, mask=offs < L, other=0.0).to(ACC) - mean, 0.0)
        total += d * d
    return mean, 1.0 / tl.sqrt(tl.sum(total, axis=0) / L + eps)
