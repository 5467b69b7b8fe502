"""Reference multi-formation decode: IDC's ``decode_zoom`` written out step by step.

snu-mllab/Efficient-Dataset-Condensation, condense.py ``Synthesizer.decode_zoom``: pad right/bottom
with 0.5 up to a multiple of the factor, cut f×f tiles row-major, concatenate them tile-major along
the batch, and resize with ``nn.Upsample(mode='bilinear')`` (align_corners=False). Plain autograd
gives the backward. This is the ground truth every fused backend is tested against.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def multi_formation(x: torch.Tensor, factor: int, size: tuple[int, int]) -> torch.Tensor:
    """(N, C, h, w) -> (factor²·N, C, *size); output row k·N + b is tile k of image b."""
    h, w = x.shape[-2:]
    # IDC reads one side and assumes square images; we pad and tile each side on its own, which is
    # the same thing for square inputs.
    pad_h, pad_w = (-h) % factor, (-w) % factor
    if pad_h or pad_w:
        x = F.pad(x, (0, pad_w, 0, pad_h), value=0.5)
    sh, sw = math.ceil(h / factor), math.ceil(w / factor)
    tiles = [
        x[:, :, i * sh:(i + 1) * sh, j * sw:(j + 1) * sw]
        for i in range(factor)  # tile row: outer loop
        for j in range(factor)  # tile column: inner loop
    ]
    return F.interpolate(torch.cat(tiles), size=size, mode="bilinear", align_corners=False)


def multi_formation_eager(x: torch.Tensor, factor: int, size: tuple[int, int]) -> torch.Tensor:
    """The same decode as one reshape/permute and one interpolate (the best eager formulation)."""
    n, c, h, w = x.shape
    pad_h, pad_w = (-h) % factor, (-w) % factor
    if pad_h or pad_w:
        x = F.pad(x, (0, pad_w, 0, pad_h), value=0.5)
    sh, sw = (h + pad_h) // factor, (w + pad_w) // factor
    tiles = x.reshape(n, c, factor, sh, factor, sw).permute(2, 4, 0, 1, 3, 5)
    return F.interpolate(tiles.reshape(factor * factor * n, c, sh, sw), size=size, mode="bilinear", align_corners=False)
