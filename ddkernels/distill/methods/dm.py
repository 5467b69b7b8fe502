"""DM, distribution matching (Zhao & Bilen), VICO ``main_DM.py`` (docs/spec.md §2a): the objective
:class:`DistributionMatching` and the method DM (plain images under it)."""
from __future__ import annotations

import torch

from .base import Distiller
from .parts import Objective, PlainImages
from .presets import DSA_STRATEGY
from .registry import register


def distribution_match(trainer: Distiller, net, syn: torch.Tensor | list[torch.Tensor],
                        aug) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | list[torch.Tensor]]:
    """DM's loss over the trainer's owned classes: per class, ``trainer.batch_real`` real images and
    the class's synthetic images under one Siamese augmentation (both from the class's stream), then
    Σ_c ‖mean embed(real_c) − mean embed(syn_c)‖².

    ``syn`` is either a class-major tensor (``len(trainer.classes)·n`` rows in the order of
    ``trainer.classes``) or a list with each owned class's batch (counts may differ: HaBa's sampled
    hallucinations). All classes go through ``net`` in one batch each for real and synthetic images
    (instance norm is per sample, so batching classes does not change the features).

    Returns:
        ``(loss, real_mean, syn_feat)``: the scalar loss, the real class means ``(C, d)`` (no grad)
        and the synthetic features, ``(C, n, d)`` (a list of ``(n_c, d)`` when counts differ).
    """
    classes, n = trainer.classes, trainer.batch_real
    k = len(classes)
    if isinstance(syn, torch.Tensor):
        if len(syn) % k:
            raise ValueError(f"syn must have a multiple of {k} rows (class-major over the owned classes), got {len(syn)}")
        syn = list(syn.split(len(syn) // k))
    elif len(syn) != k:
        raise ValueError(f"syn must hold one batch per owned class ({k}), got {len(syn)}")
    pairs = [trainer.siamese(aug, trainer.real_batch(c), s, c=c) for c, s in zip(classes, syn)]
    # Features in float32 before the means: the loss is a small difference of two close means, which
    # half-precision features (under autocast) would round away (a no-op in fp32).
    with torch.no_grad():
        real_mean = net.embed(torch.cat([p[0] for p in pairs])).float().view(k, n, -1).mean(1)
    counts = [len(s) for s in syn]
    feats = net.embed(torch.cat([p[1] for p in pairs])).float()
    if len(set(counts)) == 1:
        syn_feat = feats.view(k, counts[0], -1)
        syn_mean = syn_feat.mean(1)
    else:
        syn_feat = list(feats.split(counts))
        syn_mean = torch.stack([f.mean(0) for f in syn_feat])
    loss = ((real_mean - syn_mean) ** 2).sum()
    return loss, real_mean, syn_feat


def dm_loss(trainer: Distiller, syn: torch.Tensor | list[torch.Tensor]) -> torch.Tensor:
    """The DM loss of one outer iteration for any parameterization: a fresh frozen network and
    :func:`distribution_match` with the trainer's augmentation."""
    net = trainer.fresh_net()
    net.requires_grad_(False)
    return distribution_match(trainer, net, syn, trainer.aug)[0]


class DistributionMatching(Objective):
    """Match the mean embedding of real and synthetic images of each class under a fresh random
    ConvNet (frozen weights): loss = Σ_c ‖mean embed(A_c(real_c)) − mean embed(A_c(syn_c))‖²
    (:func:`distribution_match`, hp ``aug``), one step on the stored tensors. Class-parallel: with
    the class streams, a class's result does not depend on how the classes are split over ranks.
    """

    def init(self):
        self.aug = self.t.augment(self.t.hp["aug"])

    def match(self):
        """``(loss, real class means, synthetic features)`` of :func:`distribution_match`."""
        t = self.t
        syn = t.param.class_batches(t.classes)  # before the network: a batch may draw from the stream
        net = t.fresh_net()
        net.requires_grad_(False)
        return distribution_match(t, net, syn, self.aug)

    def loss(self) -> torch.Tensor:
        return self.match()[0]

    def step(self) -> float:
        loss = self.loss()
        self.t.image_step(loss)
        return float(loss.detach())


def _paper(dataset: str, ipc: int) -> dict:
    return dict(iterations=20000, lr_img=1.0, momentum_img=0.5, batch_real=256, init="real", aug=DSA_STRATEGY,
                width=128, eval="dsa", eval_epochs=1000, eval_aug=None, eval_width=None, zca=False, precision="fp32")


def _quick(dataset: str, ipc: int) -> dict:
    return dict(_paper(dataset, ipc), iterations=200, batch_real=64, width=64, eval_epochs=300)


@register
class DM(Distiller):
    """DM: :class:`~.parts.PlainImages` × :class:`DistributionMatching`."""

    method = "dm"
    PARAMETERIZATION = PlainImages
    OBJECTIVE = DistributionMatching
    PRESETS = {"paper": _paper, "quick": _quick}


__all__ = ["DM", "DistributionMatching", "distribution_match", "dm_loss"]
