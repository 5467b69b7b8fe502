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
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..data import ClassSampler
from ...nn.modules import bound_plan
from ...ops.multi_formation import multi_formation
from .base import Distiller
from .matching import RealNetGradientMatching
from .parts import Parameterization
from .presets import GRAY
from .registry import register

DECODE_TYPES = ("single", "multi", "bound")


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
    ``batch_syn_max``, ``lr_img``, ``momentum_img``. Initialized with :func:`mix_init`."""

    stored_space = "pixels [0, 1]"
    decodes = True
    per_class_params = ("syn",)

    def init(self) -> None:
        t, hp = self.t, self.t.hp
        self.factor = hp["factor"]
        if hp["decode_type"] not in DECODE_TYPES:
            raise ValueError(f"decode_type must be one of {DECODE_TYPES}, got {hp['decode_type']!r}")
        if hp["decode_type"] == "bound" and hp["batch_syn_max"] < 1:
            raise ValueError(f"decode_type 'bound' needs batch_syn_max >= 1, got {hp['batch_syn_max']}")
        self.plan = self.decode_plan()
        n = t.ipc * self.factor ** 2
        t.sampler.check(n, "ipc·factor²")
        init = mix_init(t.ds.train_x, t.sampler, t.ipc, self.factor, indices=t.init_indices(n))
        self.syn = init.clone().requires_grad_(True)

    def params(self):
        return {"syn": self.syn}

    def param_groups(self):
        return [{"params": [self.syn], "lr": self.t.hp["lr_img"], "momentum": self.t.hp["momentum_img"]}]

    def decode_plan(self) -> list[tuple[int, int, int]]:
        """``[(factor, start, stop), …]``: which of a class's stored images decode at which factor, in
        IDC's per-class output order (the same for every class: all hold ``ipc`` images)."""
        f, n = self.factor, self.t.ipc
        if f == 1:  # IDC decodes only when factor > 1, whatever decode_type says
            return [(1, 0, n)]
        kind = self.t.hp["decode_type"]
        if kind == "multi":
            return [(g, 0, n) for g in range(1, f + 1)]
        if kind == "bound":
            return bound_plan(n, f, self.t.hp["batch_syn_max"])
        return [(f, 0, n)]

    def decode_parts(self, stored: torch.Tensor) -> list[torch.Tensor]:
        """Decode whole classes of stored images (``(k·ipc, C, h, w)``, class-major) per
        :meth:`decode_plan`: one :func:`~ddkernels.multi_formation` call per plan entry for all
        ``k`` classes. Entry ``(f, start, stop)`` gives ``(f², k, stop − start, C, H, W)``: tile,
        class, image."""
        k, n = len(stored) // self.t.ipc, self.t.ipc
        x = stored.view(k, n, *stored.shape[1:])
        parts = []
        for f, lo, hi in self.plan:
            sub = x[:, lo:hi].reshape(-1, *stored.shape[1:])
            dec = multi_formation(sub, f, backend=self.t.backend) if f > 1 else sub
            parts.append(dec.view(f * f, k, hi - lo, *dec.shape[1:]))
        return parts

    def decode(self, stored: torch.Tensor) -> list[torch.Tensor]:
        """Each class's decoded images (``stored`` as in :meth:`decode_parts`), in IDC's per-class
        order: plan entry, then tile, then image."""
        parts = self.decode_parts(stored)
        return [torch.cat([p[:, c].reshape(-1, *p.shape[3:]) for p in parts]) for c in range(parts[0].shape[1])]

    def _decoded_by_class(self, classes: list[int]) -> list[torch.Tensor]:
        """Each class's decoded images, at most ``batch_syn_max`` (a random subset, as IDC's ``sample``)."""
        t = self.t
        if list(classes) == t.classes:
            groups = self.decode(self.syn)  # every owned class in one decode call per plan entry
        else:
            groups = [self.decode(t.class_rows(self.syn, c))[0] for c in classes]
        cap = t.hp["batch_syn_max"]
        return [g[torch.randperm(len(g), generator=t.class_gen(c), device=t.device)[:cap]] if len(g) > cap else g
                for c, g in zip(classes, groups)]

    def class_batches(self, classes):
        return [self.t.ds.normalize(s) for s in self._decoded_by_class(classes)]

    def before_step(self) -> None:
        with torch.no_grad():
            self.syn.clamp_(0, 1)

    def decoded_set(self, stored: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Every owned class of ``stored`` decoded with :meth:`decode_plan`, normalized, and the labels;
        rows ordered plan entry, tile, class, image."""
        t = self.t
        parts = self.decode_parts(stored)
        labels = torch.cat([t.labels.view(-1, t.ipc)[:, lo:hi].reshape(-1).repeat(f * f) for f, lo, hi in self.plan])
        return t.ds.normalize(torch.cat([p.reshape(-1, *p.shape[3:]) for p in parts])), labels

    def training_set(self):
        """The decoded, normalized training set and its labels (:meth:`decoded_set`; IDC's ``loader``:
        ``bound`` caps each class at ``batch_syn_max``; for ``single``/``multi`` the order of
        :func:`~ddkernels.multi_formation` on the whole stored set)."""
        with torch.no_grad():
            return self.decoded_set(self.syn.detach().clamp(0, 1))

    def num_slots(self):
        return len(self.t.classes) * sum(f * f * (hi - lo) for f, lo, hi in self.plan)

    def drawn_slots(self, idx, draw):
        # Every decoded image is a slot: the set is decoded in full, differentiably, then indexed.
        x, y = self.decoded_set(self.syn)
        return x[idx], y[idx]

    def pixel_images(self):
        return self.syn.detach().clamp(0, 1)


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
                eval_aug=None, eval_width=None, zca=False, precision="fp32")


def quick(dataset: str, ipc: int) -> dict:
    # Smaller network and loops, all classes in one step; lr_img ×300 for ~1000× fewer image steps.
    hp = paper(dataset, ipc)
    hp.update(iterations=20, inner_loop=10, batch_real=32, n_data=128, width=32, class_steps="batched",
              lr_img=hp["lr_img"] * 300, eval_epochs=300, eval_width=32)
    return hp


@register
class IDC(Distiller):
    """IDC: :class:`MultiFormation` × :class:`~.matching.RealNetGradientMatching` (see the module
    docstring). Class-parallel: each rank matches and steps its classes' stored images."""

    method = "idc"
    PARAMETERIZATION = MultiFormation
    OBJECTIVE = RealNetGradientMatching
    PRESETS = {"paper": paper, "quick": quick}


__all__ = ["DECODE_TYPES", "IDC", "MultiFormation", "bound_plan", "mix_init"]
