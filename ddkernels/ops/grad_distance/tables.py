"""The packed row table: how each class's slice of each tensor is cut into rows.

The C++ kernel builds the same table from the shapes (csrc/cpu/grad_distance.cpp ``make_layout``);
this copy serves the Triton kernels and the fake (shape) kernels. Rows are the metric's rows for
``"ours"`` and ``"l1_mean"`` (the first parameter dim); for the other metrics they only group the
summation, and a 1-D parameter stays a single row.
"""
from __future__ import annotations

import functools
import math

import torch


def rows_of(param_shape: tuple[int, ...]) -> int:
    return 1 if len(param_shape) == 1 else param_shape[0]


@functools.lru_cache(maxsize=256)
def row_table(param_shapes: tuple[tuple[int, ...], ...], metric: str, acc: torch.dtype, device: torch.device):
    """For every row of one class: which tensor it lies in, its offset within that tensor's class
    slice, its length, the scale of its sum (``1/len`` for ``l1_mean`` rows) and whether it counts
    (1-D tensors under ``"ours"`` do not); plus each tensor's elements per class.

    Returns ``(tensor int32 (R,), offset int64 (R,), length int32 (R,), scale acc (R,),
    active int32 (R,), per_class int64 (T,))``.
    """
    tensor, offset, length, scale, active, per_class = [], [], [], [], [], []
    for i, shape in enumerate(param_shapes):
        numel = math.prod(shape)
        rows = rows_of(shape)
        rowlen = numel // rows if rows else 0
        one_d = len(shape) == 1
        per_class.append(numel)
        for q in range(rows):
            tensor.append(i)
            offset.append(q * rowlen)
            length.append(rowlen)
            scale.append(1.0 / rowlen if metric == "l1_mean" and not one_d and rowlen else 1.0)
            active.append(0 if metric == "ours" and one_d else 1)
    return (torch.tensor(tensor, dtype=torch.int32, device=device),
            torch.tensor(offset, dtype=torch.int64, device=device),
            torch.tensor(length, dtype=torch.int32, device=device),
            torch.tensor(scale, dtype=acc, device=device),
            torch.tensor(active, dtype=torch.int32, device=device),
            torch.tensor(per_class, dtype=torch.int64, device=device))


def total_rows(param_shapes) -> int:
    return sum(rows_of(tuple(s)) for s in param_shapes)
