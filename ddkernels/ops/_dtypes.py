"""The accumulation-type rule every kernel follows: float64 stays float64; float32 and the half
types accumulate in float32."""
from __future__ import annotations

import torch


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def tl_dtype(dtype: torch.dtype):
    """The Triton element type of a torch floating dtype (imports triton: Triton modules only)."""
    import triton.language as tl

    return {torch.float16: tl.float16, torch.bfloat16: tl.bfloat16, torch.float32: tl.float32,
            torch.float64: tl.float64}[dtype]


def tl_acc(dtype: torch.dtype):
    """The Triton accumulation type for inputs of ``dtype``."""
    return tl_dtype(acc_dtype(dtype))
