"""grad_distance on ConvNet-3's gradient lists (DC/DSA/IDC): Fashion-MNIST 1×28×28 and CIFAR
3×32×32, K = 10 and 100 classes, metrics "ours" (DC default) and "mse" (IDC CIFAR default).

Only g_syn needs a gradient (g_real is detached in every trainer), and the upstream gradient is a
vector of ones, as every trainer's ``loss = distances.sum(); loss.backward()`` sends it. Minimal
traffic: forward reads both sides (2N); a separate backward reads both and writes d/d g_syn (3N);
full needs only 3N, since a kernel that writes d/d g_syn while the rows are in cache (the cpu
kernel does, at upstream gradient 1) never reads them again. The torch.compile and eager providers
run the same full pass with the same upstream gradient. Pass ``--upstream randn`` to time an
arbitrary per-class upstream gradient instead (the cpu kernel then scales its buffers: 5N).
The bf16 rows run metric "ours" on bfloat16 gradient lists (half the bytes; float32 sums).
"""
from __future__ import annotations

import torch

import ddkernels
from ddkernels.ops.grad_distance import reference
from ddkernels.testing import convnet_param_shapes

from .harness import Case, Provider, dtype_label, dtype_name

FUSED = "cpu"  # the provider the table's ratio column is about, on CPU machines
EAGER = ("reference", "eager-vectorized", "torch.compile")

DATASETS = {"FMNIST 1x28x28": 1, "CIFAR 3x32x32": 3}


def _reference_loop(syn, real, metric):
    # As DC/IDC trainers do it: one match_loss per class over that class's gradient lists.
    return torch.stack([reference.match_loss(s, r, metric) for s, r in zip(syn, real)])


def cases(quick: bool = False, device: str = "cpu") -> list[Case]:
    out = []
    variants = [(k, m, torch.float32) for k in ((10,) if quick else (10, 100)) for m in ("ours", "mse")]
    variants += [(k, "ours", torch.bfloat16) for k in ((10,) if quick else (10, 100))]
    for label, c in DATASETS.items():
        for k, metric, dtype in variants:
            shapes = convnet_param_shapes(c, k)
            real = [torch.randn(k, *s, device=device).to(dtype) for s in shapes]
            syn = [torch.randn(k, *s, device=device).to(dtype) for s in shapes]
            n = sum(t.numel() for t in syn)
            elem = syn[0].element_size()
            io = {"forward": 2 * n * elem, "backward": 3 * n * elem, "full": 3 * n * elem}
            if True:  # one case per variant
                def leaves():
                    return [t.detach().clone().requires_grad_() for t in syn]

                def used(ts, lead):
                    # "ours" never reads 1-D parameters: the eager graphs have no gradient for them.
                    return [t for t in ts if metric != "ours" or t.dim() - lead > 1]

                per_class_syn = [[t[i].detach().clone().requires_grad_() for t in syn] for i in range(k)]
                per_class_real = [[t[i] for t in real] for i in range(k)]
                se, sc, sk = leaves(), leaves(), leaves()
                compiled = torch.compile(reference.grad_distance_eager, dynamic=False)
                kernel = "triton" if device == "cuda" else "cpu"
                providers = [
                    Provider("reference", lambda m=metric, s=per_class_syn, r=per_class_real: _reference_loop(s, r, m),
                             [t for ts in per_class_syn for t in used(ts, 0)]),
                    Provider("eager-vectorized", lambda m=metric, s=se, r=real: reference.grad_distance_eager(s, r, m), used(se, 1)),
                    Provider("torch.compile", lambda m=metric, s=sc, r=real, g=compiled: g(s, r, m), used(sc, 1), warmup=3),
                    Provider(kernel, lambda m=metric, s=sk, r=real, b=kernel: ddkernels.grad_distance(
                        s, r, m, batched=True, backend=b), sk),
                ]
                out.append(Case("grad_distance", f"{label}, K={k}, {metric}{dtype_label(dtype)}", providers, io,
                                params=dict(C=c, K=k, metric=metric, elements=n, dtype=dtype_name(dtype)),
                                upstream="ones"))
    return out
