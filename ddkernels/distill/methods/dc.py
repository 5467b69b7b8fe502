"""DC and DSA (Zhao et al.; Zhao & Bilen), VICO ``main.py`` (docs/spec.md §2a): plain images under
gradient matching with a network trained on the synthetic set between matching steps. DSA is DC
with Siamese augmentation (one parameter set per class and step) in the matching and per-sample
augmentation in the inner training."""
from __future__ import annotations

from .base import Distiller
from .matching import GradientMatching
from .parts import PlainImages
from .presets import DSA_STRATEGY, get_loops
from .registry import register


def _paper(dsa: bool):
    def paper(dataset: str, ipc: int) -> dict:
        outer, inner = get_loops(ipc)
        hp = dict(iterations=1000, lr_img=0.1, momentum_img=0.5, lr_net=0.01, batch_real=256, batch_train=256,
                  init="real" if dsa else "noise", metric="ours", layers="weights", aug=DSA_STRATEGY if dsa else "",
                  outer_loop=outer, inner_loop=inner, width=128, eval="dsa", eval_epochs=1000 if dsa else 300,
                  eval_aug=None if dsa else "", eval_dc_aug="", eval_width=None, zca=False, precision="fp32")
        if not dsa and dataset == "mnist":
            # VICO get_daparam: DC evaluates MNIST with its crop/scale/rotate aug, then for 1000 epochs.
            hp.update(eval_dc_aug="crop_scale_rotate", eval_epochs=1000)
        return hp
    return paper


def _quick(dsa: bool):
    def quick(dataset: str, ipc: int) -> dict:
        hp = _paper(dsa)(dataset, ipc)
        # Real init (noise needs hundreds of iterations), smaller batches and network, capped loops.
        hp.update(iterations=20, batch_real=64, width=64, init="real", outer_loop=min(hp["outer_loop"], 5),
                  inner_loop=min(hp["inner_loop"], 10), eval_epochs=300)
        return hp
    return quick


@register
class DC(Distiller):
    """DC: :class:`~.parts.PlainImages` × :class:`~.matching.GradientMatching`, noise init, no augmentation."""

    method = "dc"
    PARAMETERIZATION = PlainImages
    OBJECTIVE = GradientMatching
    PRESETS = {"paper": _paper(False), "quick": _quick(False)}


@register
class DSA(Distiller):
    """DSA: DC with differentiable Siamese augmentation (hp ``aug``) and real init."""

    method = "dsa"
    PARAMETERIZATION = PlainImages
    OBJECTIVE = GradientMatching
    PRESETS = {"paper": _paper(True), "quick": _quick(True)}


__all__ = ["DC", "DSA"]
