"""affine_crop on IDC's shapes with learned windows (the ``formation: learned`` decode): Fashion-MNIST
1×28×28 and CIFAR 3×32×32, 10 classes × IPC {1, 10, 50}, 2×2 windows per stored image moved off IDC's
grid by up to a pixel; the backward gives both gradients (image and windows)."""
from __future__ import annotations

import torch

import ddkernels
from ddkernels.ops.affine_crop import reference

from .harness import Case, Provider

FUSED = "cpu"  # the provider the table's ratio column is about, on CPU machines
EAGER = ("reference", "eager-vectorized", "torch.compile")

DATASETS = {"FMNIST 1x28x28": (1, 28), "CIFAR 3x32x32": (3, 32)}


def cases(quick: bool = False, device: str = "cpu") -> list[Case]:
    out = []
    for label, (c, h) in DATASETS.items():
        for ipc in ((10, 50) if quick else (1, 10, 50)):
            n, f = 10 * ipc, 2
            gen = torch.Generator().manual_seed(ipc)
            x = torch.rand(n, c, h, h, generator=gen).to(device)
            theta = (ddkernels.crop_grid(h, h, f, n) + torch.rand(n, f * f, 4, generator=gen) * 2 - 1).to(device)
            size = (h, h)
            io = (x.numel() + f * f * x.numel()) * x.element_size()  # stored read + decoded write
            leaves = {}

            def leaf(name):
                leaves[name] = (x.detach().clone().requires_grad_(), theta.detach().clone().requires_grad_())
                return leaves[name]

            (xr, tr), (xe, te), (xc, tc), (xk, tk) = leaf("r"), leaf("e"), leaf("c"), leaf("k")
            compiled = torch.compile(reference.affine_crop_eager, dynamic=False)
            kernel = "triton" if device == "cuda" else "cpu"
            providers = [
                Provider("reference", lambda a=xr, b=tr: reference.affine_crop(a, b, size, 0.5), [xr, tr]),
                Provider("eager-vectorized", lambda a=xe, b=te: reference.affine_crop_eager(a, b, size, 0.5), [xe, te]),
                Provider("torch.compile", lambda a=xc, b=tc, g=compiled: g(a, b, size, 0.5), [xc, tc], warmup=3),
                Provider(kernel, lambda a=xk, b=tk, k=kernel: ddkernels.affine_crop(a, b, backend=k), [xk, tk]),
            ]
            out.append(Case("affine_crop", f"{label}, IPC {ipc}, 2x2 learned windows", providers,
                            {"forward": io, "backward": io, "full": 2 * io}, params=dict(N=n, C=c, h=h, T=f * f)))
    return out
