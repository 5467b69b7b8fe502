"""ConvNet-3, the network every distillation method trains and evaluates with (docs/spec.md §0.1)."""
from __future__ import annotations

import torch
from torch import nn

from .._checks import check_int
from ..ops._autocast import conv2d_float_backward, conv_float_backward
from ..ops.norm_relu_pool import norm_relu_pool

NORMS = ("instancenorm", "batchnorm", "none")
POOLINGS = ("avgpooling", "maxpooling", "none")
ACTIVATIONS = ("relu", "sigmoid", "leakyrelu", "swish")


def _norm(kind: str, width: int) -> nn.Module:
    if kind == "instancenorm":
        # The field's "instance norm" is GroupNorm with one channel per group (learnable γ, β).
        return nn.GroupNorm(width, width, affine=True)
    if kind == "batchnorm":
        return nn.BatchNorm2d(width)
    return nn.Identity()


def _activation(kind: str) -> nn.Module:
    # The originals' options (VICO-UoE/DatasetCondensation networks.py): swish is x·σ(x), i.e. SiLU.
    if kind == "sigmoid":
        return nn.Sigmoid()
    if kind == "leakyrelu":
        return nn.LeakyReLU(0.01)
    if kind == "swish":
        return nn.SiLU()
    return nn.ReLU(inplace=True)


def _is_pool2(m: nn.Module) -> bool:
    """``AvgPool2d(2, 2)`` exactly as the originals build it (no padding, floor mode, plain divisor)."""
    two = (2, (2, 2))
    return (isinstance(m, nn.AvgPool2d) and m.kernel_size in two and m.stride in two and m.padding in (0, (0, 0))
            and not m.ceil_mode and m.divisor_override is None)


def _fusable(mods: list[nn.Module], i: int) -> int:
    """How many layers from ``mods[i]`` one norm_relu_pool call replaces: 3 for ``GroupNorm(C, C) →
    ReLU → AvgPool2d(2, 2)``, 2 without the pool, 0 if ``mods[i]`` does not start such a run."""
    gn = mods[i]
    if not (isinstance(gn, nn.GroupNorm) and gn.num_groups == gn.num_channels):
        return 0
    if i + 1 >= len(mods) or type(mods[i + 1]) is not nn.ReLU:
        return 0
    return 3 if i + 2 < len(mods) and _is_pool2(mods[i + 2]) else 2


def nchw(x: torch.Tensor) -> torch.Tensor:
    """``x`` in plain NCHW strides, the layout the fused kernels read. A batch that went through a
    ``permute`` (e.g. DSA's crop) is channels_last, or, with one channel, NCHW-contiguous but with
    channel stride 1, which PyTorch's conv still reads as channels_last: its outputs would then be
    channels_last and every fused layer and conv backward would transpose them. A view through 1-D
    gives size-1 dims their NCHW strides back (no copy); a real channels_last batch (small: the
    network's input) is copied once."""
    x = x.contiguous()
    return x.view(-1).view(x.shape)


def run_features(features: nn.Sequential, x: torch.Tensor, backend: str = "auto") -> torch.Tensor:
    """``features(x)``, with every ``GroupNorm(C, C) → ReLU [→ AvgPool2d(2, 2)]`` run of layers
    computed by one :func:`~ddkernels.ops.norm_relu_pool.norm_relu_pool` call on the ``GroupNorm``'s
    own parameters (so ``functional_call`` and optimizers see the usual parameters). Other layers
    run as they are, except that under CPU autocast a conv with one input channel takes its
    backward in float32 (:func:`~ddkernels.ops._autocast.conv_float_backward`).
    ``backend="reference"`` is the op's reference: the same three PyTorch layers
    (and the input keeps its layout, as the originals'; otherwise it is made :func:`nchw`)."""
    mods = list(features)
    if backend != "reference" and x.dim() == 4:
        x = nchw(x)
    i = 0
    while i < len(mods):
        n = _fusable(mods, i)
        if n:
            gn = mods[i]
            x = norm_relu_pool(x, gn.weight, gn.bias, gn.eps, pool=n == 3, backend=backend)
            i += n
        elif isinstance(mods[i], nn.Conv2d) and conv_float_backward(x, mods[i]):
            x = conv2d_float_backward(mods[i], x)  # oneDNN's half backward is the slow one here
            i += 1
        else:
            x = mods[i](x)
            i += 1
    return x


