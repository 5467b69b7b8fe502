"""Comparison helpers for tests and benchmarks (xformers-style failure reports)."""
from __future__ import annotations

import torch

# (atol, rtol) of a fused backend against the reference computed in the same dtype.
TOLERANCES = {
    torch.float64: (1e-10, 1e-9),
    torch.float32: (1e-5, 1e-4),
    torch.bfloat16: (2e-2, 2e-2),
    torch.float16: (2e-3, 2e-3),
}


def assert_close(actual: torch.Tensor, expected: torch.Tensor, *, atol: float | None = None,
                 rtol: float | None = None, name: str = "tensor") -> None:
    """``torch.allclose`` with a report of the worst element and how many elements failed."""
    if actual.shape != expected.shape:
        raise AssertionError(f"{name}: shape {tuple(actual.shape)} != expected {tuple(expected.shape)}")
    d_atol, d_rtol = TOLERANCES.get(expected.dtype, (1e-5, 1e-4))
    atol = d_atol if atol is None else atol
    rtol = d_rtol if rtol is None else rtol
    a = actual.detach().to(torch.float64).cpu()
    e = expected.detach().to(torch.float64).cpu()
    err = (a - e).abs()
    bad = (err > atol + rtol * e.abs()) | (torch.isnan(a) != torch.isnan(e))
    if bad.any():
        n_bad = int(bad.sum())
        flat = torch.where(torch.isnan(err), torch.full_like(err, float("inf")), err).flatten()
        worst = int(flat.argmax())
        index = tuple(int(i) for i in torch.unravel_index(torch.tensor(worst), a.shape))
        raise AssertionError(
            f"{name}: {n_bad} of {a.numel()} elements ({100.0 * n_bad / max(a.numel(), 1):.3f}%) exceed "
            f"atol={atol:g} + rtol={rtol:g}·|expected|; worst at index {index}: "
            f"actual {a.flatten()[worst].item():.10g} vs expected {e.flatten()[worst].item():.10g} "
            f"(abs err {err.flatten()[worst].item():.3g})")


def convnet_param_shapes(channels: int, num_classes: int, *, width: int = 128, depth: int = 3,
                         feat: int = 4) -> list[tuple[int, ...]]:
    """Parameter shapes of DC's ConvNet (conv 3×3 + bias, GroupNorm(width, width) γ/β, per block;
    then a linear classifier on ``width·feat²`` features), in ``net.parameters()`` order: the
    gradient lists gradient matching compares. ConvNet-3 on 28 px (conv1 padding 3) and 32 px both
    end with 4×4 features."""
    shapes: list[tuple[int, ...]] = []
    c = channels
    for _ in range(depth):
        shapes += [(width, c, 3, 3), (width,), (width,), (width,)]
        c = width
    return shapes + [(num_classes, width * feat * feat), (num_classes,)]
