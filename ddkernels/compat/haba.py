"""Huage001/DatasetFactorization ``utils.py``: ``StyleTranslator`` (one HaBa hallucinator) with the
original's parameter names, shapes and initialisation, its modulation on :func:`ddkernels.scale_shift`;
and conversions between a list of them (what ``distill_fac.py`` keeps in ``styles`` and saves as
``styles_<it>.pt``) and one :class:`ddkernels.nn.HallucinatorBank` that runs them all at once.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import torch
from torch import nn

from ..nn.hallucinator import HallucinatorBank
from ..ops.scale_shift import scale_shift
from ._backend import resolve

_KEYS = ("enc.weight", "enc.bias", "scale", "shift", "dec.weight", "dec.bias")


class StyleTranslator(nn.Module):
    """HaBa's hallucinator ``dec(scale ⊙ enc(x) + shift)``, same constructor and ``state_dict``.

    Parameters (as the original): ``enc`` = ``Conv2d(in_channel, mid_channel, kernel_size)`` (no
    padding), ``scale`` = ones and ``shift`` = zeros of shape ``(1, mid_channel, s, s)`` with
    ``s = image_size − kernel_size + 1``, ``dec`` = ``ConvTranspose2d(mid_channel, out_channel,
    kernel_size)``; created in the original's order, so one seed gives the original's initial
    weights. The modulation runs as :func:`ddkernels.scale_shift`; the convs are PyTorch's.

    Args:
        in_channel, mid_channel, out_channel, image_size, kernel_size: as the original (defaults
            3, 3, 3, 32, 1; HaBa's ``distill_fac.py`` passes ``kernel_size=3``).
        backend: for the scale-shift; overrides the module-wide backend.

    Shapes:
        x ``(B, in_channel, image_size, image_size)`` → ``(B, out_channel, image_size, image_size)``.
    """

    def __init__(self, in_channel: int = 3, mid_channel: int = 3, out_channel: int = 3, image_size: int = 32,
                 kernel_size: int = 1, *, backend: str | None = None):
        super().__init__()
        s = image_size - kernel_size + 1
        if s < 1:
            raise ValueError(f"image_size must be at least kernel_size, got image_size={image_size}, "
                             f"kernel_size={kernel_size}")
        self.enc = nn.Conv2d(in_channel, mid_channel, kernel_size)
        self.scale = nn.Parameter(torch.ones(1, mid_channel, s, s))
        self.shift = nn.Parameter(torch.zeros(1, mid_channel, s, s))
        self.dec = nn.ConvTranspose2d(mid_channel, out_channel, kernel_size)
        self.backend = backend

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.enc(x)
        if feats.shape[-2:] != self.scale.shape[-2:]:
            raise ValueError(f"x must be {self.scale.shape[-1] + self.enc.kernel_size[0] - 1}-pixel square images "
                             f"(the translator's image_size), got shape {tuple(x.shape)}")
        # Product mode with one hallucinator: x (1, B, C, h, w), scale/shift (1, C, h, w).
        y = scale_shift(feats.unsqueeze(0), self.scale, self.shift, backend=resolve(self.backend))
        return self.dec(y[0])


def _slots(bank: HallucinatorBank, i: int, t: nn.Module) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(bank view, translator parameter) pairs of hallucinator ``i``: the one layout mapping that
    both conversions copy along (the bank stacks each parameter along dim 0)."""
    mid, out = bank.mid_channels, bank.out_channels
    return [(bank.enc_weight[i * mid:(i + 1) * mid], t.enc.weight), (bank.enc_bias[i * mid:(i + 1) * mid], t.enc.bias),
            (bank.scale[i:i + 1], t.scale), (bank.shift[i:i + 1], t.shift),
            (bank.dec_weight[i * mid:(i + 1) * mid], t.dec.weight), (bank.dec_bias[i * out:(i + 1) * out], t.dec.bias)]


def _dims(t: StyleTranslator) -> tuple[int, int, int, int, tuple[int, int]]:
    mid, cin, k, _ = t.enc.weight.shape
    return cin, mid, t.dec.weight.shape[1], k, tuple(t.scale.shape[-2:])


def bank_from_translators(translators: Sequence[nn.Module], *, normalize: bool = False,
                          backend: str | None = None) -> HallucinatorBank:
    """One :class:`~ddkernels.nn.HallucinatorBank` holding copies of ``translators``' parameters.

    Hallucinator ``k`` of the bank is ``translators[k]``: ``bank(bases, index=index)`` equals
    ``stack([translators[index[b]](bases[b:b+1])[0] for b])``, and ``bank(bases)`` applies all of them.
    Works for this module's and the original's ``StyleTranslator`` (anything with ``enc``, ``scale``,
    ``shift``, ``dec``); all must have the same sizes.

    Args:
        translators: an ``nn.ModuleList`` or list (HaBa's ``styles``).
        normalize: instance-normalize before the modulation (off in HaBa's code).
        backend: the bank's backend (default: the module-wide one when converting).
    """
    if not len(translators):
        raise ValueError("translators must hold at least one StyleTranslator")
    for i, t in enumerate(translators):
        missing = [k for k in ("enc", "scale", "shift", "dec") if not hasattr(t, k)]
        if missing:
            raise TypeError(f"translators[{i}] is not a StyleTranslator (no {', '.join(missing)})")
    dims = _dims(translators[0])
    for i, t in enumerate(translators):
        if _dims(t) != dims:
            raise ValueError(f"translators[{i}] has (in, mid, out, kernel, feature size) {_dims(t)}, "
                             f"translators[0] has {dims}")
    cin, mid, out, k, fs = dims
    ref = translators[0].scale
    bank = HallucinatorBank(len(translators), cin, mid, out, k, fs, normalize, backend=resolve(backend),
                            device=ref.device, dtype=ref.dtype)
    with torch.no_grad():
        for i, t in enumerate(translators):
            for dst, src in _slots(bank, i, t):
                dst.copy_(src)
    return bank


def translators_from_bank(bank: HallucinatorBank, *, backend: str | None = None) -> nn.ModuleList:
    """The bank's hallucinators as an ``nn.ModuleList`` of :class:`StyleTranslator` (copies), whose
    ``state_dict()`` has the layout of HaBa's ``styles_<it>.pt``."""
    if not isinstance(bank, HallucinatorBank):
        raise TypeError(f"bank must be a ddkernels.nn.HallucinatorBank, got {type(bank).__name__}")
    if bank.normalize:
        raise ValueError("bank uses normalize=True, which StyleTranslator (HaBa's code) does not have")
    fh, fw = bank.feature_size
    if fh != fw:
        raise ValueError(f"StyleTranslator is square; bank.feature_size is {bank.feature_size}")
    ts = nn.ModuleList(StyleTranslator(bank.in_channels, bank.mid_channels, bank.out_channels, fh + bank.kernel_size - 1, bank.kernel_size,
                                       backend=backend) for _ in range(bank.num_hallucinators))
    ts.to(device=bank.scale.device, dtype=bank.scale.dtype)
    with torch.no_grad():
        for i, t in enumerate(ts):
            for src, dst in _slots(bank, i, t):
                dst.copy_(src)
    return ts


def bank_from_state_dict(state_dict: Mapping[str, torch.Tensor], *, normalize: bool = False,
                         backend: str | None = None) -> HallucinatorBank:
    """A bank from HaBa's saved ``styles`` (``torch.load("styles_<it>.pt")``: keys ``"<k>.enc.weight"``,
    ``"<k>.scale"``, … for ``k = 0..Hn−1``); sizes are read from the tensors."""
    count = 0
    while f"{count}.scale" in state_dict:
        count += 1
    if not count:
        raise KeyError("state_dict has no '0.scale': expected HaBa's styles layout ('<k>.enc.weight', '<k>.scale', ...)")
    missing = [f"{k}.{name}" for k in range(count) for name in _KEYS if f"{k}.{name}" not in state_dict]
    extra = sorted(set(state_dict) - {f"{k}.{name}" for k in range(count) for name in _KEYS})
    if missing or extra:
        raise KeyError(f"state_dict is not HaBa's styles layout for {count} translators: "
                       f"missing {missing or 'nothing'}, unexpected {extra or 'nothing'}")
    mid, cin, k, _ = state_dict["0.enc.weight"].shape
    out, s = state_dict["0.dec.weight"].shape[1], state_dict["0.scale"].shape[-1]
    ts = nn.ModuleList(StyleTranslator(cin, mid, out, s + k - 1, k) for _ in range(count))
    ts.load_state_dict(state_dict)
    return bank_from_translators(ts, normalize=normalize, backend=backend)


__all__ = ["StyleTranslator", "bank_from_state_dict", "bank_from_translators", "translators_from_bank"]
