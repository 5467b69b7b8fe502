"""ddkernels: fused kernels for factorization-based dataset distillation.

Public ops dispatch per call to a backend (``"reference"``, ``"cpu"``, ``"triton"``; see
:mod:`ddkernels.dispatch`); ``python -m ddkernels.info`` shows which are available and why not.
"""
from . import nn
from .dispatch import BackendUnavailable
from .ops.affine_crop import affine_crop, crop_grid
from .ops.grad_distance import grad_distance, stack_classes
from .ops.multi_formation import multi_formation, multi_formation_targets
from .ops.norm_relu_pool import norm_relu_pool
from .ops.scale_shift import scale_shift

__version__ = "0.1.0"

__all__ = ["BackendUnavailable", "affine_crop", "crop_grid", "grad_distance", "multi_formation", "multi_formation_targets", "nn",
           "norm_relu_pool", "scale_shift", "stack_classes", "__version__"]
