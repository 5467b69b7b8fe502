"""DM, distribution matching (Zhao & Bilen), VICO ``main_DM.py`` (spec §2a)."""
from __future__ import annotations

import torch

from .base import Distiller
from .dc import DC


def distribution_match(trainer: Distiller, net, syn: torch.Tensor, aug) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """DM's loss for a class-major synthetic batch ``syn`` over the trainer's owned classes
    (``len(trainer.classes)·n`` rows in the order of ``trainer.classes``): per class,
    ``trainer.batch_real`` real images and the class's synthetic images under one Siamese
    augmentation (both from the class's stream), then Σ_c ‖mean embed(real_c) − mean embed(syn_c)‖².

    All classes go through ``net`` in one batch each for real and synthetic images (instance norm is
    per sample, so batching classes does not change the features).

    Returns:
        ``(loss, real_mean, syn_feat)``: the scalar loss, the real class means ``(C, d)`` (no grad)
        and the synthetic features ``(C, n, d)`` (for auxiliary terms on them).
    """
    classes, n = trainer.classes, trainer.batch_real
    k = len(classes)
    if len(syn) % k:
        raise ValueError(f"syn must have a multiple of {k} rows (class-major over the owned classes), got {len(syn)}")
    per = len(syn) // k
    pairs = [trainer.siamese(aug, trainer.real_batch(c), syn[i * per:(i + 1) * per], c=c) for i, c in enumerate(classes)]
    with torch.no_grad():
        real_mean = net.embed(torch.cat([p[0] for p in pairs])).view(k, n, -1).mean(1)
    syn_feat = net.embed(torch.cat([p[1] for p in pairs])).view(k, per, -1)
    loss = ((real_mean - syn_feat.mean(1)) ** 2).sum()
    return loss, real_mean, syn_feat


class DM(DC):
    """Match the mean embedding of real and synthetic images of each class under a fresh random
    ConvNet (frozen weights): loss = Σ_c ‖mean embed(A_c(real_c)) − mean embed(A_c(syn_c))‖²
    (:func:`distribution_match`). Class-parallel with no shared parameter: with the class-parallel
    streams, a class's result does not depend on how the classes are split over ranks.
    """

    method = "dm"

    def step(self) -> float:
        net = self.fresh_net()
        net.requires_grad_(False)
        loss, _, _ = distribution_match(self, net, self.syn, self.aug)
        self.image_step(loss)
        return float(loss.detach())


__all__ = ["DM", "distribution_match"]
