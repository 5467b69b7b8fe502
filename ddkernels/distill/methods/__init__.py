"""Distillation trainers, each a parameterization × an objective (:mod:`.parts`):

=======  ==========================  ==========================================================
method   parameterization            objective
=======  ==========================  ==========================================================
dc, dsa  PlainImages                 GradientMatching (DC's schedule)
dm       PlainImages                 DistributionMatching
mtt      PlainImages                 TrajectoryMatching
idc      MultiFormation              RealNetGradientMatching (IDC's schedule)
haba     BasesHallucinators          TrajectoryMatching, DistributionMatching or GradientMatching
                                     (hp ``base``: mtt, dm or dc)
rtp      AddressableMemories         BPTT
kfs      CodesDecoders               DiscriminativeDistributionMatching
=======  ==========================  ==========================================================

(:func:`~.registry.method_table_markdown` reads this off the declarations.) Any other compatible pair runs too:
``Distiller(ds, ipc, hp, parameterization=MultiFormation, objective=DistributionMatching)``.

    ds = ddkernels.distill.data.load_dataset("fashion-mnist")
    trainer = make_distiller("idc", ds, ipc=1, preset="quick", backend="auto", seed=0)
    trainer.run(trainer.hp["iterations"])
    images, labels = trainer.training_set()      # normalized, ready for ddkernels.distill.evaluate
"""
from __future__ import annotations

import torch

from ..data import Dataset
from ..distributed import Shard
from .base import Distiller
from .parts import Objective, Parameterization, PlainImages
from .matching import GradientMatching, RealNetGradientMatching, gradient_match, matched_params
# Imported in the order METHODS lists them (registration order).
from .dc import DC, DSA
from .dm import DM, DistributionMatching, distribution_match, dm_loss
from .idc import IDC, MultiFormation, mix_init
from .kfs import KFS, CodesDecoders, DiscriminativeDistributionMatching
from .mtt import MTT, TrajectoryMatching, trajectory_matching_loss
from .haba import HaBa, BasesHallucinators, supcon_loss
from .rtp import RTP, AddressableMemories, BPTT
from .registry import METHODS, method_table, method_table_markdown, preset_names
from .presets import get_loops, preset

PRESET_NAMES = preset_names()


def make_distiller(method: str, dataset: Dataset, ipc: int, preset_name: str = "quick", *, backend: str = "auto",
                   seed: int = 0, shard: Shard | None = None, device: str | torch.device | None = "auto",
                   **overrides) -> Distiller:
    """A trainer for ``method`` with preset ``preset_name``; ``overrides`` replace preset entries;
    ``shard``: the classes this process owns in a class-parallel run (see :mod:`ddkernels.distill.distributed`);
    ``device``: where it runs (see :class:`Distiller`)."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {', '.join(METHODS)}")
    hp = preset(method, dataset.name, ipc, preset_name)
    unknown = sorted(set(overrides) - set(hp))
    if unknown:
        raise ValueError(f"unknown hyperparameter(s) {unknown} for {method}; known: {sorted(hp)}")
    hp.update(overrides)
    return METHODS[method](dataset, ipc, hp, backend=backend, seed=seed, shard=shard, device=device)


__all__ = ["AddressableMemories", "BPTT", "BasesHallucinators", "CodesDecoders", "DC", "DM", "DSA",
           "DiscriminativeDistributionMatching", "DistributionMatching", "Distiller", "GradientMatching", "HaBa",
           "IDC", "KFS", "METHODS", "MTT", "MultiFormation", "Objective", "PRESET_NAMES", "Parameterization",
           "PlainImages", "RTP", "RealNetGradientMatching", "TrajectoryMatching", "distribution_match", "dm_loss",
           "get_loops", "gradient_match", "make_distiller", "matched_params", "method_table", "method_table_markdown", "mix_init", "preset",
           "supcon_loss", "trajectory_matching_loss"]
