"""Public op: ConvNet-3's block epilogue, GroupNorm(C, C) + ReLU + AvgPool2d(2), fused."""
from .function import BACKENDS, NormReluPoolBackward, NormReluPoolFunction, norm_relu_pool

__all__ = ["BACKENDS", "NormReluPoolBackward", "NormReluPoolFunction", "norm_relu_pool"]
