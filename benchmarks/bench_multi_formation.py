"""multi_formation on IDC's real shapes: Fashion-MNIST 1×28×28 and CIFAR 3×32×32, 10 classes ×
IPC {1, 10, 50}, factor 2 and 3; bf16 rows (half the bytes) at factor 2, IPC 10 and 50."""
from __future__ import annotations

import torch

import ddkernels
from ddkernels.ops.multi_formation import reference

from .harness import Case, Provider, dtype_label, dtype_name

FUSED = "cpu"  # the provider the table's ratio column is about, on CPU machines
EAGER = ("reference", "eager-vectorized", "torch.compile")

DATASETS = {"FMNIST 1x28x28": (1, 28), "CIFAR 3x32x32": (3, 32)}


def cases(quick: bool = False, device: str = "cpu") -> list[Case]:
    out = []
    ipcs = (10, 50) if quick else (1, 10, 50)
    factors = (2,) if quick else (2, 3)
    for label, (c, h) in DATASETS.items():
        variants = [(ipc, f, torch.float32) for ipc in ipcs for f in factors]
        variants += [(ipc, 2, torch.bfloat16) for ipc in ((50,) if quick else (10, 50))]
        for ipc, f, dtype in variants:
            if True:  # one case per variant
                n = 10 * ipc
                x = torch.rand(n, c, h, h, device=device).to(dtype)
                size = (h, h)
                elem = x.element_size()
                io = (x.numel() + f * f * x.numel() * 1) * elem  # stored read + decoded write (H = h)
                leaves = {}

                def leaf(name):
                    leaves[name] = x.detach().clone().requires_grad_()
                    return leaves[name]

                xr, xe, xc, xk = leaf("r"), leaf("e"), leaf("c"), leaf("k")
                compiled = torch.compile(reference.multi_formation_eager, dynamic=False)
                providers = [
                    Provider("reference", lambda xr=xr, f=f: reference.multi_formation(xr, f, size), [xr]),
                    Provider("eager-vectorized", lambda xe=xe, f=f: reference.multi_formation_eager(xe, f, size), [xe]),
                    Provider("torch.compile", lambda xc=xc, f=f, g=compiled: g(xc, f, size), [xc], warmup=3),
                ]
                kernel = "triton" if device == "cuda" else "cpu"
                providers.append(Provider(kernel, lambda xk=xk, f=f, b=kernel: ddkernels.multi_formation(xk, f, backend=b), [xk]))
                out.append(Case("multi_formation", f"{label}, IPC {ipc}, f={f}{dtype_label(dtype)}", providers,
                                {"forward": io, "backward": io, "full": 2 * io},
                                params=dict(N=n, C=c, h=h, factor=f, dtype=dtype_name(dtype))))
    return out
