"""MTT: matching training trajectories (Cazenavette et al., CVPR 2022), docs/spec.md §3: the objective
:class:`TrajectoryMatching` (also HaBa's default) and the method MTT (plain images under it).

One outer iteration: draw an expert and a start epoch ``t < max_start_epoch``; start a student at
the expert's parameters ``θ*_t`` (one flat vector); take ``syn_steps`` SGD steps on synthetic
minibatches (per-sample DSA) with the learnable student lr ``syn_lr``; the loss is
``‖θ̂_N − θ*_{t+M}‖² / ‖θ*_t − θ*_{t+M}‖²`` with ``M = expert_epochs``; one step on the images (``lr_img``) and on ``syn_lr`` (``lr_lr``, its own param
group). The student is the run's ConvNet-3 evaluated with ``torch.func.functional_call`` on views of
the flat vector, so no module is copied per step. hp ``unroll`` picks how the loss is differentiated
through the ``syn_steps``: ``"reverse"`` (default; :mod:`.unroll`: one ``(syn_steps, P)`` weight buffer,
each step recomputed in reverse from its recorded chunk, hallucinator and DSA parameters, memory of
one step's graph) or ``"autograd"`` (MTT's own ``create_graph=True`` graph, memory ∝ ``syn_steps``);
both give the same gradient. hp ``unroll_pinned`` (default off) keeps the weight buffer in pinned host
memory; hp ``unroll_product`` is how the reverse takes each step's second-derivative product:
``"forward"`` (default; reverse over forward mode, cheaper) or ``"backward"`` (the double backward, as
before it; runs written before it resume with it).

Experts come from ``ddkernels experts`` (:mod:`ddkernels.distill.experts`); set hp ``expert_dir``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.func import functional_call

from ...augment import DiffAugment
from ...nn.convnet import ConvNet
from ..data.zca import zca_reg
from ..experts import ExpertBuffer, unflatten
from .base import Distiller
from .parts import Objective, PlainImages
from .presets import DSA_STRATEGY, default_expert_dir
from .registry import register
from .unroll import MODES, autograd_unroll, check_product, unrolled_sgd


def trajectory_matching_loss(student: torch.Tensor, start: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``‖student − target‖² / ‖start − target‖²`` (MTT; both sums over every parameter)."""
    return ((student - target) ** 2).sum() / ((start - target) ** 2).sum()


