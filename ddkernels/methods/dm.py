"""DM, distribution matching (Zhao & Bilen), VICO ``main_DM.py`` (spec §2a)."""
from __future__ import annotations

import torch

from .dc import DC


class DM(DC):
    """Match the mean embedding of real and synthetic images of each class under a fresh random
    ConvNet (frozen weights): loss = Σ_c ‖mean embed(A_c(real_c)) − mean embed(A_c(syn_c))‖².

    All classes go through the network in one batch each for real and synthetic images (instance
    norm is per sample, so batching classes does not change the features). Class-parallel with no
    shared parameter: with the class-parallel streams, a class's result does not depend on how the
    classes are split over ranks.
    """

    method = "dm"

    def step(self) -> float:
        net = self.fresh_net()
        net.requires_grad_(False)
        k, n = len(self.classes), self.batch_real
        pairs = self.class_pairs()
        with torch.no_grad():
            real_mean = net.embed(torch.cat([p[0] for p in pairs])).view(k, n, -1).mean(1)
        syn_mean = net.embed(torch.cat([p[1] for p in pairs])).view(k, self.ipc, -1).mean(1)
        loss = ((real_mean - syn_mean) ** 2).sum()
        self.image_step(loss)
        return float(loss.detach())


__all__ = ["DM"]
