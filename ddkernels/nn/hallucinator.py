"""HaBa's hallucinators, all of them in one module (see :class:`HallucinatorBank`)."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .._checks import check_int, check_tensor
from ..ops.scale_shift import scale_shift, segment_table
from ..ops.scale_shift.function import check_index
from ..ops.small_conv import small_conv2d, small_conv_transpose2d


def _pair(v, name: str) -> tuple[int, int]:
    if isinstance(v, int) and not isinstance(v, bool):
        v = (v, v)
    if (not isinstance(v, Sequence) or len(v) != 2
            or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in v)):
        raise ValueError(f"{name} must be a positive int or a pair of positive ints, got {v!r}")
    return int(v[0]), int(v[1])


class HallucinatorBank(nn.Module):
    """``num_hallucinators`` HaBa hallucinators (``StyleTranslator``) with stacked parameters.

    Hallucinator ``k`` maps a base to ``dec_k(scale_k ⊙ n(enc_k(base)) + shift_k)``: ``enc_k`` is
    a valid (unpadded) ``kernel_size`` conv to ``mid_channels``, ``scale_k``/``shift_k`` are
    per-pixel maps of the encoded size (initialised to 1 and 0), ``dec_k`` the matching transposed
    conv back to the image size, and ``n`` the identity (official code) or instance normalization.
    All hallucinators run at once: the encoders as one conv with ``Hn·mid`` output channels, the
    modulation as one :func:`ddkernels.scale_shift`, the decoders as one grouped transposed conv.
    On CPU both convs run :mod:`ddkernels.ops.small_conv`'s direct kernel (PyTorch's CPU convs
    reach only a few GFLOP/s with 3 channels per group); other devices use PyTorch's (cuDNN).

    Args:
        num_hallucinators: ``Hn`` (HaBa uses 5).
        in_channels: base channels (3, or 1 for single-channel bases).
        mid_channels: encoded channels.
        out_channels: image channels.
        kernel_size: encoder/decoder kernel size.
        feature_size: encoded ``(h, w)`` = image size − ``kernel_size`` + 1 (30×30 for 32×32
            images with HaBa's 3×3 kernels); bases must have the matching size.
        normalize: instance-normalize the encoded features before the scale-shift.
        eps: variance epsilon of the normalization.
        backend: passed to :func:`ddkernels.scale_shift` on every call (the convs always pick
            their backend automatically).

    Shapes:
        ``forward(bases)``: bases ``(B, in, H, W)`` -> ``(B·Hn, out, H, W)``, base-major: row
        ``b·Hn + k`` is hallucinator ``k`` applied to base ``b`` (``.view(B, Hn, out, H, W)`` splits
        them). :meth:`targets` gives the matching labels, :meth:`product_index` the hallucinator
        of each row.
        ``forward(bases, index=index)``: index ``(B,)`` int64 -> ``(B, out, H, W)``, row ``b`` is
        hallucinator ``index[b]`` applied to base ``b`` (HaBa's training and evaluation sampling).
        Sampled mode groups samples by hallucinator and runs each group's convs once; reading the
        group sizes is one host sync on GPU.
    """

    def __init__(self, num_hallucinators: int, in_channels: int, mid_channels: int = 3, out_channels: int = 3,
                 kernel_size: int = 3, feature_size: int | tuple[int, int] = (30, 30), normalize: bool = False,
                 *, eps: float = 1e-5, backend: str = "auto", device=None, dtype=None):
        super().__init__()
        for name, v in (("num_hallucinators", num_hallucinators), ("in_channels", in_channels),
                        ("mid_channels", mid_channels), ("out_channels", out_channels), ("kernel_size", kernel_size)):
            check_int(v, name, low=1)
        self.num_hallucinators, self.in_channels = num_hallucinators, in_channels
        self.mid_channels, self.out_channels, self.kernel_size = mid_channels, out_channels, kernel_size
        self.feature_size = _pair(feature_size, "feature_size")
        self.normalize, self.eps, self.backend = bool(normalize), eps, backend
        hn, k = num_hallucinators, kernel_size
        kw = dict(device=device, dtype=dtype)
        self.enc_weight = nn.Parameter(torch.empty(hn * mid_channels, in_channels, k, k, **kw))
        self.enc_bias = nn.Parameter(torch.empty(hn * mid_channels, **kw))
        self.scale = nn.Parameter(torch.empty(hn, mid_channels, *self.feature_size, **kw))
        self.shift = nn.Parameter(torch.empty(hn, mid_channels, *self.feature_size, **kw))
        # conv_transpose2d weight layout: (in = Hn·mid, out / groups, k, k).
        self.dec_weight = nn.Parameter(torch.empty(hn * mid_channels, out_channels, k, k, **kw))
        self.dec_bias = nn.Parameter(torch.empty(hn * out_channels, **kw))
        self.reset_parameters()

    @property
    def image_size(self) -> tuple[int, int]:
        """The base/image ``(H, W)`` these hallucinators take and produce."""
        return tuple(s + self.kernel_size - 1 for s in self.feature_size)

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """HaBa's initialisation: each hallucinator's convs as freshly built ``nn.Conv2d`` /
        ``nn.ConvTranspose2d`` (PyTorch's default init), scale 1, shift 0."""
        mid, out = self.mid_channels, self.out_channels
        for k in range(self.num_hallucinators):
            enc = nn.Conv2d(self.in_channels, mid, self.kernel_size)
            dec = nn.ConvTranspose2d(mid, out, self.kernel_size)
            self.enc_weight[k * mid:(k + 1) * mid].copy_(enc.weight)
            self.enc_bias[k * mid:(k + 1) * mid].copy_(enc.bias)
            self.dec_weight[k * mid:(k + 1) * mid].copy_(dec.weight)
            self.dec_bias[k * out:(k + 1) * out].copy_(dec.bias)
        self.scale.fill_(1.0)
        self.shift.zero_()

    def _check_bases(self, bases: torch.Tensor) -> None:
        check_tensor(bases, "bases", ndim=4, layout="(B, C, H, W)")
        if bases.shape[1] != self.in_channels:
            raise ValueError(f"bases must have in_channels={self.in_channels} channels, got shape {tuple(bases.shape)}")
        if tuple(bases.shape[2:]) != self.image_size:
            raise ValueError(f"bases must be {self.image_size[0]}x{self.image_size[1]} images (feature_size "
                             f"{self.feature_size} + kernel_size {self.kernel_size} - 1), got shape {tuple(bases.shape)}")

    def _modulate(self, feats: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        return scale_shift(feats, self.scale, self.shift, index=index, normalize=self.normalize, eps=self.eps,
                           backend=self.backend)

    def forward(self, bases: torch.Tensor, index: torch.Tensor | None = None) -> torch.Tensor:
        self._check_bases(bases)
        hn, mid, out = self.num_hallucinators, self.mid_channels, self.out_channels
        b, _, h, w = bases.shape
        fh, fw = self.feature_size
        if index is None:
            # Every encoder sees every base, so the encoders are one ungrouped conv; its output
            # (B, Hn·mid) viewed as (B·Hn, mid) is sampled mode with index k at row b·Hn + k —
            # no transposes, and the decoders read the result back as Hn groups.
            feats = small_conv2d(bases, self.enc_weight, self.enc_bias).view(b * hn, mid, fh, fw)
            feats = self._modulate(feats, self.product_index(b, device=bases.device))
            y = small_conv_transpose2d(feats.view(b, hn * mid, fh, fw), self.dec_weight, self.dec_bias, groups=hn)
            return y.view(b * hn, out, h, w)
        check_index(index, b, hn, bases.device)
        # Group the samples by hallucinator so each conv runs once per hallucinator on its own
        # samples (no Hn-fold wasted work), then restore the caller's order.
        order, offsets = segment_table(index, hn)
        counts = offsets.diff().tolist()
        chunks = bases.index_select(0, order).split(counts)
        feats = torch.cat([small_conv2d(x, self.enc_weight[k * mid:(k + 1) * mid], self.enc_bias[k * mid:(k + 1) * mid])
                           for k, x in enumerate(chunks)])
        feats = self._modulate(feats, index.index_select(0, order)).split(counts)
        y = torch.cat([small_conv_transpose2d(f, self.dec_weight[k * mid:(k + 1) * mid], self.dec_bias[k * out:(k + 1) * out])
                       for k, f in enumerate(feats)])
        return y.index_select(0, torch.argsort(order))

    def product_index(self, batch: int, device=None) -> torch.Tensor:
        """The hallucinator of each row of ``forward(bases)`` for ``batch`` bases: ``k`` at ``b·Hn + k``."""
        return torch.arange(self.num_hallucinators, device=device).repeat(batch)

    def targets(self, labels: torch.Tensor) -> torch.Tensor:
        """Labels of ``forward(bases)``'s rows: each base's label repeated ``Hn`` times, base-major."""
        check_tensor(labels, "labels", floating=False)
        return labels.repeat_interleave(self.num_hallucinators, dim=0)

    def extra_repr(self) -> str:
        return (f"num_hallucinators={self.num_hallucinators}, in_channels={self.in_channels}, "
                f"mid_channels={self.mid_channels}, out_channels={self.out_channels}, kernel_size={self.kernel_size}, "
                f"feature_size={self.feature_size}, normalize={self.normalize}, backend={self.backend!r}")


__all__ = ["HallucinatorBank"]
