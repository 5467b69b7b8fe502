"""The evaluation networks of the dataset-distillation papers, by the names of VICO-UoE/DatasetCondensation
``utils.py:get_network`` (definitions: its ``networks.py``): the ConvNet family (depth, width,
activation, norm and pooling variants), MLP, LeNet, AlexNet(BN), VGG11(BN) and ResNet18 (instance or
batch norm, strided or average-pool downsampling).

Each network has the original's layers, parameter shapes and parameter count for 1×28×28 and
3×32×32 inputs (tests/nn/test_networks.py), written here anew; where the original hard-codes the
classifier's input for those two shapes, it follows ``im_size`` here. The original's ``get_network`` reseeds
the global RNG from the clock; :func:`get_network` leaves seeding to the caller. Every
``GroupNorm(C, C) → ReLU [→ AvgPool2d(2, 2)]`` (the originals' "instance norm") runs as one
:func:`ddkernels.ops.norm_relu_pool.norm_relu_pool` call on the ``GroupNorm``'s own parameters.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .._checks import check_int
from ..ops.norm_relu_pool import norm_relu_pool
from .convnet import ConvNet, nchw, run_features


def _hw(im_size) -> tuple[int, int]:
    hw = (im_size, im_size) if isinstance(im_size, int) else tuple(im_size)
    if len(hw) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in hw):
        raise ValueError(f"im_size must be a positive int or (H, W), got {im_size!r}")
    return hw


def _check_fits(name: str, im_size, h: int, w: int) -> None:
    if h < 1 or w < 1:
        raise ValueError(f"im_size {im_size} is too small for {name}: its features would be {h}×{w}")


def _norm2d(kind: str, c: int) -> nn.Module:
    # "instancenorm" is GroupNorm(C, C) with learnable γ, β, as in every original repository.
    return nn.GroupNorm(c, c, affine=True) if kind == "instancenorm" else nn.BatchNorm2d(c)


def _norm_relu(norm: nn.Module, x: torch.Tensor, pool: bool, backend: str) -> torch.Tensor:
    """``relu(norm(x))``, then a 2×2 average pool if ``pool``: one fused call for instance norm."""
    if isinstance(norm, nn.GroupNorm) and norm.num_groups == norm.num_channels:
        return norm_relu_pool(x, norm.weight, norm.bias, norm.eps, pool=pool, backend=backend)
    x = F.relu(norm(x))
    return F.avg_pool2d(x, 2, 2) if pool else x


class ConvNetVariant(ConvNet):
    """:class:`~ddkernels.nn.convnet.ConvNet` with the original's two further norms: ``"layernorm"``
    (``LayerNorm`` over each block's ``(C, H, W)``) and ``"groupnorm"`` (``GroupNorm(4, C)``). These
    blocks run layer by layer; the rest is ConvNet's."""

    NORMS = ConvNet.NORMS + ("layernorm", "groupnorm")

    def _norm_layer(self, kind: str, width: int, h: int, w: int) -> nn.Module:
        if kind == "layernorm":
            return nn.LayerNorm((width, h, w), elementwise_affine=True)
        if kind == "groupnorm":
            return nn.GroupNorm(4, width, affine=True)
        return super()._norm_layer(kind, width, h, w)


class MLP(nn.Module):
    """Flatten → Linear(128) → ReLU → Linear(128) → ReLU → Linear(num_classes)."""

    def __init__(self, channels: int, num_classes: int, im_size=(32, 32)):
        super().__init__()
        h, w = _hw(im_size)
        self.fc_1 = nn.Linear(channels * h * w, 128)
        self.fc_2 = nn.Linear(128, 128)
        self.fc_3 = nn.Linear(128, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.fc_2(F.relu(self.fc_1(x.flatten(1)))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc_3(self.embed(x))


class LeNet(nn.Module):
    """LeNet-5: 2 × [Conv5x5 → ReLU → MaxPool(2)] (6, 16 channels) → Linear 120 → 84 → num_classes.
    1-channel inputs get padding 2 in the first conv (28×28 → 5×5 features, as 32×32 RGB)."""

    def __init__(self, channels: int, num_classes: int, im_size=(32, 32)):
        super().__init__()
        h, w = _hw(im_size)
        pad = 2 if channels == 1 else 0
        self.features = nn.Sequential(
            nn.Conv2d(channels, 6, 5, padding=pad), nn.ReLU(inplace=True), nn.MaxPool2d(2, 2),
            nn.Conv2d(6, 16, 5), nn.ReLU(inplace=True), nn.MaxPool2d(2, 2))
        h, w = ((h + 2 * pad - 4) // 2 - 4) // 2, ((w + 2 * pad - 4) // 2 - 4) // 2
        _check_fits("LeNet", im_size, h, w)
        self.fc_1 = nn.Linear(16 * h * w, 120)
        self.fc_2 = nn.Linear(120, 84)
        self.fc_3 = nn.Linear(84, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.fc_2(F.relu(self.fc_1(self.features(x).flatten(1)))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc_3(self.embed(x))


class AlexNet(nn.Module):
    """The papers' small AlexNet: 5 convs (128, 192, 256, 192, 192 channels; 5×5, 5×5, then 3×3) with
    ReLU (after ``BatchNorm2d`` if ``batchnorm``), 2×2 max pools after convs 1, 2 and 5, then one
    Linear. 1-channel inputs get padding 4 in the first conv (28×28 → 4×4 features, as 32×32 RGB)."""

    def __init__(self, channels: int, num_classes: int, im_size=(32, 32), batchnorm: bool = False):
        super().__init__()
        h, w = _hw(im_size)
        # (out channels, kernel, padding, max pool after)
        plan = [(128, 5, 4 if channels == 1 else 2, True), (192, 5, 2, True), (256, 3, 1, False),
                (192, 3, 1, False), (192, 3, 1, True)]
        layers: list[nn.Module] = []
        c_in = channels
        for c, k, pad, pool in plan:
            layers.append(nn.Conv2d(c_in, c, k, padding=pad))
            layers += [nn.BatchNorm2d(c)] if batchnorm else []
            layers.append(nn.ReLU(inplace=True))
            h, w = h + 2 * pad - k + 1, w + 2 * pad - k + 1
            if pool:
                layers.append(nn.MaxPool2d(2, 2))
                h, w = h // 2, w // 2
            c_in = c
        _check_fits("AlexNet", im_size, h, w)
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(c_in * h * w, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.embed(x))


VGG11_PLAN = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")


class VGG(nn.Module):
    """VGG: ``[Conv3x3 → norm → ReLU]`` per number of ``plan``, ``MaxPool(2)`` per ``"M"``, then one
    Linear. ``norm``: ``"instancenorm"`` (``GroupNorm(C, C)``, fused with its ReLU) or
    ``"batchnorm"``. 1-channel inputs get padding 3 in the first conv (28×28 → 32×32)."""

    def __init__(self, channels: int, num_classes: int, im_size=(32, 32), plan=VGG11_PLAN,
                 norm: str = "instancenorm", backend: str = "auto"):
        super().__init__()
        h, w = _hw(im_size)
        layers: list[nn.Module] = []
        c_in = channels
        for item in plan:
            if item == "M":
                layers.append(nn.MaxPool2d(2, 2))
                h, w = h // 2, w // 2
                continue
            pad = 3 if channels == 1 and not layers else 1
            layers += [nn.Conv2d(c_in, item, 3, padding=pad), _norm2d(norm, item), nn.ReLU(inplace=True)]
            h, w = h + 2 * pad - 2, w + 2 * pad - 2
            c_in = item
        # The original ends the features with AvgPool2d(1, 1), an identity: left out.
        _check_fits("VGG", im_size, h, w)
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(c_in * h * w, num_classes)
        self.backend = backend

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return run_features(self.features, x, self.backend).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(x))


class BasicBlock(nn.Module):
    """ResNet's two-conv residual block. Downsampling (``stride`` 2) is a strided conv, or with
    ``avg_pool`` a stride-1 conv followed by a 2×2 average pool (the original's ``BasicBlock_AP``)."""

    def __init__(self, in_planes: int, planes: int, stride: int, norm: str, avg_pool: bool):
        super().__init__()
        self.pool = avg_pool and stride != 1
        conv_stride = 1 if avg_pool else stride
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=conv_stride, padding=1, bias=False)
        self.bn1 = _norm2d(norm, planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = _norm2d(norm, planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            down = [nn.AvgPool2d(2, 2)] if avg_pool else []
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride=conv_stride, bias=False), *down,
                                          _norm2d(norm, planes))

    def forward(self, x: torch.Tensor, backend: str = "auto") -> torch.Tensor:
        out = _norm_relu(self.bn1, self.conv1(x), self.pool, backend)
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet18(nn.Module):
    """ResNet-18 for small images: Conv3x3(64) → norm → ReLU, four stages of two
    :class:`BasicBlock` (64, 128, 256, 512 channels; the last three downsample by 2), then Linear.

    ``norm``: ``"instancenorm"`` (``GroupNorm(C, C)``) or ``"batchnorm"``. ``avg_pool=False``
    (``ResNet18``/``ResNet18BN``): strided convs, then a 4×4 average pool over the 4×4 maps.
    ``avg_pool=True`` (``ResNet18_AP``/``ResNet18BN_AP``): stride-1 convs + 2×2 average pools and the
    classifier on the flattened final maps (512·4·4 for 32×32 inputs, 512·3·3 for 28×28)."""

    def __init__(self, channels: int, num_classes: int, im_size=(32, 32), norm: str = "instancenorm",
                 avg_pool: bool = False, backend: str = "auto"):
        super().__init__()
        h, w = _hw(im_size)
        self.conv1 = nn.Conv2d(channels, 64, 3, padding=1, bias=False)
        self.bn1 = _norm2d(norm, 64)
        in_planes = 64
        stages = []
        for planes, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            stages.append(nn.Sequential(BasicBlock(in_planes, planes, stride, norm, avg_pool),
                                        BasicBlock(planes, planes, 1, norm, avg_pool)))
            in_planes = planes
            if stride == 2:  # a stride-2 3×3 conv with padding 1 keeps ceil(h / 2); the 2×2 pool floor(h / 2)
                h, w = (h // 2, w // 2) if avg_pool else ((h + 1) // 2, (w + 1) // 2)
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avg_pool = avg_pool
        if not avg_pool:
            h, w = h // 4, w // 4
        _check_fits("ResNet18", im_size, h, w)
        self.classifier = nn.Linear(512 * h * w, num_classes)
        self.backend = backend

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        if self.backend != "reference":
            x = nchw(x)  # the fused kernels read NCHW (see ddkernels.nn.convnet.nchw)
        out = _norm_relu(self.bn1, self.conv1(x), False, self.backend)
        for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
            for block in stage:
                out = block(out, self.backend)
        if not self.avg_pool:
            out = F.avg_pool2d(out, 4)
        return out.flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(x))


@dataclass(frozen=True)
class NetworkEntry:
    """How :func:`get_network` builds one name: ``build(channels, num_classes, im_size, backend, width)``.
    ``width``: the default conv width that ``get_network(width=...)`` overrides, or None where the
    name fixes the architecture (``ConvNetW32``, ResNet18, ...)."""

    build: Callable[..., nn.Module]
    width: int | None = None


def _convnet(width: int | None = 128, **options) -> NetworkEntry:
    # ConvNet itself wherever it can express the variant, so those entries are exactly ddkernels' ConvNet.
    cls = ConvNetVariant if options.get("norm") in ("layernorm", "groupnorm") else ConvNet

    def build(channels, num_classes, im_size, backend, net_width):
        return cls(channels, num_classes, width=net_width, im_size=im_size, backend=backend, **options)

    return NetworkEntry(build, width)


def _fixed(width: int, **options) -> NetworkEntry:
    """A ConvNet whose width the name fixes (ConvNetW32 ...)."""
    inner = _convnet(**options).build
    return NetworkEntry(lambda channels, num_classes, im_size, backend, _: inner(channels, num_classes, im_size,
                                                                                  backend, width))


def _other(cls, **options) -> NetworkEntry:
    # Only the networks with instance norm have a fused layer, hence a backend.
    takes_backend = "backend" in inspect.signature(cls).parameters

    def build(channels, num_classes, im_size, backend, _):
        extra = {"backend": backend} if takes_backend else {}
        return cls(channels, num_classes, im_size=im_size, **options, **extra)

    return NetworkEntry(build)


NETWORKS: dict[str, NetworkEntry] = {
    "ConvNet": _convnet(),
    **{f"ConvNetD{d}": _convnet(depth=d) for d in (1, 2, 3, 4)},
    **{f"ConvNetW{w}": _fixed(w) for w in (32, 64, 128, 256)},
    "ConvNetAS": _convnet(act="sigmoid"),
    "ConvNetAR": _convnet(act="relu"),
    "ConvNetAL": _convnet(act="leakyrelu"),
    "ConvNetASwish": _convnet(act="swish"),
    "ConvNetASwishBN": _convnet(act="swish", norm="batchnorm"),
    "ConvNetNN": _convnet(norm="none"),
    "ConvNetBN": _convnet(norm="batchnorm"),
    "ConvNetLN": _convnet(norm="layernorm"),
    "ConvNetIN": _convnet(norm="instancenorm"),
    "ConvNetGN": _convnet(norm="groupnorm"),
    "ConvNetNP": _convnet(pooling="none"),
    "ConvNetMP": _convnet(pooling="maxpooling"),
    "ConvNetAP": _convnet(pooling="avgpooling"),
    "MLP": _other(MLP),
    "LeNet": _other(LeNet),
    "AlexNet": _other(AlexNet),
    "AlexNetBN": _other(AlexNet, batchnorm=True),
    "VGG11": _other(VGG),
    "VGG11BN": _other(VGG, norm="batchnorm"),
    "ResNet18": _other(ResNet18),
    "ResNet18BN": _other(ResNet18, norm="batchnorm"),
    # ResNet18_AP is defined in the original networks.py but not reachable through its get_network.
    "ResNet18_AP": _other(ResNet18, avg_pool=True),
    "ResNet18BN_AP": _other(ResNet18, norm="batchnorm", avg_pool=True),
}
_LOWER = {name.lower(): name for name in NETWORKS}


def network_name(name: str) -> str:
    """The registry spelling of ``name`` (case-insensitive); ValueError listing the names otherwise."""
    if not isinstance(name, str) or name.lower() not in _LOWER:
        raise ValueError(f"unknown network {name!r}; expected one of (any case): {', '.join(NETWORKS)}")
    return _LOWER[name.lower()]


def get_network(name: str, channels: int, num_classes: int, im_size=(32, 32), width: int | None = None,
                backend: str = "auto") -> nn.Module:
    """A fresh network by its DatasetCondensation name (``"ConvNet"``, ``"ConvNetBN"``, ``"ResNet18"``,
    ...; any case; see :data:`NETWORKS`), initialised from the global RNG.

    Args:
        channels: input channels (1 or 3 in the papers).
        num_classes: classifier outputs.
        im_size: input ``(H, W)`` (or one int).
        width: conv width of the ConvNet entries that do not fix one (default 128); ValueError for the others.
        backend: the fused layers' backend (instance-norm networks; ignored by the others).

    Returns:
        An ``nn.Module`` mapping ``(B, channels, H, W)`` to logits ``(B, num_classes)``, with
        ``embed(x)``: the flattened features before the last Linear.
    """
    key = network_name(name)
    check_int(channels, "channels", low=1)
    check_int(num_classes, "num_classes", low=1)
    entry = NETWORKS[key]
    if width is not None:
        if entry.width is None:
            raise ValueError(f"width applies only to ConvNet entries that do not fix it; {key} got width={width}")
        check_int(width, "width", low=1)
    return entry.build(channels, num_classes, _hw(im_size), backend, entry.width if width is None else width)


__all__ = ["AlexNet", "BasicBlock", "ConvNetVariant", "LeNet", "MLP", "NETWORKS", "NetworkEntry", "ResNet18", "VGG",
           "get_network", "network_name"]
