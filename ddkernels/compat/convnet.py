"""The ``ConvNet`` of the four original repositories, with every ``GroupNorm(C, C) → ReLU
[→ AvgPool2d(2, 2)]`` run of layers on :func:`ddkernels.norm_relu_pool` (docs/spec.md §0.1, §0.2).

One class takes every constructor convention: VICO-UoE/DatasetCondensation ``networks.py`` (and
GeorgeCazenavette/mtt-distillation's copy), Huage001/DatasetFactorization's (``only_feat``,
``forward(x, feat)``) and snu-mllab/Efficient-Dataset-Condensation ``models/convnet.py``
(``num_classes`` first, IDC's norm names, ``forward(x, return_features)``, ``get_feature``; built as
:class:`IDCConvNet`, a subclass). Each gets the original's layers in the original's order (so one
seed gives the original's initial weights) and the same ``state_dict`` keys. The
original's ``utils.py`` imports ``ConvNet`` and builds every network through ``get_network``, which
looks the name up in ``utils`` at call time: :func:`ddkernels.compat.patch` swapping ``utils.ConvNet``
therefore accelerates every ``get_network('ConvNet…', …)`` that follows.
"""
from __future__ import annotations

import inspect

import torch
from torch import nn

from ..nn.convnet import run_features
from ._backend import resolve