class ConvNet(nn.Module):
    """ConvNet-D (default depth 3): ``depth × [Conv3x3(width) → norm → act → pool(2)]`` → Linear.

    As in the original repos, 1-channel inputs get padding 3 in the first conv, so 28×28
    (Fashion-)MNIST images leave it as 32×32 and the classifier sees 128·4·4 = 2048 features.

    Args:
        channels: input channels (1 or 3).
        num_classes: classifier outputs.
        width: conv channels (128 in every paper).
        depth: number of conv blocks.
        norm: ``"instancenorm"`` (``GroupNorm(width, width)``), ``"batchnorm"`` or ``"none"``.
        pooling: ``"avgpooling"``, ``"maxpooling"`` or ``"none"``.
        im_size: input ``(H, W)``.
        act: ``"relu"`` (in place), ``"sigmoid"``, ``"leakyrelu"`` (slope 0.01) or ``"swish"``; only
            ReLU blocks are fused.
        backend: backend of the fused block epilogue. With instance norm and average (or no)
            pooling, each block's ``norm → ReLU → pool`` runs as one
            :func:`ddkernels.ops.norm_relu_pool.norm_relu_pool` call on the ``GroupNorm``'s own
            parameters (``"reference"``: the op's reference, PyTorch's three layers).
            Parameters, their order and ``state_dict`` keys are those of the plain layer stack.

    Shapes:
        input ``(B, channels, H, W)`` → logits ``(B, num_classes)``; :meth:`embed` → ``(B, feat_dim)``.
    """

    NORMS = NORMS  # a subclass may accept more (ddkernels.nn.networks.ConvNetVariant)

    def _norm_layer(self, kind: str, width: int, h: int, w: int) -> nn.Module:
        """The norm after a conv whose output is ``(width, h, w)``."""
        return _norm(kind, width)

    def __init__(self, channels: int, num_classes: int, width: int = 128, depth: int = 3,
                 norm: str = "instancenorm", pooling: str = "avgpooling", im_size: tuple[int, int] = (32, 32),
                 backend: str = "auto", act: str = "relu"):
        super().__init__()
        check_int(channels, "channels", low=1)
        check_int(num_classes, "num_classes", low=1)
        check_int(width, "width", low=1)
        check_int(depth, "depth", low=1)
        if norm not in self.NORMS:
            raise ValueError(f"norm must be one of {self.NORMS}, got {norm!r}")
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        if act not in ACTIVATIONS:
            raise ValueError(f"act must be one of {ACTIVATIONS}, got {act!r}")
        h, w = (im_size, im_size) if isinstance(im_size, int) else tuple(im_size)
        layers: list[nn.Module] = []
        c_in = channels
        for d in range(depth):
            pad = 3 if channels == 1 and d == 0 else 1
            h, w = h + 2 * pad - 2, w + 2 * pad - 2
            layers += [nn.Conv2d(c_in, width, 3, padding=pad), self._norm_layer(norm, width, h, w), _activation(act)]
            if pooling != "none":
                layers.append(nn.AvgPool2d(2, 2) if pooling == "avgpooling" else nn.MaxPool2d(2, 2))
                h, w = h // 2, w // 2
            if h < 1 or w < 1:
                raise ValueError(f"im_size {im_size} is too small for depth {depth}: block {d} leaves {h}×{w}")
            c_in = width
        self.features = nn.Sequential(*layers)
        self.feat_dim = width * h * w
        self.classifier = nn.Linear(self.feat_dim, num_classes)
        self.backend = backend

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Flattened features before the classifier (what DM matches)."""
        return run_features(self.features, x, self.backend).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(x))


__all__ = ["ACTIVATIONS", "ConvNet", "nchw", "run_features"]
