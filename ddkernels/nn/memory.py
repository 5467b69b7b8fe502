"""RTP's addressable memories (Deng & Russakovsky, NeurIPS 2022), docs/spec.md §5a: a few shared bases and a
table of per-class addressing rows; every row decodes to one training image.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .._checks import check_int, check_tensor


def _image_shape(image_shape, downsample: int) -> tuple[int, int, int]:
    if (not isinstance(image_shape, Sequence) or len(image_shape) != 3
            or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in image_shape)):
        raise ValueError(f"image_shape must be (channels, H, W) of positive ints, got {image_shape!r}")
    check_int(downsample, "downsample", low=1)
    c, h, w = image_shape
    if h % downsample or w % downsample:
        raise ValueError(f"downsample={downsample} must divide the image size {h}×{w} "
                         f"(bases are stored at (H/downsample)×(W/downsample))")
    return int(c), int(h), int(w)


def rows_for_budget(ipc: int, num_classes: int, image_shape: Sequence[int], num_bases: int,
                    downsample: int = 1) -> int:
    """Addressing rows per class that fit a budget of ``ipc`` plain images per class (RTP's
    ``cal_ncoef``): ``r = floor((ipc·C·ch·H·W − K·ch·H·W/ds²) / (C·K))``.

    Raises ``ValueError`` naming ``num_bases`` when the bases alone leave no room for one row per class.
    """
    check_int(ipc, "ipc", low=1)
    check_int(num_classes, "num_classes", low=1)
    check_int(num_bases, "num_bases", low=1)
    c, h, w = _image_shape(image_shape, downsample)
    budget = ipc * num_classes * c * h * w
    bases = num_bases * c * (h // downsample) * (w // downsample)
    r = (budget - bases) // (num_classes * num_bases)
    if r < 1:
        raise ValueError(f"num_bases={num_bases} bases of {c}×{h // downsample}×{w // downsample} floats use {bases} of "
                         f"the {budget}-float budget (ipc={ipc}), leaving less than one addressing row per class; "
                         f"use fewer bases, a larger downsample or a larger ipc")
    return int(r)


def upsample_bases(bases: torch.Tensor, image_shape: Sequence[int], downsample: int) -> torch.Tensor:
    """Bilinear (``align_corners=False``) upsampling of flat bases ``(K, ch·h·w)`` to ``(K, ch·H·W)``."""
    c, h, w = image_shape
    if downsample == 1:
        return bases
    low = bases.view(-1, c, h // downsample, w // downsample)
    return F.interpolate(low, size=(h, w), mode="bilinear", align_corners=False).flatten(1)


def addressable_decode(bases: torch.Tensor, coefficients: torch.Tensor, image_shape: Sequence[int],
                       downsample: int = 1, *, upsample_first: bool = True) -> torch.Tensor:
    """Images ``upsample((coefficients @ bases).view(N, ch, h, w))`` (docs/spec.md §5a decode).

    Bilinear upsampling is linear and acts on each basis image alike, so it commutes with the
    combination: with ``upsample_first`` the ``K`` bases are upsampled once and one GEMM
    ``coefficients @ upsample(bases)`` writes the full-size images (no per-image upsample, ``K``
    instead of ``N`` interpolations). ``upsample_first=False`` is the original code's order
    (GEMM at low resolution, then upsample all ``N`` images); both agree to rounding.

    Args:
        bases: ``(K, ch·(H/ds)·(W/ds))``.
        coefficients: ``(N, K)`` addressing rows.
        image_shape: ``(ch, H, W)`` of the decoded images.
        downsample: ``ds``.

    Returns:
        ``(N, ch, H, W)``.
    """
    c, h, w = _image_shape(image_shape, downsample)
    check_tensor(bases, "bases", ndim=2, layout="(K, ch·h·w)")
    check_tensor(coefficients, "coefficients", ndim=2, layout="(N, K)")
    d = c * (h // downsample) * (w // downsample)
    if bases.shape[1] != d:
        raise ValueError(f"bases must be (K, {d}) for image_shape {(c, h, w)} and downsample {downsample}, "
                         f"got {tuple(bases.shape)}")
    if coefficients.shape[1] != bases.shape[0]:
        raise ValueError(f"coefficients must be (N, {bases.shape[0]}) for {bases.shape[0]} bases, "
                         f"got {tuple(coefficients.shape)}")
    if upsample_first:
        return (coefficients @ upsample_bases(bases, (c, h, w), downsample)).view(-1, c, h, w)
    low = (coefficients @ bases).view(-1, c, h // downsample, w // downsample)
    return low if downsample == 1 else F.interpolate(low, size=(h, w), mode="bilinear", align_corners=False)


class AddressableMemory(nn.Module):
    """RTP's memory: ``K`` shared bases ``M`` and a class-major addressing table ``A``.

    Row ``c·r + i`` of ``A`` is the ``i``-th addressing row of class ``c`` (the paper's ``A_i``
    applied to the one-hot query ``e_c``) and decodes to the image
    ``upsample((A[c·r+i] @ M).view(ch, H/ds, W/ds))`` with label ``c``. Labels are hard class
    indices, as in the official code (``label(row) = row // r``); nothing about them is stored.
    Both tables are Xavier-uniform initialised (``nn.Embedding`` + ``xavier_uniform_`` in the
    original).

    Args:
        num_classes: ``C``.
        num_bases: ``K``.
        rows_per_class: ``r`` (see :func:`rows_for_budget` / :meth:`from_budget`).
        image_shape: ``(ch, H, W)`` of the decoded images.
        downsample: ``ds``; bases are stored at ``(H/ds) × (W/ds)``.
        generator: seeds the initialisation.

    Shapes:
        ``bases``: ``(K, ch·(H/ds)·(W/ds))``; ``addressing``: ``(C·r, K)``.
        ``forward(rows)``: rows int64 ``(N,)`` (default all) -> ``(N, ch, H, W)``.
    """

    def __init__(self, num_classes: int, num_bases: int, rows_per_class: int, image_shape: Sequence[int],
                 downsample: int = 1, *, generator: torch.Generator | None = None,
                 dtype: torch.dtype | None = None, device=None):
        super().__init__()
        check_int(num_classes, "num_classes", low=1)
        check_int(num_bases, "num_bases", low=1)
        check_int(rows_per_class, "rows_per_class", low=1)
        self.image_shape = _image_shape(image_shape, downsample)
        self.num_classes, self.num_bases, self.rows_per_class, self.downsample = (
            num_classes, num_bases, rows_per_class, downsample)
        c, h, w = self.image_shape
        d = c * (h // downsample) * (w // downsample)
        kw = dict(dtype=dtype, device=device)
        self.bases = nn.Parameter(torch.empty(num_bases, d, **kw))
        self.addressing = nn.Parameter(torch.empty(num_classes * rows_per_class, num_bases, **kw))
        nn.init.xavier_uniform_(self.bases, generator=generator)
        nn.init.xavier_uniform_(self.addressing, generator=generator)

    @classmethod
    def from_budget(cls, ipc: int, num_classes: int, num_bases: int, image_shape: Sequence[int],
                    downsample: int = 1, **kwargs) -> "AddressableMemory":
        """The memory with as many rows per class as a budget of ``ipc`` images per class allows."""
        r = rows_for_budget(ipc, num_classes, image_shape, num_bases, downsample)
        return cls(num_classes, num_bases, r, image_shape, downsample, **kwargs)

    @property
    def num_images(self) -> int:
        return self.num_classes * self.rows_per_class

    def num_stored(self) -> int:
        """Stored floats: ``K·ch·(H/ds)·(W/ds) + C·r·K``."""
        return self.bases.numel() + self.addressing.numel()

    def _check_rows(self, rows) -> None:
        """``rows`` must be an int64 tensor of row numbers in ``[0, C·r)`` on the memory's device."""
        if not isinstance(rows, torch.Tensor):
            raise TypeError(f"rows must be a torch.Tensor of dtype int64, got {type(rows).__name__}")
        if rows.dtype != torch.int64:
            raise TypeError(f"rows must have dtype int64 (torch.long), got {rows.dtype}")
        if rows.device != self.addressing.device:
            raise ValueError(f"rows must be on the memory's device {self.addressing.device}, got {rows.device}")
        # One reduction (a sync on GPU) buys a readable error instead of a raw IndexError.
        n = self.num_images
        if rows.numel() and rows.device.type != "meta" and (int(rows.min()) < 0 or int(rows.max()) >= n):
            raise ValueError(f"rows must hold row numbers in [0, num_classes·rows_per_class = {n}), got values in "
                             f"[{int(rows.min())}, {int(rows.max())}]")

    def labels(self, rows: torch.Tensor | None = None) -> torch.Tensor:
        """Class of each decoded row (``row // r``), int64."""
        if rows is None:
            rows = torch.arange(self.num_images, device=self.addressing.device)
        else:
            self._check_rows(rows)
        return torch.div(rows, self.rows_per_class, rounding_mode="floor")

    def sample_rows(self, per_class: int, generator: torch.Generator | None = None,
                    classes: Sequence[int] | None = None) -> torch.Tensor:
        """``per_class`` distinct random rows of each class in ``classes`` (default all), sorted within
        each class and concatenated class by class (RTP's minibatch); all rows if ``per_class >= r``."""
        check_int(per_class, "per_class", low=1)
        classes = range(self.num_classes) if classes is None else classes
        r = self.rows_per_class
        dev = generator.device if generator is not None else self.addressing.device  # drawn where the generator is
        picks = [torch.randperm(r, generator=generator, device=dev)[:per_class].sort().values + c * r for c in classes]
        return torch.cat(picks).to(self.addressing.device)

    @torch.no_grad()
    def init_from_images(self, images: torch.Tensor) -> "AddressableMemory":
        """Set the memory so that row ``j`` decodes to the best rank-``K`` approximation of
        ``images[j]`` at the bases' resolution (not RTP's init, which is Xavier-uniform: a warm start
        for short runs, like IDC's real-image init).

        The bases are the top ``K`` right singular vectors of the ``ds×ds``-average-pooled images, uncentered (the decode has no bias term); the rows are the projections. Both are
        rescaled by ``β`` and ``1/β`` so that basis and row norms match on average (the decode is
        unchanged; balanced factors get comparable gradients). With fewer images than bases the
        extra bases keep their values and get zero rows.

        Args:
            images: ``(C·r, ch, H, W)``, one per addressing row (class-major).

        Returns:
            ``self``.
        """
        check_tensor(images, "images", ndim=4, layout="(C·r, ch, H, W)")
        if tuple(images.shape) != (self.num_images, *self.image_shape):
            raise ValueError(f"images must be ({self.num_images}, {', '.join(map(str, self.image_shape))}) "
                             f"(one per addressing row), got {tuple(images.shape)}")
        low = F.avg_pool2d(images, self.downsample) if self.downsample > 1 else images
        low = low.flatten(1).to(self.bases)
        _, _, vh = torch.linalg.svd(low, full_matrices=False)
        k = min(self.num_bases, vh.shape[0])
        coeffs = low @ vh[:k].T
        beta = coeffs.norm(dim=1).mean().clamp_min(1e-12).sqrt()
        self.bases[:k] = vh[:k] * beta
        self.addressing.zero_()
        self.addressing[:, :k] = coeffs / beta
        return self

    def decode(self, rows: torch.Tensor | None = None, *, upsample_first: bool = True) -> torch.Tensor:
        """Decoded images of ``rows`` (default all ``C·r``); see :func:`addressable_decode`."""
        if rows is not None:
            self._check_rows(rows)
        coeffs = self.addressing if rows is None else self.addressing[rows]
        return addressable_decode(self.bases, coeffs, self.image_shape, self.downsample, upsample_first=upsample_first)

    def forward(self, rows: torch.Tensor | None = None) -> torch.Tensor:
        return self.decode(rows)

    def extra_repr(self) -> str:
        return (f"num_classes={self.num_classes}, num_bases={self.num_bases}, rows_per_class={self.rows_per_class}, "
                f"image_shape={self.image_shape}, downsample={self.downsample}")


__all__ = ["AddressableMemory", "addressable_decode", "rows_for_budget", "upsample_bases"]
