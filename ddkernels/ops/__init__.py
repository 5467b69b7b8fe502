"""One sub-package per fused op: reference.py, triton.py, function.py (dispatch + autograd).

:data:`OPS` is the op registry: the Triton compile test, the benchmarks and the op table of
``python -m ddkernels.info --ops`` derive their lists from it, so a new op is added here (and in its
sub-package), nowhere else.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass


@dataclass(frozen=True)
class Op:
    name: str            # sub-package ddkernels.ops.<name>, its dispatch name, ddkernels.<name> if public
    fuses: str           # what the one kernel does (Markdown, one line)
    used_by: str         # the trainers / modules that call it
    public: bool = True  # exported as ddkernels.<name>; an internal op serves ddkernels.nn


OPS: tuple[Op, ...] = (
    Op("multi_formation", "IDC multi-formation decode (pad 0.5, f×f tiles, bilinear resize, tile-major)", "IDC"),
    Op("affine_crop", "learned multi-formation: a bilinear crop per window `(top, left, height, width)`, "
       "differentiable in the image and the windows", "IDC (`formation: learned / multiscale`)"),
    Op("grad_distance", "batched layer-wise gradient-matching distance, all layers and classes in one call",
       "DC, DSA, IDC"),
    Op("scale_shift", "HaBa hallucinator scale-shift, product and sampled modes; `nn.HallucinatorBank`", "HaBa"),
    Op("norm_relu_pool", "ConvNet-3's block epilogue `GroupNorm(C, C)` (\"instance norm\") + ReLU + `AvgPool2d(2)` "
       "in one pass per plane, forward, backward and double backward", "every method (the network itself)"),
    Op("small_conv", "stride-1 direct conv / transposed conv for a few channels per group, used by "
       "`HallucinatorBank` on CPU", "HaBa", public=False),
)


def names(public_only: bool = False) -> tuple[str, ...]:
    """The registered ops' names, in registry order (``public_only``: those exported as ``ddkernels.<name>``)."""
    return tuple(op.name for op in OPS if op.public or not public_only)


def backends(name: str):
    """The op's :class:`~ddkernels.dispatch.OpBackends` (imports its sub-package)."""
    return importlib.import_module(f"ddkernels.ops.{name}.function").BACKENDS


def has_triton(name: str) -> bool:
    """Whether the op declares a Triton kernel (``ddkernels.ops.<name>.triton``)."""
    return bool(backends(name).backends["triton"].devices)
