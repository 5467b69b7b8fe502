"""Bilinear (align_corners=False) tap tables, shared by the CPU and Triton kernels.

Tables are tile-local and computed once per (sizes, dtype, device): the kernels only gather.
The arithmetic mirrors ATen's CPU upsample (``area_pixel_compute_source_index`` and
``compute_source_index_and_lambda``) in the op's accumulation type, so fused and reference
results differ by rounding of the blend only.
"""
from __future__ import annotations

import functools

import torch

from .._dtypes import acc_dtype


@functools.lru_cache(maxsize=256)
def forward_taps(in_size: int, out_size: int, dtype: torch.dtype, device: torch.device):
    """For each output coordinate: two source indices ``idx (2, out)`` and weights ``w (2, out)``."""
    acc, host = acc_dtype(dtype), torch.device("cpu")  # built on the host once, then cached per device
    scale = torch.tensor(in_size, dtype=acc, device=host) / torch.tensor(out_size, dtype=acc, device=host)
    src = (scale * (torch.arange(out_size, dtype=acc, device=host) + 0.5) - 0.5).clamp_min(0)
    i0 = src.to(torch.int64).clamp_max(in_size - 1)
    i1 = i0 + (i0 < in_size - 1).to(torch.int64)
    l1 = (src - i0.to(acc)).clamp(0, 1)
    idx = torch.stack([i0, i1]).contiguous()
    w = torch.stack([1 - l1, l1]).contiguous()
    return idx.to(device), w.to(device)


@functools.lru_cache(maxsize=256)
def adjoint_taps(in_size: int, out_size: int, dtype: torch.dtype, device: torch.device):
    """The transpose of :func:`forward_taps` as a gather: for each source coordinate, the output
    coordinates that read it and their weights, ``idx (in, K)`` and ``w (in, K)``.

    Zero-weight taps are dropped and rows are padded with weight 0 (index 0) to a common K; the
    order within a row is fixed, which makes the fused backward bitwise repeatable.
    """
    idx, w = forward_taps(in_size, out_size, dtype, torch.device("cpu"))
    lists: list[list[tuple[int, float]]] = [[] for _ in range(in_size)]
    for tap in range(2):
        for o in range(out_size):
            wt = w[tap, o].item()
            if wt != 0.0:
                lists[int(idx[tap, o])].append((o, wt))
    k = max(1, max(len(l) for l in lists))
    gidx = torch.zeros(in_size, k, dtype=torch.int64, device="cpu")
    gw = torch.zeros(in_size, k, dtype=acc_dtype(dtype), device="cpu")
    for s, entries in enumerate(lists):
        for q, (o, wt) in enumerate(sorted(entries)):
            gidx[s, q], gw[s, q] = o, wt
    return gidx.to(device), gw.to(device)
