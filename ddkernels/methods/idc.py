"""IDC: synthetic-data parameterization with multi-formation (Kim et al., ICML 2022), spec §1a.

Stored images ``D`` (IPC per class) live in [0, 1]; each decodes into ``factor²`` training images
through :func:`ddkernels.multi_formation`. One outer iteration: a fresh network, ``D`` clamped to
[0, 1], then ``inner_loop`` times: gradient matching on decoded images (64 real per class, at most
``batch_syn_max`` decoded per class, IDC's DiffAug with one parameter set per class), and training
the network on ``n_data`` real images (per-sample DiffAug, CutMix).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..augment import cutmix, cutmix_loss
from ..data import ClassSampler
from ..ops.multi_formation import multi_formation, multi_formation_targets
from .base import Distiller
from .matching import gradient_match, matched_params


def mix_init(images: torch.Tensor, sampler: ClassSampler, ipc: int, factor: int,
             generator: torch.Generator | None = None) -> torch.Tensor:
    """IDC's "mix" initialization: per class, ``ipc·factor²`` random real images, each resized
    (nearest) into one tile of a stored image, tiles row-major; the first ``h % factor`` tiles are a
    pixel larger. ``factor = 1`` is IDC's "random" init (real images).

    Returns:
        ``(num_classes·ipc, C, H, W)``, class-major, in the images' range.
    """
    _, c, h, w = images.shape
    rows = [h // factor + (1 if i < h % factor else 0) for i in range(factor)]
    cols = [w // factor + (1 if i < w % factor else 0) for i in range(factor)]
    k = sampler.num_classes
    sampler.check(ipc * factor * factor, "ipc·factor²")
    src = images[sampler.indices_all(ipc * factor * factor, generator).flatten()]
    src = src.view(k * ipc, factor * factor, c, h, w)
    out = torch.empty(k * ipc, c, h, w, dtype=images.dtype)
    for t in range(factor * factor):
        i, j = divmod(t, factor)
        y0, x0 = sum(rows[:i]), sum(cols[:j])
        out[:, :, y0:y0 + rows[i], x0:x0 + cols[j]] = F.interpolate(src[:, t], size=(rows[i], cols[j]), mode="nearest")
    return out


class IDC(Distiller):
    method = "idc"
    stored_space = "pixels [0, 1]"
    decodes = True

    def init_synthetic(self) -> None:
        hp = self.hp
        self.factor = hp["factor"]
        init = mix_init(self.ds.train_x, self.sampler, self.ipc, self.factor, self.gen)
        self.syn = init.clone().requires_grad_(True)
        self.opt = torch.optim.SGD([self.syn], lr=hp["lr_img"], momentum=hp["momentum_img"])
        self.match_aug = self.augment(hp["aug_match"], mode="idc")
        self.net_aug = self.augment(hp["aug_net"], mode="idc")

    def decode(self, stored: torch.Tensor) -> torch.Tensor:
        return multi_formation(stored, self.factor, backend=self.backend) if self.factor > 1 else stored

    def _decoded_by_class(self, classes: list[int]) -> list[torch.Tensor]:
        """Each class's decoded images, at most ``batch_syn_max`` (a random subset, as IDC's ``sample``)."""
        per = self.ipc
        if len(classes) == self.num_classes:
            # Decode everything in one call, then regroup the tile-major rows (k·N + b) by class.
            dec = self.decode(self.syn)
            dec = dec.view(-1, self.num_classes, per, *dec.shape[1:])
            groups = [dec[:, c].reshape(-1, *dec.shape[3:]) for c in classes]
        else:
            groups = [self.decode(self.syn[c * per:(c + 1) * per]) for c in classes]
        cap = self.hp["batch_syn_max"]
        return [g[torch.randperm(len(g), generator=self.gen)[:cap]] if len(g) > cap else g for g in groups]

    def _match(self, net, params, classes: list[int]) -> torch.Tensor:
        syns = self._decoded_by_class(classes)
        reals, augmented = [], []
        for c, s in zip(classes, syns):
            r, s = self.siamese(self.match_aug, self.real_batch(c), self.ds.normalize(s))
            reals.append(r)
            augmented.append(s)
        return gradient_match(net, params, reals, augmented, classes, self.hp["metric"], self.backend)

    def _train_on_real(self, net, opt) -> None:
        hp = self.hp
        n_train = len(self.ds.train_y)
        for _ in range(max(1, hp["n_data"] // hp["batch_net"])):
            idx = torch.randint(n_train, (hp["batch_net"],), generator=self.gen)
            x, y = self.ds.normalize(self.ds.train_x[idx]), self.ds.train_y[idx]
            if self.net_aug is not None:
                x = self.net_aug(x, generator=self.gen)
            x, y, y_b, ratio = cutmix(x, y, prob=hp["cutmix_p"], generator=self.gen)
            loss = cutmix_loss(net(x), y, y_b, ratio)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    def step(self) -> float:
        hp = self.hp
        net = self.fresh_net()
        params = matched_params(net, hp["layers"])
        net_opt = torch.optim.SGD(net.parameters(), lr=hp["lr_net"], momentum=0.9, weight_decay=5e-4)
        with torch.no_grad():
            self.syn.clamp_(0, 1)
        total, count = 0.0, 0
        classes = list(range(self.num_classes))
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
        with torch.no_grad():
            stored = self.syn.detach().clamp(0, 1)
            return self.ds.normalize(self.decode(stored)), multi_formation_targets(self.labels, self.factor)

    def pixel_images(self):
        return self.syn.detach().clamp(0, 1)


__all__ = ["IDC", "mix_init"]