class TrajectoryMatching(Objective):
    """Trajectory matching with a functional student on a flat parameter vector (see module doc).

    Stores ``syn_lr`` (the learned student lr, one float, also the evaluation lr; floored at hp
    ``min_syn_lr`` where the preset has one, as HaBa's). Student steps take the parameterization's
    ``slots`` in chunks of ``batch_syn`` of a random permutation of them; ``extra_state`` holds the
    pending chunks.
    """

    needs = ("drawn_slots",)
    class_parallel = False
    not_class_parallel_because = ("every class's images enter one student trajectory (each student step trains "
                                  "on a batch mixing classes; it would need a split over expert trajectories)")

    def init(self) -> None:
        """Experts, the student template, the learnable lr and the augmentation."""
        hp = self.t.hp
        for key in ("syn_steps", "expert_epochs", "max_start_epoch"):
            if isinstance(hp[key], bool) or not isinstance(hp[key], int) or hp[key] < 1:
                raise ValueError(f"{key} must be a positive int, got {hp[key]!r}")
        check_unroll_hp(hp)
        ds = self.t.ds
        self.experts = ExpertBuffer(hp["expert_dir"], dataset=ds.name, width=hp["width"],
                                    min_epochs=hp["max_start_epoch"] + hp["expert_epochs"],
                                    zca=zca_reg(hp.get("zca", False)), data_dir=ds.data_dir)
        self.student = ConvNet(ds.channels, ds.num_classes, width=hp["width"], im_size=ds.im_size,
                               backend=self.t.backend).to(self.t.device)
        names = [k for k, _ in self.student.named_parameters()]
        if names != self.experts.names:
            raise ValueError(f"experts in {hp['expert_dir']!r} have parameters {self.experts.names}, "
                             f"the student has {names}")
        self.student.requires_grad_(False)
        self.syn_lr = torch.tensor(float(hp["lr_teacher"]), device=self.t.device).requires_grad_(True)
        self.aug = self.t.augment(hp["aug"])
        self._chunks: list[torch.Tensor] = []

    def stored_floats(self) -> int:
        return 1  # syn_lr

    def params(self):
        return {"syn_lr": self.syn_lr}

    def param_groups(self):
        return [{"params": [self.syn_lr], "lr": self.t.hp["lr_lr"], "momentum": self.t.hp["momentum_lr"]}]

    def next_chunk(self, n: int) -> torch.Tensor:
        """The next minibatch of ``n`` slots (``batch_syn`` of them; all when it is null)."""
        if not self._chunks:
            bs = self.t.hp["batch_syn"] or n
            self._chunks = list(torch.randperm(n, generator=self.t.gen, device=self.t.device).split(bs))
        return self._chunks.pop()

    def student_draw(self, _step: int):
        """Every random choice of one student step, in the stream's order: the chunk of slots, the
        parameterization's draw for it (HaBa's hallucinator), the per-sample DSA parameters."""
        t = self.t
        idx = self.next_chunk(t.param.num_slots())
        draw = t.param.slot_draw(idx)
        aug = (self.aug.sample(len(idx), t.ds.im_size, generator=t.gen, device=t.device)
               if self.aug is not None else None)
        return idx, draw, aug

    def student_build(self, record) -> tuple[torch.Tensor, torch.Tensor]:
        """One student step's synthetic ``(images, labels)`` from its record, differentiable in the stored
        parameters."""
        idx, draw, aug = record
        x, y = self.t.param.drawn_slots(idx, draw)
        return (DiffAugment.apply(x, aug) if aug is not None else x), y

    def student_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """A fresh student step's synthetic ``(images, labels)``."""
        return self.student_build(self.student_draw(0))

    def student_logits(self, flat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return functional_call(self.student, unflatten(flat, self.experts.names, self.experts.shapes), (x,))

    def unroll(self, start: torch.Tensor) -> torch.Tensor:
        """``θ̂_N``: ``syn_steps`` SGD steps from ``start`` at ``syn_lr``, differentiable in the stored
        tensors and ``syn_lr`` (by hp ``unroll``'s method)."""
        hp = self.t.hp
        args = (self.student_logits, start, hp["syn_steps"], self.student_draw, self.student_build, self.syn_lr)
        if hp.get("unroll", "reverse") == "autograd":
            return autograd_unroll(*args)
        return unrolled_sgd(*args, 0.0, list(self.t.param.params().values()), pinned=hp.get("unroll_pinned", False),
                            product=hp.get("unroll_product", "forward"))

    def trajectory_loss(self) -> torch.Tensor:
        """Unroll the student from a random expert epoch and return the normalized distance."""
        hp, gen = self.t.hp, self.t.gen
        dev = self.t.device
        traj = self.experts.trajectories[int(torch.randint(len(self.experts), (1,), generator=gen, device=dev))]
        t = int(torch.randint(hp["max_start_epoch"], (1,), generator=gen, device=dev))
        # The experts stay in host memory (100 of them at width 128 are ~6 GB, as in MTT's own
        # buffers): the two vectors an iteration needs are its one host-to-device copy.
        start, target = traj[t].to(dev), traj[t + hp["expert_epochs"]].to(dev)
        return trajectory_matching_loss(self.unroll(start), start, target)

    def step(self) -> float:
        loss = self.trajectory_loss()
        self.t.image_step(loss)
        floor = self.t.hp.get("min_syn_lr")
        if floor is not None:
            with torch.no_grad():
                self.syn_lr.clamp_(min=floor)
        return float(loss.detach())

    def extra_state(self) -> dict:
        return {"chunks": [c.clone() for c in self._chunks]}

    def load_extra_state(self, state: dict) -> None:
        self._chunks = [c.to(self.t.device, copy=True) for c in state.get("chunks", [])]

    def eval_overrides(self) -> dict:
        # Evaluation with the learned student lr (docs/spec.md §0.5).
        return {"lr": float(self.syn_lr.detach())}


def check_unroll_hp(hp: dict) -> None:
    """hp ``unroll`` and ``unroll_product`` (MTT's and HaBa's; checked before any data is loaded)."""
    if hp.get("unroll", "reverse") not in MODES:
        raise ValueError(f"unroll must be one of {MODES}, got {hp['unroll']!r}")
    check_product(hp.get("unroll_product", "forward"), "unroll_product")


def paper(dataset: str, ipc: int, name: str = "paper") -> dict:
    """MTT distill.py defaults (docs/spec.md §3); max_start_epoch 20 as in its README commands;
    experts where ``ddkernels experts`` writes preset ``name``'s."""
    return dict(iterations=5000, lr_img=1000.0, momentum_img=0.5, lr_lr=1e-5, momentum_lr=0.5, lr_teacher=0.01,
                syn_steps=20, expert_epochs=3, max_start_epoch=20, batch_syn=None, init="real", aug=DSA_STRATEGY,
                unroll="reverse", unroll_pinned=False, unroll_product="forward",
                zca=False, expert_dir=default_expert_dir(dataset, name), width=128, batch_real=256,
                eval="dsa", eval_epochs=1000, eval_aug=None, eval_width=None, precision="fp32")


def quick(dataset: str, ipc: int) -> dict:
    # The quick experts (width 32, 8 short epochs): start within their first 4 epochs, match 2.
    return dict(paper(dataset, ipc, "quick"), iterations=100, lr_img=100.0, syn_steps=10, expert_epochs=2,
                max_start_epoch=4, width=32, eval_epochs=300, eval_width=32)


@register
class MTT(Distiller):
    """MTT: :class:`~.parts.PlainImages` × :class:`TrajectoryMatching`; stored ``syn`` (IPC normalized
    images per class, real init) and ``syn_lr``. Experts come from ``ddkernels experts``."""

    method = "mtt"
    PARAMETERIZATION = PlainImages
    OBJECTIVE = TrajectoryMatching
    PRESETS = {"paper": paper, "quick": quick}
    # reverse came later (issue 16), then its forward-mode product
    HP_SINCE = {**Distiller.HP_SINCE, "unroll": "autograd", "unroll_pinned": False, "unroll_product": "backward"}

    @classmethod
    def check_hp(cls, hp: dict) -> None:
        check_unroll_hp(hp)


__all__ = ["MTT", "TrajectoryMatching", "check_unroll_hp", "trajectory_matching_loss"]
