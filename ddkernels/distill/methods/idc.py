"""IDC: synthetic-data parameterization with multi-formation (Kim et al., ICML 2022), docs/spec.md §1a.

Stored images ``D`` (IPC per class) live in [0, 1]; each decodes into ``factor²`` training images
through :func:`ddkernels.multi_formation`. One outer iteration: a fresh network, ``D`` clamped to
[0, 1], then ``inner_loop`` times: gradient matching on decoded images (64 real per class, at most
``batch_syn_max`` decoded per class, IDC's DiffAug with one parameter set per class), and training
the network on ``n_data`` real images (per-sample DiffAug, CutMix).

``decode_type`` (IDC ``--decode_type``) picks how a class's stored images decode: ``single`` (every
image into ``factor²``), ``multi`` (every image at each factor ``1..factor``) or ``bound`` (the
first images at the largest factor, later ones at smaller factors, so a class decodes into at most
``batch_syn_max`` images; see :func:`bound_plan`).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..data.augment import cutmix, cutmix_loss
from ..data import ClassSampler
from ...nn.modules import bound_plan
from ...ops.multi_formation import multi_formation
from .base import Distiller
from .matching import gradient_match, matched_params

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
    out = torch.empty(k * ipc, c, h, w, dtype=images.dtype)
    for t in range(factor * factor):
        i, j = divmod(t, factor)
        y0, x0 = sum(rows[:i]), sum(cols[:j])
        out[:, :, y0:y0 + rows[i], x0:x0 + cols[j]] = F.interpolate(src[:, t], size=(rows[i], cols[j]), mode="nearest")
    return out


class IDC(Distiller):
    """IDC (see the module docstring). Class-parallel: each rank matches and steps its classes'
    stored images; the network trained on real data is shared: every rank draws its part of each
    ``batch_net`` batch from its own classes (:meth:`Distiller.local_share`) and the gradients are
    summed over ranks, so the network stays identical on every rank."""

    method = "idc"
    stored_space = "pixels [0, 1]"
    decodes = True
    class_parallel = True
    loss_over_classes = "mean"

    def init_synthetic(self) -> None:
        hp = self.hp
        self.factor = hp["factor"]
        if hp["decode_type"] not in DECODE_TYPES:
            raise ValueError(f"decode_type must be one of {DECODE_TYPES}, got {hp['decode_type']!r}")
        if hp["decode_type"] == "bound" and hp["batch_syn_max"] < 1:
            raise ValueError(f"decode_type 'bound' needs batch_syn_max >= 1, got {hp['batch_syn_max']}")
        self.plan = self.decode_plan()
        n = self.ipc * self.factor ** 2
        self.sampler.check(n, "ipc·factor²")
        init = mix_init(self.ds.train_x, self.sampler, self.ipc, self.factor, indices=self.init_indices(n))
        self.syn = init.clone().requires_grad_(True)
        self.opt = torch.optim.SGD([self.syn], lr=hp["lr_img"], momentum=hp["momentum_img"])
        self.match_aug = self.augment(hp["aug_match"], mode="idc")
        self.net_aug = self.augment(hp["aug_net"], mode="idc")

    def decode_plan(self) -> list[tuple[int, int, int]]:
        """``[(factor, start, stop), …]``: which of a class's stored images decode at which factor, in
        IDC's per-class output order (the same for every class: all hold ``ipc`` images)."""
        f, n = self.factor, self.ipc
        if f == 1:  # IDC decodes only when factor > 1, whatever decode_type says
            return [(1, 0, n)]
        kind = self.hp["decode_type"]
        if kind == "multi":
            return [(g, 0, n) for g in range(1, f + 1)]
        if kind == "bound":
            return bound_plan(n, f, self.hp["batch_syn_max"])
        return [(f, 0, n)]

    def decode_parts(self, stored: torch.Tensor) -> list[torch.Tensor]:
        """Decode whole classes of stored images (``(k·ipc, C, h, w)``, class-major) per
        :meth:`decode_plan`: one :func:`~ddkernels.multi_formation` call per plan entry for all
        ``k`` classes. Entry ``(f, start, stop)`` gives ``(f², k, stop − start, C, H, W)``: tile,
        class, image."""
        k, n = len(stored) // self.ipc, self.ipc
        x = stored.view(k, n, *stored.shape[1:])
        parts = []
        for f, lo, hi in self.plan:
            sub = x[:, lo:hi].reshape(-1, *stored.shape[1:])
            dec = multi_formation(sub, f, backend=self.backend) if f > 1 else sub
            parts.append(dec.view(f * f, k, hi - lo, *dec.shape[1:]))
        return parts

    def decode(self, stored: torch.Tensor) -> list[torch.Tensor]:
        """Each class's decoded images (``stored`` as in :meth:`decode_parts`), in IDC's per-class
        order: plan entry, then tile, then image."""
        parts = self.decode_parts(stored)
        return [torch.cat([p[:, c].reshape(-1, *p.shape[3:]) for p in parts]) for c in range(parts[0].shape[1])]

    def _decoded_by_class(self, classes: list[int]) -> list[torch.Tensor]:
        """Each class's decoded images, at most ``batch_syn_max`` (a random subset, as IDC's ``sample``)."""
        per = self.ipc
        if list(classes) == self.classes:
            groups = self.decode(self.syn)  # every owned class in one decode call per plan entry
        else:
            groups = [self.decode(self.class_rows(self.syn, c))[0] for c in classes]
        cap = self.hp["batch_syn_max"]
        return [g[torch.randperm(len(g), generator=self.class_gen(c))[:cap]] if len(g) > cap else g
                for c, g in zip(classes, groups)]

    def _match(self, net, params, classes: list[int]) -> torch.Tensor:
        syns = self._decoded_by_class(classes)
        reals, augmented = [], []
        for c, s in zip(classes, syns):
            r, s = self.siamese(self.match_aug, self.real_batch(c), self.ds.normalize(s), c=c)
            reals.append(r)
            augmented.append(s)
        return gradient_match(net, params, reals, augmented, classes, self.hp["metric"], self.backend)

    def _train_on_real(self, net, opt) -> None:
        hp = self.hp
        # On a shard: this rank's part of each batch, from its classes; losses scaled by part/batch so
        # the gradients summed over ranks are the whole batch's.
        pool = self.local_pool() if self.shard is not None else None
        n_local = self.local_share(hp["batch_net"])
        for _ in range(max(1, hp["n_data"] // hp["batch_net"])):
            opt.zero_grad(set_to_none=True)
            if n_local:
                if pool is None:
                    idx = torch.randint(len(self.ds.train_y), (n_local,), generator=self.gen)
                else:
                    idx = pool[torch.randint(len(pool), (n_local,), generator=self.rank_gen)]
                x, y = self.ds.normalize(self.ds.train_x[idx]), self.ds.train_y[idx]
                if self.net_aug is not None:
                    x = self.net_aug(x, generator=self.rank_gen)
                x, y, y_b, ratio = cutmix(x, y, prob=hp["cutmix_p"], generator=self.rank_gen)
                (cutmix_loss(net(x), y, y_b, ratio) * (n_local / hp["batch_net"])).backward()
            self.sum_grads(net.parameters())
            opt.step()

    def step(self) -> float:
        hp = self.hp
        net = self.fresh_net()
        params = matched_params(net, hp["layers"])
        net_opt = torch.optim.SGD(net.parameters(), lr=hp["lr_net"], momentum=0.9, weight_decay=5e-4)
        with torch.no_grad():
            self.syn.clamp_(0, 1)
        total, count = 0.0, 0
        self.net = net  # the last outer iteration's network, kept for inspection (shared on every rank)
        classes = self.classes
        for _ in range(hp["inner_loop"]):
            if hp["class_steps"] == "sequential":
                # IDC: one image step per class, in class order.
                for c in classes:
                    loss = self._match(net, params, [c]).sum()
                    self.image_step(loss)
                    total, count = total + float(loss.detach()), count + 1
            else:
                # All classes matched in one batched distance call and one step on the summed loss.
                loss = self._match(net, params, classes)
                self.image_step(loss.sum())
                total, count = total + float(loss.sum().detach()), count + len(classes)
            self._train_on_real(net, net_opt)
        return total / count

    def training_set(self):
        """The decoded, normalized training set and its labels: every class decoded with
        :meth:`decode_plan` (IDC's ``loader``; ``bound`` caps each class at ``batch_syn_max``), rows
        ordered plan entry, tile, class, image (for ``single``/``multi`` the order of
        :func:`~ddkernels.multi_formation` on the whole stored set)."""
        with torch.no_grad():
            parts = self.decode_parts(self.syn.detach().clamp(0, 1))
            labels = torch.cat([self.labels.view(-1, self.ipc)[:, lo:hi].reshape(-1).repeat(f * f)
                                for f, lo, hi in self.plan])
            return self.ds.normalize(torch.cat([p.reshape(-1, *p.shape[3:]) for p in parts])), labels

    def pixel_images(self):
        return self.syn.detach().clamp(0, 1)


__all__ = ["DECODE_TYPES", "IDC", "bound_plan", "mix_init"]
