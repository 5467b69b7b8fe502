"""DC and DSA (Zhao et al.; Zhao & Bilen), VICO ``main.py`` (spec §2a)."""
from __future__ import annotations

import torch

from .base import Distiller
from .matching import gradient_match, matched_params


class DC(Distiller):
    """Gradient matching with a network trained on the synthetic set between matching steps.

    Synthetic images live in normalized space. One outer iteration: a fresh network; ``outer_loop``
    times: match every class (one batched distance call), one SGD step on the images after summing
    over classes, then ``inner_loop`` epochs of training the network on the current synthetic set.
    DSA is DC with Siamese augmentation (one parameter set per class and step) in the matching and
    per-sample augmentation in the inner training.
    """

    method = "dc"

    def init_synthetic(self) -> None:
        hp = self.hp
        if hp["init"] == "real":
            idx = self.sampler.indices_all(self.ipc, self.gen).flatten()
            syn = self.ds.normalize(self.ds.train_x[idx])
        elif hp["init"] == "noise":
            syn = torch.randn((self.num_classes * self.ipc, *self.ds.train_x.shape[1:]), generator=self.gen)
        else:
            raise ValueError(f"init must be 'real' or 'noise' for {self.method}, got {hp['init']!r}")
        self.syn = syn.clone().requires_grad_(True)
        self.opt = torch.optim.SGD([self.syn], lr=hp["lr_img"], momentum=hp["momentum_img"])
        self.aug = self.augment(hp["aug"])

    def class_slice(self, c: int) -> torch.Tensor:
        return self.syn[c * self.ipc:(c + 1) * self.ipc]

    def step(self) -> float:
        hp = self.hp
        net = self.fresh_net()
        params = matched_params(net, hp["layers"])
        net_opt = torch.optim.SGD(net.parameters(), lr=hp["lr_net"])
        outer, inner = hp["outer_loop"], hp["inner_loop"]
        total = 0.0
        for ol in range(outer):
            pairs = [self.siamese(self.aug, self.real_batch(c), self.class_slice(c)) for c in range(self.num_classes)]
            dist = gradient_match(net, params, [p[0] for p in pairs], [p[1] for p in pairs],
                                  range(self.num_classes), hp["metric"], self.backend)
            loss = dist.sum()
            self.image_step(loss)
            total += float(loss.detach())
            if ol == outer - 1:
                break
            self.train_net(net, net_opt, self.syn, self.labels, inner, hp["batch_train"], self.aug)
        return total / outer

    def training_set(self):
        return self.syn.detach().clone(), self.labels.clone()

    def pixel_images(self):
        return self.ds.denormalize(self.syn.detach()).clamp(0, 1)


class DSA(DC):
    """DC with differentiable Siamese augmentation (the preset sets ``aug``)."""

    method = "dsa"


__all__ = ["DC", "DSA"]
