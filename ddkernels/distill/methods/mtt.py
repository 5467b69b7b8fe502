"""MTT: matching training trajectories (Cazenavette et al., CVPR 2022), docs/spec.md §3: the objective
:class:`TrajectoryMatching` (also HaBa's default) and the method MTT (plain images under it).

One outer iteration: draw an expert and a start epoch ``t < max_start_epoch``; start a student at
the expert's parameters ``θ*_t`` (one flat vector); take ``syn_steps`` SGD steps on synthetic
minibatches (per-sample DSA) with the learnable student lr ``syn_lr``, keeping the graph
(``create_graph=True``); the loss is ``‖θ̂_N − θ*_{t+M}‖² / ‖θ*_t − θ*_{t+M}‖²`` with ``M =
expert_epochs``; one step on the images (``lr_img``) and on ``syn_lr`` (``lr_lr``, its own param
group). The student is the run's ConvNet-3 evaluated with ``torch.func.functional_call`` on views of
the flat vector, so no module is copied per step.

Experts come from ``ddkernels experts`` (:mod:`ddkernels.distill.experts`); set hp ``expert_dir``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.func import functional_call

from ..experts import ExpertBuffer, unflatten
from ...nn.convnet import ConvNet
from ..data.zca import zca_reg
from .base import Distiller
from .parts import Objective, PlainImages
from .presets import DSA_STRATEGY, default_expert_dir
from .registry import register


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

    needs = ("slots",)
    class_parallel = False
    not_class_parallel_because = ("every class's images enter one student trajectory (each student step trains "
                                  "on a batch mixing classes; it would need a split over expert trajectories)")

    def init(self) -> None:
        """Experts, the student template, the learnable lr and the augmentation."""
        hp = self.t.hp
        for key in ("syn_steps", "expert_epochs", "max_start_epoch"):
            if isinstance(hp[key], bool) or not isinstance(hp[key], int) or hp[key] < 1:
                raise ValueError(f"{key} must be a positive int, got {hp[key]!r}")
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

    def student_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """One student step's synthetic ``(images, labels)``, differentiable in the stored parameters."""
        return self.t.param.slots(self.next_chunk(self.t.param.num_slots()))

    def student_logits(self, flat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return functional_call(self.student, unflatten(flat, self.experts.names, self.experts.shapes), (x,))

    def trajectory_loss(self) -> torch.Tensor:
        """Unroll the student from a random expert epoch and return the normalized distance."""
        hp, gen = self.t.hp, self.t.gen
        dev = self.t.device
        traj = self.experts.trajectories[int(torch.randint(len(self.experts), (1,), generator=gen, device=dev))]
        t = int(torch.randint(hp["max_start_epoch"], (1,), generator=gen, device=dev))
        # The experts stay in host memory (100 of them at width 128 are ~6 GB, as in MTT's own
        # buffers): the two vectors an iteration needs are its one host-to-device copy.
        start, target = traj[t].to(dev), traj[t + hp["expert_epochs"]].to(dev)
        theta = start.clone().requires_grad_(True)
        for _ in range(hp["syn_steps"]):
            x, y = self.student_batch()
            if self.aug is not None:
                x = self.aug(x, generator=gen)
            ce = F.cross_entropy(self.student_logits(theta, x), y)
            (grad,) = torch.autograd.grad(ce, theta, create_graph=True)
            theta = theta - self.syn_lr * grad
        return trajectory_matching_loss(theta, start, target)

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


def paper(dataset: str, ipc: int, name: str = "paper") -> dict:
    """MTT distill.py defaults (docs/spec.md §3); max_start_epoch 20 as in its README commands;
    experts where ``ddkernels experts`` writes preset ``name``'s."""
    return dict(iterations=5000, lr_img=1000.0, momentum_img=0.5, lr_lr=1e-5, momentum_lr=0.5, lr_teacher=0.01,
                syn_steps=20, expert_epochs=3, max_start_epoch=20, batch_syn=None, init="real", aug=DSA_STRATEGY,
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


__all__ = ["MTT", "TrajectoryMatching", "trajectory_matching_loss"]
