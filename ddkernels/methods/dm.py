"""DM, distribution matching (Zhao & Bilen), VICO ``main_DM.py`` (spec §2a)."""
from __future__ import annotations

import torch

from .base import Distiller
from .dc import DC


class DM(DC):
    """Match the mean embedding of real and synthetic images of each class under a fresh random
    ConvNet (frozen weights): loss = Σ_c ‖mean embed(A_c(real_c)) − mean embed(A_c(syn_c))‖².

    All classes go through the network in one batch each for real and synthetic images (instance
    norm is per sample, so batching classes does not change the features).
    """

    method = "dm"

    def step(self) -> float:
        loss = dm_loss(self, [self.class_slice(c) for c in range(self.num_classes)])
        self.image_step(loss)
        return float(loss.detach())


def dm_loss(trainer: Distiller, syn: list[torch.Tensor]) -> torch.Tensor:
    """The DM loss of one outer iteration for any parameterization (DM; HaBa on DM): a fresh frozen
    network, per class one Siamese augmentation of ``trainer.batch_real`` real images and of
    ``syn[c]`` (the class's synthetic batch, differentiable), squared distance of the mean embeddings
    summed over classes."""
    net = trainer.fresh_net()
    net.requires_grad_(False)
    k, n = len(syn), trainer.batch_real
    pairs = [trainer.siamese(trainer.aug, trainer.real_batch(c), s) for c, s in enumerate(syn)]
    with torch.no_grad():
        real_mean = net.embed(torch.cat([p[0] for p in pairs])).view(k, n, -1).mean(1)
    counts = [len(s) for s in syn]
    feats = net.embed(torch.cat([p[1] for p in pairs]))
    if len(set(counts)) == 1:
        syn_mean = feats.view(k, counts[0], -1).mean(1)
    else:
        syn_mean = torch.stack([f.mean(0) for f in feats.split(counts)])
    return ((real_mean - syn_mean) ** 2).sum()


__all__ = ["DM", "dm_loss"]
