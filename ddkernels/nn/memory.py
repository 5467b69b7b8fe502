"""RTP's addressable memories (Deng & Russakovsky, NeurIPS 2022), docs/spec.md §5a: a few shared bases and a
table of per-class addressing rows; every row decodes to one training image.

The paper writes an image as ``xᵀ = yᵀ A_i [b_1 … b_K]ᵀ``: a label vector ``y`` addresses the ``i``-th
addressing matrix. The official code (princetonvisualai/RememberThePast-DatasetDistillation,
``compressors/imgs_embedding_basis_minibatch.py``) only ever uses fixed one-hot ``y`` and hard
labels (``self.labs``, ``requires_grad=False``); its README notes that the addressing allows "more
generalized queries … beyond one-hot labels". :data:`LABEL_MODES` adds two such options, each
with its stored floats counted against the budget:

* ``"onehot"`` — the official code: ``y = e_c``, so row ``c·r + i`` of the table is ``e_cᵀ A_i``.
* ``"soft"`` — the same rows, plus a learned label distribution per row, ``softmax`` of stored
  logits ``(C·r, C)`` (learned labels as in Bohdal et al., "Flexible Dataset Distillation: Learn
  Labels Instead of Images", 2020, here through RTP's meta-gradient); the rows train on these soft
  targets (soft-target cross-entropy).
* ``"embedding"`` — ``y`` is a learned ``d_y``-dimensional code per class (``(C, d_y)``) and the
  addressing matrices are ``A_i ∈ R^{d_y×K}`` (``(r, d_y, K)``), so image ``(c, i)`` has the
  coefficients ``y_cᵀ A_i`` and the hard label ``c``; with ``d_y < C`` the addressing costs
  ``r·d_y·K`` instead of ``C·r·K`` floats (the paper's point that the memory need not grow
  linearly with the classes). ``d_y = C`` with ``y_c = e_c`` is ``"onehot"``.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .._checks import check_int, check_tensor

#: how a memory's rows are labelled and addressed (see the module doc)
LABEL_MODES = ("onehot", "soft", "embedding")
#: ``"soft"`` starts every row at this probability for its own class (the rest spread evenly): close
#: to the one-hot start, yet off softmax's saturated end, so the logits get a gradient at once
SOFT_INIT_CONFIDENCE = 0.9


def check_label_mode(label_mode, label_dim, num_classes: int | None = None) -> int | None:
    """Check ``label_mode``/``label_dim`` (errors name them); returns ``d_y`` for ``"embedding"``
    (``label_dim``, or ``num_classes`` when ``None``), else ``None``."""
    if label_mode not in LABEL_MODES:
        raise ValueError(f"label_mode must be one of {LABEL_MODES}, got {label_mode!r}")
    if label_dim is not None:
        check_int(label_dim, "label_dim", low=1)
    if label_mode != "embedding":
        return None
    return label_dim if label_dim is not None else num_classes


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
                    downsample: int = 1, *, label_mode: str = "onehot", label_dim: int | None = None) -> int:
    """Addressing rows per class that fit a budget of ``ipc`` plain images per class (RTP's
    ``cal_ncoef``), ``B = ipc·C·ch·H·W`` floats of which the bases take ``K·ch·H·W/ds²``:

    * ``"onehot"``: ``r = floor((B − K·ch·H·W/ds²) / (C·K))``;
    * ``"soft"``: each row also stores ``C`` label logits, ``r = floor((B − K·ch·H·W/ds²) / (C·K + C²))``;
    * ``"embedding"``: ``C·d_y`` label codes, ``r`` matrices of ``d_y·K``,
      ``r = floor((B − K·ch·H·W/ds² − C·d_y) / (d_y·K))``.

    Raises ``ValueError`` naming ``num_bases`` (and ``label_dim``) when the fixed part leaves no room
    for one row per class.
    """
    check_int(ipc, "ipc", low=1)
    check_int(num_classes, "num_classes", low=1)
    check_int(num_bases, "num_bases", low=1)
    d_y = check_label_mode(label_mode, label_dim, num_classes)
    c, h, w = _image_shape(image_shape, downsample)
    budget = ipc * num_classes * c * h * w
    bases = num_bases * c * (h // downsample) * (w // downsample)
    fixed, per_row, what = bases, num_classes * num_bases, f"num_bases={num_bases} bases of {c}×{h // downsample}×{w // downsample} floats"
    if label_mode == "soft":
        per_row += num_classes * num_classes
    elif label_mode == "embedding":
        fixed, per_row = bases + num_classes * d_y, d_y * num_bases
        what += f" and label_dim={d_y} codes of {num_classes} classes"
    r = (budget - fixed) // per_row
    if r < 1:
        raise ValueError(f"{what} use {fixed} of the {budget}-float budget (ipc={ipc}), leaving less than one "
                         f"addressing row per class ({per_row} floats with label_mode={label_mode!r}); use fewer "
                         f"bases, a larger downsample, a smaller label_dim or a larger ipc")
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
    ``upsample((A[c·r+i] @ M).view(ch, H/ds, W/ds))`` with label ``c``. With ``label_mode="onehot"``
    labels are hard class indices, as in the official code (``label(row) = row // r``); nothing about
    them is stored. ``"soft"`` adds ``label_logits`` ``(C·r, C)``, the row's training target being their
    softmax; ``"embedding"`` stores ``label_codes`` ``(C, d_y)`` and ``addressing`` as the ``r``
    matrices ``(r, d_y, K)``, row ``c·r + i`` decoding with the coefficients ``label_codes[c] @ addressing[i]``
    (see the module doc). Bases and addressing are Xavier-uniform initialised (``nn.Embedding`` +
    ``xavier_uniform_`` in the original), so are the label codes when ``d_y < C`` (with ``d_y ≥ C``
    they start as the one-hot queries ``e_c``); the soft labels start at :data:`SOFT_INIT_CONFIDENCE`
    for the row's class.

    Args:
        num_classes: ``C``.
        num_bases: ``K``.
        rows_per_class: ``r`` (see :func:`rows_for_budget` / :meth:`from_budget`).
        image_shape: ``(ch, H, W)`` of the decoded images.
        downsample: ``ds``; bases are stored at ``(H/ds) × (W/ds)``.
        label_mode: one of :data:`LABEL_MODES`.
        label_dim: ``d_y`` of ``"embedding"`` (default ``C``); ignored otherwise.
        generator: seeds the initialisation.

    Shapes:
        ``bases``: ``(K, ch·(H/ds)·(W/ds))``; ``addressing``: ``(C·r, K)`` (``"embedding"``: ``(r, d_y, K)``).
        ``forward(rows)``: rows int64 ``(N,)`` (default all) -> ``(N, ch, H, W)``.
    """

    def __init__(self, num_classes: int, num_bases: int, rows_per_class: int, image_shape: Sequence[int],
                 downsample: int = 1, *, label_mode: str = "onehot", label_dim: int | None = None,
                 generator: torch.Generator | None = None, dtype: torch.dtype | None = None, device=None):
        super().__init__()
        check_int(num_classes, "num_classes", low=1)
        check_int(num_bases, "num_bases", low=1)
        check_int(rows_per_class, "rows_per_class", low=1)
        d_y = check_label_mode(label_mode, label_dim, num_classes)
        self.image_shape = _image_shape(image_shape, downsample)
        self.num_classes, self.num_bases, self.rows_per_class, self.downsample = (
            num_classes, num_bases, rows_per_class, downsample)
        self.label_mode, self.label_dim = label_mode, d_y
        c, h, w = self.image_shape
        d = c * (h // downsample) * (w // downsample)
        kw = dict(dtype=dtype, device=device)
        self.bases = nn.Parameter(torch.empty(num_bases, d, **kw))
        rows = num_classes * rows_per_class if d_y is None else rows_per_class * d_y
        table = torch.empty(rows, num_bases, **kw)  # Xavier over (rows, K), as the original's nn.Embedding
        nn.init.xavier_uniform_(self.bases, generator=generator)
        nn.init.xavier_uniform_(table, generator=generator)
        # embedding: A_i[j] = table[j·r + i], so with d_y = C and y_c = e_c row c·r + i is the one-hot table's
        self.addressing = nn.Parameter(table if d_y is None else
                                       table.view(d_y, rows_per_class, num_bases).transpose(0, 1).contiguous())
        if label_mode == "soft":
            logits = torch.zeros(rows, num_classes, **kw)
            if num_classes > 1:  # p on the own class: exp(a) / (exp(a) + C − 1) = p
                p = SOFT_INIT_CONFIDENCE
                logits[torch.arange(rows), torch.arange(rows) // rows_per_class] = math.log(p * (num_classes - 1) / (1 - p))
            self.label_logits = nn.Parameter(logits)
        elif label_mode == "embedding":
            self.label_codes = nn.Parameter(torch.zeros(num_classes, d_y, **kw))
            if d_y >= num_classes:
                # the paper's one-hot query (zero-padded): no draw, so with d_y = C the memory and the
                # random stream after it are the one-hot memory's (same init, same real-image draw)
                self.label_codes.data[:, :num_classes] = torch.eye(num_classes, **kw)
            else:
                nn.init.xavier_uniform_(self.label_codes, generator=generator)

    @classmethod
    def from_budget(cls, ipc: int, num_classes: int, num_bases: int, image_shape: Sequence[int],
                    downsample: int = 1, **kwargs) -> "AddressableMemory":
        """The memory with as many rows per class as a budget of ``ipc`` images per class allows."""
        r = rows_for_budget(ipc, num_classes, image_shape, num_bases, downsample,
                            label_mode=kwargs.get("label_mode", "onehot"), label_dim=kwargs.get("label_dim"))
        return cls(num_classes, num_bases, r, image_shape, downsample, **kwargs)

    @property
    def num_images(self) -> int:
        return self.num_classes * self.rows_per_class

    def tables(self) -> dict[str, torch.Tensor]:
        """The stored tensors by name: ``bases``, ``addressing`` and ``label_logits`` (``"soft"``) or
        ``label_codes`` (``"embedding"``)."""
        out = {"bases": self.bases, "addressing": self.addressing}
        if self.label_mode == "soft":
            out["label_logits"] = self.label_logits
        elif self.label_mode == "embedding":
            out["label_codes"] = self.label_codes
        return out

    def num_stored(self) -> int:
        """Stored floats: ``K·ch·(H/ds)·(W/ds) + C·r·K`` (``"soft"``: ``+ C·r·C``; ``"embedding"``:
        ``K·ch·(H/ds)·(W/ds) + r·d_y·K + C·d_y``)."""
        return sum(t.numel() for t in self.tables().values())

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

    def _rows(self, rows: torch.Tensor | None) -> torch.Tensor:
        if rows is None:
            return torch.arange(self.num_images, device=self.addressing.device)
        self._check_rows(rows)
        return rows

    def labels(self, rows: torch.Tensor | None = None) -> torch.Tensor:
        """Class of each decoded row (``row // r``), int64."""
        return torch.div(self._rows(rows), self.rows_per_class, rounding_mode="floor")

    def coefficients(self, rows: torch.Tensor | None = None, tables: dict[str, torch.Tensor] | None = None,
                     *, checked: bool = True) -> torch.Tensor:
        """The addressing rows ``(N, K)`` of ``rows`` (default all): ``addressing[rows]``, or for
        ``"embedding"`` ``label_codes[row // r] @ addressing[row % r]``. ``tables`` replaces the stored
        tensors (same names as :meth:`tables`; a reverse pass's leaves); ``checked=False`` skips the
        row check (rows already checked once)."""
        tb = self.tables() if tables is None else tables
        if rows is None:
            rows = torch.arange(self.num_images, device=tb["addressing"].device)
        elif checked:
            self._check_rows(rows)
        if self.label_mode != "embedding":
            return tb["addressing"][rows]
        r = self.rows_per_class
        cls = torch.div(rows, r, rounding_mode="floor")
        return torch.einsum("nd,ndk->nk", tb["label_codes"][cls], tb["addressing"][rows - cls * r])

    def targets(self, rows: torch.Tensor | None = None, tables: dict[str, torch.Tensor] | None = None,
                *, checked: bool = True) -> torch.Tensor:
        """The training targets of ``rows``: ``"soft"``: the label distributions
        ``softmax(label_logits[rows])`` ``(N, C)`` (differentiable in the logits); otherwise the hard
        labels ``(N,)`` int64. ``tables``/``checked`` as in :meth:`coefficients`."""
        if rows is not None and checked:
            self._check_rows(rows)
        if self.label_mode != "soft":
            rows = torch.arange(self.num_images, device=self.addressing.device) if rows is None else rows
            return torch.div(rows, self.rows_per_class, rounding_mode="floor")
        logits = (self.tables() if tables is None else tables)["label_logits"]
        return torch.softmax(logits if rows is None else logits[rows], dim=1)

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
        extra bases keep their values and get zero rows. ``"embedding"``: with ``d_y ≥ C`` the codes
        are the one-hot queries and the matrices hold these rows (the one-hot memory exactly); with
        ``d_y < C`` the ``(C, r·K)`` matrix of the rows (class by class) is factored by its best
        rank-``d_y`` approximation, codes and matrices balanced to equal norms. The soft labels are
        left as they are.

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
        table = torch.zeros(self.num_images, self.num_bases, dtype=coeffs.dtype, device=coeffs.device)
        table[:, :k] = coeffs / beta
        if self.label_mode != "embedding":
            self.addressing.copy_(table)
            return self
        c, r, kb, d_y = self.num_classes, self.rows_per_class, self.num_bases, self.label_dim
        if d_y >= c:  # the one-hot queries and the one-hot table: exactly the one-hot memory
            self.label_codes.zero_()
            self.label_codes[:, :c] = torch.eye(c, dtype=table.dtype, device=table.device)
            self.addressing.zero_()
            self.addressing[:, :c] = table.view(c, r, kb).transpose(0, 1)
            return self
        u, s, vh = torch.linalg.svd(table.view(c, r * kb), full_matrices=False)
        q = min(d_y, s.numel())
        gamma = (s[:q].norm() / q ** 0.5).clamp_min(1e-12).sqrt()  # ‖codes‖_F = ‖matrices‖_F
        self.label_codes.zero_()
        self.label_codes[:, :q] = u[:, :q] * gamma
        mats = torch.zeros(d_y, r * kb, dtype=table.dtype, device=table.device)
        mats[:q] = s[:q, None] * vh[:q] / gamma
        self.addressing.copy_(mats.view(d_y, r, kb).transpose(0, 1))
        return self

    def decode(self, rows: torch.Tensor | None = None, *, upsample_first: bool = True) -> torch.Tensor:
        """Decoded images of ``rows`` (default all ``C·r``); see :func:`addressable_decode`."""
        return addressable_decode(self.bases, self.coefficients(rows), self.image_shape, self.downsample,
                                  upsample_first=upsample_first)

    def forward(self, rows: torch.Tensor | None = None) -> torch.Tensor:
        return self.decode(rows)

    def extra_repr(self) -> str:
        extra = "" if self.label_mode == "onehot" else f", label_mode={self.label_mode!r}"
        if self.label_mode == "embedding":
            extra += f", label_dim={self.label_dim}"
        return (f"num_classes={self.num_classes}, num_bases={self.num_bases}, rows_per_class={self.rows_per_class}, "
                f"image_shape={self.image_shape}, downsample={self.downsample}{extra}")


__all__ = ["LABEL_MODES", "AddressableMemory", "addressable_decode", "check_label_mode", "rows_for_budget",
           "upsample_bases"]
