"""DC and DSA (Zhao et al.; Zhao & Bilen), VICO ``main.py`` (docs/spec.md §2a)."""
from __future__ import annotations

from typing import Callable

import torch

from .base import Distiller
from .matching import gradient_match, matched_params


def match_and_train(trainer: Distiller, class_batches: Callable[[], list[torch.Tensor]],
                    train_set: Callable[[], tuple[torch.Tensor, torch.Tensor]]) -> float:
    """DC's outer iteration for any parameterization of the synthetic set (DC/DSA; HaBa on DC).

    A fresh network; ``outer_loop`` times: match every class (one batched distance call), one step
    on the synthetic parameters (``trainer.image_step``) after summing over classes, then
    ``inner_loop`` epochs of training the network on ``train_set()``.

    Args:
        trainer: supplies the hyperparameters, generator, real batches, augmentation and optimizer.
        class_batches: per owned class (``trainer.classes``), the current synthetic batch, differentiable in the stored parameters
            (called again after every step).
        train_set: the current synthetic ``(images, labels)`` the network trains on (detached there).

    Returns:
        the mean matching loss over the outer loop.
    """
    hp = trainer.hp
    net = trainer.fresh_net()
    params = matched_params(net, hp["layers"])
    net_opt = torch.optim.SGD(net.parameters(), lr=hp["lr_net"])
    outer, inner = hp["outer_loop"], hp["inner_loop"]
    classes = trainer.classes
    total = 0.0
    for ol in range(outer):
        pairs = [trainer.siamese(trainer.aug, trainer.real_batch(c), s, c=c) for c, s in zip(classes, class_batches())]
        dist = gradient_match(net, params, [p[0] for p in pairs], [p[1] for p in pairs], classes, hp["metric"],
                              trainer.backend)
        loss = dist.sum()
        trainer.image_step(loss)
        total += float(loss.detach())
        if ol == outer - 1:
            break
        trainer.train_net(net, net_opt, *train_set(), inner, hp["batch_train"], trainer.aug)
    return total / outer


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
        syn = self.initial_images(self.ipc)
        self.syn = syn.clone().requires_grad_(True)
        self.opt = torch.optim.SGD([self.syn], lr=hp["lr_img"], momentum=hp["momentum_img"])
        self.aug = self.augment(hp["aug"])

    def class_slice(self, c: int) -> torch.Tensor:
        return self.class_rows(self.syn, c)

    def step(self) -> float:
        return match_and_train(self, lambda: [self.class_slice(c) for c in self.classes],
                               lambda: (self.syn, self.labels))

    def training_set(self):
        return self.syn.detach().clone(), self.labels.clone()

    def pixel_images(self):
        return self.ds.denormalize(self.syn.detach()).clamp(0, 1)


class DSA(DC):
    """DC with differentiable Siamese augmentation (the preset sets ``aug``)."""

    method = "dsa"


__all__ = ["DC", "DSA", "match_and_train"]
