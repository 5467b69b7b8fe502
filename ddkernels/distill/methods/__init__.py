"""Distillation trainers: DC, DSA, DM and IDC (sharing one gradient-matching core), KFS, MTT, HaBa and
RTP (BPTT through an unrolled inner loop into addressable memories).

    ds = ddkernels.distill.data.load_dataset("fashion-mnist")
    trainer = make_distiller("idc", ds, ipc=1, preset="quick", backend="auto", seed=0)
    trainer.run(trainer.hp["iterations"])
    images, labels = trainer.training_set()      # normalized, ready for ddkernels.distill.evaluate
"""
from __future__ import annotations

from ..data import Dataset
from ..distributed import Shard
from .base import Distiller
from .dc import DC, DSA
from .dm import DM, distribution_match, dm_loss
from .haba import HaBa, supcon_loss
from .idc import IDC, mix_init
from .kfs import KFS
from .matching import gradient_match, matched_params
from .mtt import MTT, trajectory_matching_loss
from .presets import PRESET_NAMES, get_loops, preset
from .rtp import RTP

METHODS: dict[str, type[Distiller]] = {"dc": DC, "dsa": DSA, "dm": DM, "idc": IDC, "kfs": KFS, "mtt": MTT,
                                        "haba": HaBa, "rtp": RTP}


def make_distiller(method: str, dataset: Dataset, ipc: int, preset_name: str = "quick", *, backend: str = "auto",
                   seed: int = 0, shard: Shard | None = None, **overrides) -> Distiller:
    """A trainer for ``method`` with preset ``preset_name``; ``overrides`` replace preset entries;
    ``shard``: the classes this process owns in a class-parallel run (see :mod:`ddkernels.distill.distributed`)."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {', '.join(METHODS)}")
    hp = preset(method, dataset.name, ipc, preset_name)
    unknown = sorted(set(overrides) - set(hp))
    if unknown:
        raise ValueError(f"unknown hyperparameter(s) {unknown} for {method}; known: {sorted(hp)}")
    hp.update(overrides)
    return METHODS[method](dataset, ipc, hp, backend=backend, seed=seed, shard=shard)


__all__ = ["DC", "DM", "DSA", "Distiller", "HaBa", "IDC", "KFS", "METHODS", "MTT", "PRESET_NAMES", "RTP",
           "distribution_match", "dm_loss", "get_loops", "gradient_match", "make_distiller", "matched_params",
           "mix_init", "preset", "supcon_loss", "trajectory_matching_loss"]
