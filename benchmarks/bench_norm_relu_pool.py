"""norm_relu_pool on ConvNet-3's three block outputs: GroupNorm(C, C) → ReLU → AvgPool2d(2) on the
conv outputs gradient matching feeds it — 256 real images of one class (DC/DSA/IDC's ``batch_real``)
at width 128 (the papers') through blocks 1–3 (32, 16, 8 px), and IDC's quick width 32 at block 1.

Providers: the reference (PyTorch's three ops, what every original repository runs), the same
three compiled by ``torch.compile``, and the fused kernel. The bf16 rows run the same shapes on
bfloat16 activations with float32 γ/β, as ConvNet-3 meets them under ``torch.autocast`` (half the
bytes: the kernel loads bfloat16 and computes in float32).
"""
from __future__ import annotations

import torch

import ddkernels
from ddkernels.ops.norm_relu_pool import reference

from .harness import Case, Provider, dtype_label, dtype_name

FUSED = "cpu"
EAGER = ("reference", "torch.compile")


def _leaves(*tensors):
    return [t.detach().clone().requires_grad_() for t in tensors]


def _case(batch: int, width: int, side: int, device: str, dtype: torch.dtype = torch.float32) -> Case:
    # A conv output: per-plane offsets and scales, so both ReLU branches and the stats matter.
    x = (torch.randn(batch, width, side, side, device=device)
         + torch.randn(batch, width, 1, 1, device=device)).to(dtype)
    w = 1 + 0.1 * torch.randn(width, device=device)
    b = 0.1 * torch.randn(width, device=device)
    kernel = "triton" if device == "cuda" else "cpu"
    compiled = torch.compile(reference.norm_relu_pool, dynamic=False)
    r, c, k = (_leaves(x, w, b) for _ in range(3))
    providers = [
        Provider("reference", lambda r=r: reference.norm_relu_pool(*r, 1e-5, True), r),
        Provider("torch.compile", lambda c=c: compiled(*c, 1e-5, True), c, warmup=3),
        Provider(kernel, lambda k=k: ddkernels.norm_relu_pool(*k, backend=kernel), k),
    ]
    n, elem = x.numel(), x.element_size()
    # forward: read x once (the plane's statistics come from cache), write the pooled quarter.
    # backward: read dy (a quarter) and x, write dx; the per-channel parameter gradients are negligible.
    fwd, bwd = n * elem * 5 // 4, n * elem * 9 // 4
    return Case("norm_relu_pool", f"B={batch}, C={width}, {side}x{side}{dtype_label(dtype)}", providers,
                {"forward": fwd, "backward": bwd, "full": fwd + bwd},
                params=dict(B=batch, C=width, h=side, dtype=dtype_name(dtype)))


def cases(quick: bool = False, device: str = "cpu") -> list[Case]:
    shapes = [(256, 128, 32), (256, 128, 16), (256, 128, 8), (256, 32, 32)]
    out = [_case(*s, device) for s in (shapes[1:2] if quick else shapes)]
    return out + [_case(*s, device, torch.bfloat16) for s in (shapes[1:2] if quick else shapes[:2])]
