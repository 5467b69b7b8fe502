"""IDC: synthetic-data parameterization with multi-formation (Kim et al., ICML 2022), docs/spec.md §1a.

The parameterization :class:`MultiFormation`: stored images ``D`` (IPC per class) live in [0, 1]; each
decodes into ``factor²`` training images through :func:`ddkernels.multi_formation`; ``D`` is clamped
to [0, 1] at the start of every outer iteration. IDC is it under gradient matching with IDC's
schedule (:class:`~.matching.RealNetGradientMatching`): ``inner_loop`` times, matching on decoded
images (64 real per class, at most ``batch_syn_max`` decoded per class, IDC's DiffAug with one
parameter set per class), and training the network on ``n_data`` real images (per-sample DiffAug,
CutMix).

``decode_type`` (IDC ``--decode_type``) picks how a class's stored images decode: ``single`` (every
image into ``factor²``), ``multi`` (every image at each factor ``1..factor``) or ``bound`` (the
first images at the largest factor, later ones at smaller factors, so a class decodes into at most
``batch_syn_max`` images; see :func:`bound_plan`).

``formation`` (issue 20, which notes that IDC's authors tried multi-scale and learnable formations
without decisive results) picks the tiles: ``fixed`` (IDC's ``factor × factor`` grid, the default),
``multiscale`` (tiles of two factors inside every stored image, :func:`multiscale_windows`) or
``learned`` (per-tile windows ``(top, left, height, width)`` learned with the images, starting at
the fixed grid). The last two decode through :func:`ddkernels.ops.affine_crop.affine_crop`
(decode_type ``single`` only). Multiscale stores the images only (IDC's storage); learned also
stores 4 floats per tile, counted in the run's storage (``ratio`` 1 + 16/(h·w·C) at factor 2).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..data import ClassSampler
from ...nn.modules import bound_plan
from ...ops.affine_crop import affine_crop, crop_grid
from ...ops.multi_formation import multi_formation
from .base import Distiller
from .matching import RealNetGradientMatching
from .parts import Parameterization
from .presets import GRAY
from .registry import register

DECODE_TYPES = ("single", "multi", "bound")
FORMATIONS = ("fixed", "multiscale", "learned")


def multiscale_windows(h: int, w: int, factors) -> torch.Tensor:
    """The multiscale layout as :func:`~ddkernels.ops.affine_crop.affine_crop` windows ``(T, 4)``.

    ``factors = [a, b]`` (``2 <= a < b``, ``b`` a multiple of ``a``): the stored image is IDC's
    ``a × a`` grid (cells of ``⌈h/a⌉ × ⌈w/a⌉``); cells on the checkerboard's white squares
    (``(i + j)`` even) are one tile each, the others are split into ``(b/a)²`` tiles (the cell
    tiled at factor ``b/a``), so both factors' tiles share every stored image. Tiles in cell order
    (row-major), sub-tiles row-major within their cell; ``[2, 4]`` gives 2 + 2·4 = 10 tiles.
    """
    a, b = factors
    m, sh, sw = b // a, -(-h // a), -(-w // a)
    th, tw = -(-sh // m), -(-sw // m)
    rows = []
    for i in range(a):
        for j in range(a):
            if (i + j) % 2 == 0:
                rows.append((i * sh, j * sw, sh, sw))
            else:
                rows += [(i * sh + u * th, j * sw + v * tw, th, tw) for u in range(m) for v in range(m)]
    return torch.tensor(rows, dtype=torch.float32)


def check_factors(factors, h: int, w: int) -> tuple[int, int]:
    """``factors`` of the multiscale formation: ``[a, b]``, ints, ``2 <= a < b <= min(h, w)``, ``b % a == 0``."""
    if (not isinstance(factors, (list, tuple)) or len(factors) != 2
            or not all(isinstance(f, int) and not isinstance(f, bool) for f in factors)):
        raise ValueError(f"factors must be a pair of ints [a, b] for formation 'multiscale', got {factors!r}")
    a, b = factors
    if not (2 <= a < b <= min(h, w) and b % a == 0):
        raise ValueError(f"factors [a, b] must satisfy 2 <= a < b <= min(h, w)={min(h, w)} with b a multiple "
                         f"of a, got {list(factors)}")
    return a, b


def window_init(images: torch.Tensor, indices: torch.Tensor, windows: torch.Tensor) -> torch.Tensor:
    """:func:`mix_init` for any integer windows ``(T, 4)``: per class (row of ``indices``, ``ipc·T``
    real images), stored image ``s`` holds real image ``s·T + t`` resized (nearest) into window
    ``t``, the part of it inside the image. Windows written in order (a later one overwrites)."""
    _, c, h, w = images.shape
    t = len(windows)
    k, ipc = indices.shape[0], indices.shape[1] // t
    src = images[indices.flatten()].view(k * ipc, t, c, h, w)
    out = torch.full((k * ipc, c, h, w), 0.5, dtype=images.dtype, device=images.device)
    for q, (y0, x0, wh, ww) in enumerate(windows.to(torch.int64).tolist()):
        tile = F.interpolate(src[:, q], size=(wh, ww), mode="nearest")
        out[:, :, y0:min(y0 + wh, h), x0:min(x0 + ww, w)] = tile[:, :, :h - y0, :w - x0]
    return out


def mix_init(images: torch.Tensor, sampler: ClassSampler, ipc: int, factor: int,
             generator: torch.Generator | None = None, *, indices: torch.Tensor | None = None) -> torch.Tensor:
    """IDC's "mix" initialization: per class, ``ipc·factor²`` random real images, each resized
    (nearest) into one tile of a stored image, tiles row-major; the first ``h % factor`` tiles are a
    pixel larger. ``factor = 1`` is IDC's "random" init (real images).

    ``indices`` (``(k, ipc·factor²)``, e.g. a subset of classes drawn from per-class streams) replaces
    the draw of ``ipc·factor²`` images for every class of ``sampler`` with ``generator``.

    Returns:
        ``(k·ipc, C, H, W)`` (``k``: classes of ``sampler``, or rows of ``indices``), class-major,
        in the images' range.
    """
    _, c, h, w = images.shape
    rows = [h // factor + (1 if i < h % factor else 0) for i in range(factor)]
    cols = [w // factor + (1 if i < w % factor else 0) for i in range(factor)]
    if indices is None:
        sampler.check(ipc * factor * factor, "ipc·factor²")
        indices = sampler.indices_all(ipc * factor * factor, generator)
    k = indices.shape[0]
    src = images[indices.flatten()]
    src = src.view(k * ipc, factor * factor, c, h, w)
    out = torch.empty(k * ipc, c, h, w, dtype=images.dtype, device=images.device)
    for t in range(factor * factor):
        i, j = divmod(t, factor)
        y0, x0 = sum(rows[:i]), sum(cols[:j])
        out[:, :, y0:y0 + rows[i], x0:x0 + cols[j]] = F.interpolate(src[:, t], size=(rows[i], cols[j]), mode="nearest")
    return out


class MultiFormation(Parameterization):
    """IDC's multi-formation (see the module docstring); hp ``factor``, ``decode_type``,
    ``batch_syn_max``, ``lr_img``, ``momentum_img``, ``formation`` (default ``fixed``), ``factors``
    (multiscale), ``lr_crop`` (learned: the windows' SGD lr, momentum ``momentum_img``). Initialized
    with :func:`mix_init` (:func:`window_init` for multiscale)."""

    stored_space = "pixels [0, 1]"
    decodes = True
    per_class_params = ("syn", "crop")

    def init(self) -> None:
        t, hp = self.t, self.t.hp
        self.factor = hp["factor"]
        self.formation = hp.get("formation", "fixed")
        if hp["decode_type"] not in DECODE_TYPES:
            raise ValueError(f"decode_type must be one of {DECODE_TYPES}, got {hp['decode_type']!r}")
        if hp["decode_type"] == "bound" and hp["batch_syn_max"] < 1:
            raise ValueError(f"decode_type 'bound' needs batch_syn_max >= 1, got {hp['batch_syn_max']}")
        if self.formation not in FORMATIONS:
            raise ValueError(f"formation must be one of {FORMATIONS}, got {self.formation!r}")
        h, w = t.ds.train_x.shape[-2:]
        self.windows = None  # (T, 4): the multiscale layout, or the learned windows' initial grid
        if self.formation != "fixed":
            if hp["decode_type"] != "single":
                raise ValueError(f"formation {self.formation!r} needs decode_type 'single', got {hp['decode_type']!r}")
            if self.formation == "multiscale":
                self.windows = multiscale_windows(h, w, check_factors(hp.get("factors"), h, w))
            else:
                lr = hp.get("lr_crop")
                if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr >= 0:
                    raise ValueError(f"formation 'learned' needs lr_crop >= 0, got {lr!r}")
                self.windows = crop_grid(h, w, self.factor)[0]
            self.windows = self.windows.to(device=t.device, dtype=t.ds.train_x.dtype)
        self.plan = self.decode_plan()
        n = t.ipc * self.tiles_per_image()
        t.sampler.check(n, "ipc·tiles" if self.formation == "multiscale" else "ipc·factor²")
        if self.formation == "multiscale":
            init = window_init(t.ds.train_x, t.init_indices(n), self.windows)
        else:
            init = mix_init(t.ds.train_x, t.sampler, t.ipc, self.factor, indices=t.init_indices(n))
        self.syn = init.clone().requires_grad_(True)
        self.crop = None
        if self.formation == "learned":
            self.crop = self.windows.expand(len(self.syn), -1, -1).clone().requires_grad_(True)

    def tiles_per_image(self) -> int:
        """Training images one stored image decodes into (``single``: ``factor²``, or the windows)."""
        return self.factor ** 2 if self.windows is None else len(self.windows)

    def params(self):
        return {"syn": self.syn} if self.crop is None else {"syn": self.syn, "crop": self.crop}

    def param_groups(self):
        hp = self.t.hp
        groups = [{"params": [self.syn], "lr": hp["lr_img"], "momentum": hp["momentum_img"]}]
        if self.crop is not None:
            groups.append({"params": [self.crop], "lr": hp["lr_crop"], "momentum": hp["momentum_img"]})
        return groups

    def stored_windows(self, stored: torch.Tensor, crop: torch.Tensor | None = None) -> torch.Tensor:
        """The windows of ``stored`` (``(k·ipc, T, 4)``): ``crop`` (learned) or the fixed layout."""
        if crop is not None:
            return crop
        return self.windows.expand(len(stored), -1, -1)

    def decode_plan(self) -> list[tuple[int, int, int]]:
        """``[(factor, start, stop), …]``: which of a class's stored images decode at which factor, in
        IDC's per-class output order (the same for every class: all hold ``ipc`` images). A
        multiscale or learned formation has one entry, factor ``0``: its windows decide."""
        f, n = self.factor, self.t.ipc
        if self.windows is not None:
            return [(0, 0, n)]
        if f == 1:  # IDC decodes only when factor > 1, whatever decode_type says
            return [(1, 0, n)]
        kind = self.t.hp["decode_type"]
        if kind == "multi":
            return [(g, 0, n) for g in range(1, f + 1)]
        if kind == "bound":
            return bound_plan(n, f, self.t.hp["batch_syn_max"])
        return [(f, 0, n)]

    def entry_tiles(self, f: int) -> int:
        """Training images per stored image of plan entry factor ``f``."""
        return f * f if f else len(self.windows)

    def decode_parts(self, stored: torch.Tensor, crop: torch.Tensor | None = None) -> list[torch.Tensor]:
        """Decode whole classes of stored images (``(k·ipc, C, h, w)``, class-major; ``crop``: their
        learned windows) per :meth:`decode_plan`: one :func:`~ddkernels.multi_formation` (or
        :func:`~ddkernels.ops.affine_crop.affine_crop`) call per plan entry for all ``k`` classes.
        Entry ``(f, start, stop)`` gives ``(tiles, k, stop − start, C, H, W)``: tile, class, image."""
        k, n = len(stored) // self.t.ipc, self.t.ipc
        if self.windows is not None:
            dec = affine_crop(stored, self.stored_windows(stored, crop), backend=self.t.backend)
            return [dec.view(len(self.windows), k, n, *dec.shape[1:])]
        x = stored.view(k, n, *stored.shape[1:])
        parts = []
        for f, lo, hi in self.plan:
            sub = x[:, lo:hi].reshape(-1, *stored.shape[1:])
            dec = multi_formation(sub, f, backend=self.t.backend) if f > 1 else sub
            parts.append(dec.view(f * f, k, hi - lo, *dec.shape[1:]))
        return parts

    def decode(self, stored: torch.Tensor, crop: torch.Tensor | None = None) -> list[torch.Tensor]:
        """Each class's decoded images (``stored``, ``crop`` as in :meth:`decode_parts`), in IDC's
        per-class order: plan entry, then tile, then image."""
        parts = self.decode_parts(stored, crop)
        return [torch.cat([p[:, c].reshape(-1, *p.shape[3:]) for p in parts]) for c in range(parts[0].shape[1])]

    def _decoded_by_class(self, classes: list[int]) -> list[torch.Tensor]:
        """Each class's decoded images, at most ``batch_syn_max`` (a random subset, as IDC's ``sample``)."""
        t = self.t
        if list(classes) == t.classes:
            groups = self.decode(self.syn, self.crop)  # every owned class in one decode call per plan entry
        else:
            groups = [self.decode(t.class_rows(self.syn, c), None if self.crop is None else t.class_rows(self.crop, c))[0]
                      for c in classes]
        cap = t.hp["batch_syn_max"]
        return [g[torch.randperm(len(g), generator=t.class_gen(c), device=t.device)[:cap]] if len(g) > cap else g
                for c, g in zip(classes, groups)]

    def class_batches(self, classes):
        return [self.t.ds.normalize(s) for s in self._decoded_by_class(classes)]

    def before_step(self) -> None:
        with torch.no_grad():
            self.syn.clamp_(0, 1)
            if self.crop is not None:
                clamp_windows_(self.crop, *self.syn.shape[-2:])

    def decoded_set(self, stored: torch.Tensor, crop: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Every owned class of ``stored`` (windows ``crop``) decoded with :meth:`decode_plan`,
        normalized, and the labels; rows ordered plan entry, tile, class, image."""
        t = self.t
        parts = self.decode_parts(stored, crop)
        labels = torch.cat([t.labels.view(-1, t.ipc)[:, lo:hi].reshape(-1).repeat(self.entry_tiles(f))
                            for f, lo, hi in self.plan])
        return t.ds.normalize(torch.cat([p.reshape(-1, *p.shape[3:]) for p in parts])), labels

    def training_set(self):
        """The decoded, normalized training set and its labels (:meth:`decoded_set`; IDC's ``loader``:
        ``bound`` caps each class at ``batch_syn_max``; for ``single``/``multi`` the order of
        :func:`~ddkernels.multi_formation` on the whole stored set)."""
        with torch.no_grad():
            crop = None if self.crop is None else clamp_windows_(self.crop.detach().clone(), *self.syn.shape[-2:])
            return self.decoded_set(self.syn.detach().clamp(0, 1), crop)

    def num_slots(self):
        return len(self.t.classes) * sum(self.entry_tiles(f) * (hi - lo) for f, lo, hi in self.plan)

    def drawn_slots(self, idx, draw):
        # Every decoded image is a slot: the set is decoded in full, differentiably, then indexed.
        x, y = self.decoded_set(self.syn, self.crop)
        return x[idx], y[idx]

    def pixel_images(self):
        return self.syn.detach().clamp(0, 1)


