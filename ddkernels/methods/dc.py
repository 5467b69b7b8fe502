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

    Class-parallel: each rank matches its classes; the inner training of the shared network on the
    whole synthetic set sums its gradients over ranks (see :meth:`Distiller.train_net`).
    """

    method = "dc"
    class_parallel = True

    def init_synthetic(self) -> None:
        hp = self.hp
        if hp["init"] == "real":
            syn = self.ds.normalize(self.ds.train_x[self.init_indices(self.ipc).flatten()])
        elif hp["init"] == "noise":
            syn = self.init_randn(self.ipc, tuple(self.ds.train_x.shape[1:]))
        else:
            raise ValueError(f"init must be 'real' or 'noise' for {self.method}, got {hp['init']!r}")
        self.syn = syn.clone().requires_grad_(True)
        self.opt = torch.optim.SGD([self.syn], lr=hp["lr_img"], momentum=hp["momentum_img"])
        self.aug = self.augment(hp["aug"])

    def class_slice(self, c: int) -> torch.Tensor:
        return self.class_rows(self.syn, c)

    def class_pairs(self) -> list[list[torch.Tensor]]:
        """Per owned class: (real batch, synthetic images), Siamese-augmented together."""
        return [self.siamese(self.aug, self.real_batch(c), self.class_slice(c), c=c) for c in self.classes]

    def step(self) -> float:
        hp = self.hp
        net = self.fresh_net()
        params = matched_params(net, hp["layers"])
        net_opt = torch.optim.SGD(net.parameters(), lr=hp["lr_net"])
        outer, inner = hp["outer_loop"], hp["inner_loop"]
        total = 0.0
        for ol in range(outer):
            pairs = self.class_pairs()
            dist = gradient_match(net, params, [p[0] for p in pairs], [p[1] for p in pairs],
                                  self.classes, hp["metric"], self.backend)
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
