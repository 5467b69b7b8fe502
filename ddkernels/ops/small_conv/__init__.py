"""Internal op: stride-1 grouped convolution for tiny channel counts (HaBa's hallucinators)."""
from .function import BACKENDS, SmallConv2dFunction, small_conv2d, small_conv_transpose2d

__all__ = ["BACKENDS", "SmallConv2dFunction", "small_conv2d", "small_conv_transpose2d"]