def clamp_windows_(crop: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Keep learned windows ``(…, 4)`` sane in place: sides in ``[1, image side]``, centres inside the image."""
    crop[..., 2].clamp_(1, h)
    crop[..., 3].clamp_(1, w)
    crop[..., 0].copy_(torch.minimum(torch.maximum(crop[..., 0], -crop[..., 2] / 2), h - crop[..., 2] / 2))
    crop[..., 1].copy_(torch.minimum(torch.maximum(crop[..., 1], -crop[..., 3] / 2), w - crop[..., 3] / 2))
    return crop


def _lr_img(dataset: str, ipc: int) -> float:
    # IDC's base lr_img, scaled by IPC/10 (argument.py); (size/base_size)² is 1 for these datasets.
    return (1e-4 if dataset in GRAY else 5e-3) * ipc / 10


def paper(dataset: str, ipc: int) -> dict:
    return dict(iterations=2000, inner_loop=100, factor=2, lr_img=_lr_img(dataset, ipc), momentum_img=0.5,
                batch_real=64, batch_syn_max=128, batch_net=64, n_data=2000 if dataset.startswith("cifar") else 500,
                lr_net=0.01, metric="l1" if dataset in GRAY else "mse", layers="conv",
                aug_match="color_crop" if dataset == "mnist" else "color_crop_cutout",
                aug_net="color_crop", cutmix_p=0.0 if dataset == "mnist" else 0.5,
                class_steps="sequential", decode_type="single", width=128, eval="idc", eval_epochs=1000,
                eval_aug=None, eval_width=None, zca=False, precision="fp32",
                formation="fixed", factors=[2, 4],
                # the windows' lr (pixels): lr_img's value moves a window ~0.04 px per step at quick IPC 1 and 10
                lr_crop=_lr_img(dataset, ipc))


def quick(dataset: str, ipc: int) -> dict:
    # Smaller network and loops, all classes in one step; lr_img ×300 for ~1000× fewer image steps.
    hp = paper(dataset, ipc)
    hp.update(iterations=20, inner_loop=10, batch_real=32, n_data=128, width=32, class_steps="batched",
              lr_img=hp["lr_img"] * 300, lr_crop=hp["lr_crop"] * 300, eval_epochs=300, eval_width=32)
    return hp


@register
class IDC(Distiller):
    """IDC: :class:`MultiFormation` × :class:`~.matching.RealNetGradientMatching` (see the module
    docstring). Class-parallel: each rank matches and steps its classes' stored images."""

    method = "idc"
    PARAMETERIZATION = MultiFormation
    OBJECTIVE = RealNetGradientMatching
    PRESETS = {"paper": paper, "quick": quick}
    # the formation option came later (issue 20); a run written before decoded IDC's fixed grid
    HP_SINCE = {**Distiller.HP_SINCE, "formation": "fixed", "factors": [2, 4], "lr_crop": 0.0}


__all__ = ["DECODE_TYPES", "FORMATIONS", "IDC", "MultiFormation", "bound_plan", "check_factors", "clamp_windows_",
           "mix_init", "multiscale_windows", "window_init"]
