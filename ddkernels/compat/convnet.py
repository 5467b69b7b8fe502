"""The ``ConvNet`` of VICO-UoE/DatasetCondensation ``networks.py`` (identical in mtt-distillation and
DatasetFactorization), with every ``GroupNorm(C, C) → ReLU [→ AvgPool2d(2, 2)]`` run of layers on
:func:`ddkernels.norm_relu_pool` (docs/spec.md §0.1, §0.2).

Same constructor, same layers in the same order (so one seed gives the original's initial weights),
same ``state_dict`` keys (``features.<i>.*``, ``classifier.*``), same ``forward``/``embed``. The
original's ``utils.py`` imports ``ConvNet`` and builds every network through ``get_network``, which
looks the name up in ``utils`` at call time: :func:`ddkernels.compat.patch` swapping ``utils.ConvNet``
therefore accelerates every ``get_network('ConvNet…', …)`` that follows.
"""
from __future__ import annotations

import torch
from torch import nn

from ..nn.convnet import run_features
from ._backend import resolve


class _Swish(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(x)


def _activation(name: str) -> nn.Module:
    acts = {"sigmoid": nn.Sigmoid, "relu": lambda: nn.ReLU(inplace=True),
            "leakyrelu": lambda: nn.LeakyReLU(negative_slope=0.01), "swish": _Swish}
    if name not in acts:
        raise ValueError(f"net_act must be one of {', '.join(acts)}, got {name!r}")
    return acts[name]()


def _norm(name: str, shape_feat: list[int]) -> nn.Module | None:
    c = shape_feat[0]
    norms = {"batchnorm": lambda: nn.BatchNorm2d(c, affine=True),
             "layernorm": lambda: nn.LayerNorm(shape_feat, elementwise_affine=True),
             "instancenorm": lambda: nn.GroupNorm(c, c, affine=True),
             "groupnorm": lambda: nn.GroupNorm(4, c, affine=True), "none": lambda: None}
    if name not in norms:
        raise ValueError(f"net_norm must be one of {', '.join(norms)}, got {name!r}")
    return norms[name]()


def _pooling(name: str) -> nn.Module | None:
    pools = {"maxpooling": lambda: nn.MaxPool2d(kernel_size=2, stride=2),
             "avgpooling": lambda: nn.AvgPool2d(kernel_size=2, stride=2), "none": lambda: None}
    if name not in pools:
        raise ValueError(f"net_pooling must be one of {', '.join(pools)}, got {name!r}")
    return pools[name]()


class ConvNet(nn.Module):
    """DatasetCondensation's ``ConvNet(channel, num_classes, net_width, net_depth, net_act, net_norm,
    net_pooling, im_size)``: ``net_depth × [Conv3x3 → norm → act → pool]`` → Linear.

    As the original: 28-pixel inputs are treated as 32 (1-channel inputs get padding 3 in the first
    conv), ``instancenorm`` is ``GroupNorm(C, C)``, ``layernorm`` normalizes over (C, H, W),
    ``groupnorm`` uses 4 groups, and ``relu`` is in place. Unknown options raise ``ValueError``
    naming the argument (the original calls ``exit``).

    Args:
        backend: for the fused layers (keyword only; default: the module-wide backend of
            :mod:`ddkernels.compat`). Configurations without a ``GroupNorm(C, C) → ReLU`` run
            layer by layer exactly as the original.
    """

    def __init__(self, channel, num_classes, net_width, net_depth, net_act, net_norm, net_pooling,
                 im_size=(32, 32), *, backend: str | None = None):
        super().__init__()
        layers: list[nn.Module] = []
        in_channels = channel
        if im_size[0] == 28:
            im_size = (32, 32)
        shape_feat = [in_channels, im_size[0], im_size[1]]
        for d in range(net_depth):
            layers.append(nn.Conv2d(in_channels, net_width, kernel_size=3, padding=3 if channel == 1 and d == 0 else 1))
            shape_feat[0] = net_width
            norm = _norm(net_norm, shape_feat)
            if norm is not None:
                layers.append(norm)
            layers.append(_activation(net_act))
            in_channels = net_width
            pool = _pooling(net_pooling)
            if pool is not None:
                layers.append(pool)
                shape_feat[1] //= 2
                shape_feat[2] //= 2
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(shape_feat[0] * shape_feat[1] * shape_feat[2], num_classes)
        self.backend = backend

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        out = run_features(self.features, x, resolve(self.backend))
        return out.view(out.size(0), -1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(x))


__all__ = ["ConvNet"]
