"""Building blocks over the fused ops: ``nn.Module`` wrappers, the factorized synthetic-set
parameterizations (hallucinator bank, latent decoders, addressable memory), ConvNet-3 and the other
evaluation networks (:func:`get_network`).

This layer imports only :mod:`ddkernels.ops`; the distillation framework (:mod:`ddkernels.distill`)
builds on it, never the reverse."""
from .convnet import ConvNet
from .hallucinator import HallucinatorBank
from .latent import LatentDecoderBank
from .memory import AddressableMemory
from .modules import AffineCrop, GradMatchLoss, MultiFormation, NormReluPool, bound_plan
from .networks import MLP, NETWORKS, VGG, AlexNet, ConvNetVariant, LeNet, ResNet18, get_network, network_name

__all__ = ["AffineCrop", "MLP", "NETWORKS", "VGG", "AddressableMemory", "AlexNet", "ConvNet", "ConvNetVariant", "GradMatchLoss",
           "HallucinatorBank", "LatentDecoderBank", "LeNet", "MultiFormation", "NormReluPool", "ResNet18", "bound_plan",
           "get_network", "network_name"]