class _Swish(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(x)


def _activation(name: str, inplace: bool = True) -> nn.Module:
    acts = {"sigmoid": nn.Sigmoid, "relu": lambda: nn.ReLU(inplace=inplace),
            "leakyrelu": lambda: nn.LeakyReLU(negative_slope=0.01), "swish": _Swish}
    if name not in acts:
        raise ValueError(f"net_act must be one of {', '.join(acts)}, got {name!r}")
    return acts[name]()


def _norm(name: str, shape_feat: list[int], idc: bool = False) -> nn.Module | None:
    c = shape_feat[0]
    if idc:  # IDC's names for the same layers
        if name not in _IDC_NORMS:
            raise ValueError(f"net_norm must be one of {', '.join(_IDC_NORMS)}, got {name!r}")
        name = _IDC_NORMS[name]
    norms = {"batchnorm": lambda: nn.BatchNorm2d(c, affine=True),
             "layernorm": lambda: nn.LayerNorm(shape_feat, elementwise_affine=True),
             "instancenorm": lambda: nn.GroupNorm(c, c, affine=True),
             "groupnorm": lambda: nn.GroupNorm(4, c, affine=True), "none": lambda: None}
    if name not in norms:
        raise ValueError(f"net_norm must be one of {', '.join(norms)}, got {name!r}")
    return norms[name]()


_IDC_NORMS = {"instance": "instancenorm", "batch": "batchnorm", "layer": "layernorm", "group": "groupnorm",
              "none": "none"}


def _pooling(name: str) -> nn.Module | None:
    pools = {"maxpooling": lambda: nn.MaxPool2d(kernel_size=2, stride=2),
             "avgpooling": lambda: nn.AvgPool2d(kernel_size=2, stride=2), "none": lambda: None}
    if name not in pools:
        raise ValueError(f"net_pooling must be one of {', '.join(pools)}, got {name!r}")
    return pools[name]()


class ConvNet(nn.Module):
    """DatasetCondensation's ``ConvNet(channel, num_classes, net_width, net_depth, net_act, net_norm,
    net_pooling, im_size=(32, 32))``: ``net_depth × [Conv3x3 → norm → act → pool]`` → Linear.

    As the original: 28-pixel inputs are treated as 32 (1-channel inputs get padding 3 in the first
    conv), ``instancenorm`` is ``GroupNorm(C, C)``, ``layernorm`` normalizes over (C, H, W),
    ``groupnorm`` uses 4 groups, and ``relu`` is in place. Unknown options raise ``ValueError``
    naming the argument (the original calls ``exit``).

    The other repositories' conventions:

    * DatasetFactorization: ``only_feat=True`` builds no classifier (as the original, whose
      ``forward`` then fails; here it returns the flattened features), and ``forward(x, feat=True)``
      returns ``(logits, features)``. Its ``get_network(..., dist=True)`` wraps the net in
      ``nn.DataParallel`` and MTT/HaBa wrap the student in their ``ReparamModule``: both work, the
      fused layers read the parameters the wrapper sets.
    * Efficient-Dataset-Condensation: a call that only binds to ``ConvNet(num_classes,
      net_norm='instance', net_depth=3, net_width=128, channel=3, net_act='relu',
      net_pooling='avgpooling', im_size=(32, 32))`` — e.g. ``ConvNet(10, net_norm='instance')``,
      or all positional with a string second argument — builds an :class:`IDCConvNet`.
    * ``embed(x)`` (VICO's; here on every convention) is the flattened features.

    Args:
        backend: for the fused layers (keyword only; default: the module-wide backend of
            :mod:`ddkernels.compat`). Configurations without a ``GroupNorm(C, C) → ReLU`` run
            layer by layer exactly as the original.
    """

    def __new__(cls, *args, **kwargs):
        if cls is ConvNet and _idc_convention(args, kwargs):
            return super().__new__(IDCConvNet)  # type(...) then runs IDCConvNet.__init__ on the same arguments
        return super().__new__(cls)

    def __init__(self, channel, num_classes, net_width, net_depth, net_act, net_norm, net_pooling,
                 im_size=(32, 32), only_feat=False, *, backend: str | None = None):
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
        self.only_feat = bool(only_feat)
        if not self.only_feat:  # DatasetFactorization: no classifier, as no classifier keys in the state_dict
            self.classifier = nn.Linear(shape_feat[0] * shape_feat[1] * shape_feat[2], num_classes)
        self.backend = backend

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        out = run_features(self.features, x, resolve(self.backend))
        return out.view(out.size(0), -1)

    def forward(self, x: torch.Tensor, feat: bool = False):
        emb = self.embed(x)
        if self.only_feat:
            if feat:
                raise ValueError("feat=True needs the classifier, which only_feat=True leaves out")
            return emb
        out = self.classifier(emb)
        return (out, emb) if feat else out


class IDCConvNet(ConvNet):
    """Efficient-Dataset-Condensation's ``models/convnet.py`` ``ConvNet`` (what :class:`ConvNet` builds
    for that convention): the same network, stored as ``layers.{conv,norm,act,pool}.<d>`` (so the
    original's ``state_dict`` loads), ``relu`` not in place, norms named ``instance``, ``batch``,
    ``layer``, ``group``, ``none``.

    ``forward(x, return_features=False)`` returns ``logits`` or ``(logits, features)``;
    ``get_feature(x, idx_from, idx_to=-1, return_prob=False, return_logit=False)`` returns the
    outputs of blocks ``idx_from..idx_to`` as the original does (with ``return_prob`` /
    ``return_logit`` and the last block reached: ``(all block outputs, softmax or logits)``).
    ``net_norm='none'`` skips the norm in ``get_feature`` (the original indexes an empty list there).
    """

    def __init__(self, num_classes, net_norm="instance", net_depth=3, net_width=128, channel=3, net_act="relu",
                 net_pooling="avgpooling", im_size=(32, 32), *, backend: str | None = None):
        nn.Module.__init__(self)
        act, pool = _activation(net_act, inplace=False), _pooling(net_pooling)  # one of each, shared by the blocks
        self.depth, self.net_norm, self.net_act, self.net_pooling = net_depth, net_norm, act, pool
        conv, norm = [], []
        in_channels = channel
        if im_size[0] == 28:
            im_size = (32, 32)
        shape_feat = [in_channels, im_size[0], im_size[1]]
        for d in range(net_depth):
            conv.append(nn.Conv2d(in_channels, net_width, kernel_size=3, padding=3 if channel == 1 and d == 0 else 1))
            shape_feat[0] = net_width
            n = _norm(net_norm, shape_feat, idc=True)
            if n is not None:
                norm.append(n)
            in_channels = net_width
            if pool is not None:
                shape_feat[1] //= 2
                shape_feat[2] //= 2
        self.layers = nn.ModuleDict({"conv": nn.ModuleList(conv), "norm": nn.ModuleList(norm),
                                     "act": nn.ModuleList([act] * net_depth),
                                     "pool": nn.ModuleList([pool] * net_depth if pool is not None else [])})
        self.only_feat = False
        self.classifier = nn.Linear(shape_feat[0] * shape_feat[1] * shape_feat[2], num_classes)
        self.backend = backend

    def _block(self, d: int, x: torch.Tensor) -> torch.Tensor:
        mods = [self.layers["conv"][d]] + ([self.layers["norm"][d]] if len(self.layers["norm"]) else [])
        mods += [self.layers["act"][d]] + ([self.layers["pool"][d]] if len(self.layers["pool"]) else [])
        return run_features(mods, x, resolve(self.backend))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        for d in range(self.depth):
            x = self._block(d, x)
        return x.view(x.shape[0], -1)

    def forward(self, x: torch.Tensor, return_features: bool = False):
        out = self.embed(x)
        logit = self.classifier(out)
        return (logit, out) if return_features else logit

    def get_feature(self, x, idx_from, idx_to=-1, return_prob=False, return_logit=False):
        if idx_to == -1:
            idx_to = idx_from
        features = []
        for d in range(self.depth):
            x = self._block(d, x)
            features.append(x)
            if idx_to < len(features):
                return features[idx_from:idx_to + 1]
        if return_prob or return_logit:
            logit = self.classifier(x.view(x.size(0), -1))
            return features, (torch.softmax(logit, dim=-1) if return_prob else logit)
        return features[idx_from:idx_to + 1]


def _idc_convention(args, kwargs) -> bool:
    """The call binds to IDC's constructor and not to DatasetCondensation's (whose ``num_classes``,
    second, is never a string: an all-positional IDC call has ``net_norm`` there)."""
    try:
        dc = inspect.signature(ConvNet.__init__).bind(None, *args, **kwargs)
        if not isinstance(dc.arguments["num_classes"], str):
            return False
    except TypeError:
        pass
    try:
        inspect.signature(IDCConvNet.__init__).bind(None, *args, **kwargs)
    except TypeError:
        return False
    return True


__all__ = ["ConvNet", "IDCConvNet"]
