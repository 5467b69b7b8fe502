"""Building blocks over the fused ops: ``nn.Module`` wrappers, the factorized synthetic-set
parameterizations (hallucinator bank, latent decoders, addressable memory) and ConvNet-3.

This layer imports only :mod:`ddkernels.ops`; the distillation framework (:mod:`ddkernels.distill`)
builds on it, never the reverse."""
from .convnet import ConvNet
from .hallucinator import HallucinatorBank
from .latent import LatentDecoderBank
from .memory import AddressableMemory
from .modules import GradMatchLoss, MultiFormation, NormReluPool, bound_plan

__all__ = ["AddressableMemory", "ConvNet", "GradMatchLoss", "HallucinatorBank", "LatentDecoderBank", "MultiFormation",
           "NormReluPool", "bound_plan"]
