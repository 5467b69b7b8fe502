"""Input validation shared by the public ops. Every message names the argument."""
from __future__ import annotations

import os

import torch


def check_finite_enabled() -> bool:
    # A NaN scan costs a full read of the input (and a sync on GPU): opt-in for debugging.
    return os.environ.get("DDKERNELS_CHECK_FINITE", "0") == "1"


def check_tensor(t, name: str, *, ndim: int | None = None, layout: str = "", floating: bool = True) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if ndim is not None and t.dim() != ndim:
        raise ValueError(f"{name} must be {ndim}-D {layout}".rstrip() + f", got shape {tuple(t.shape)}")
    if floating and not t.is_floating_point():
        raise TypeError(f"{name} must have a floating-point dtype, got {t.dtype}")
    if check_finite_enabled() and floating and t.numel() and not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} contains NaN or Inf (DDKERNELS_CHECK_FINITE=1)")
    return t


def check_int(v, name: str, *, low: int | None = None, high: int | None = None) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise TypeError(f"{name} must be an int, got {type(v).__name__}")
    if (low is not None and v < low) or (high is not None and v > high):
        lo = "-inf" if low is None else low
        hi = "inf" if high is None else high
        raise ValueError(f"{name} must be in [{lo}, {hi}], got {v}")
    return v


def check_same_device(name_a: str, a: torch.Tensor, name_b: str, b: torch.Tensor) -> None:
    if a.device != b.device:
        raise ValueError(f"{name_a} and {name_b} must be on the same device, got {a.device} and {b.device}")
