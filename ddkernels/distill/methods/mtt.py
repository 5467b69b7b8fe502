"""MTT: matching training trajectories (Cazenavette et al., CVPR 2022), docs/spec.md §3; the base of HaBa.

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


def trajectory_matching_loss(student: torch.Tensor, start: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``‖student − target‖² / ‖start − target‖²`` (MTT; both sums over every parameter)."""
    return ((student - target) ** 2).sum() / ((start - target) ** 2).sum()


class MTT(Distiller):
    """Trajectory matching with a functional student on a flat parameter vector (see module doc).

    Stored: ``syn`` (IPC normalized images per class, real init) and ``syn_lr`` (the learned student
    lr, one float, also the evaluation lr). ``extra_state`` holds the pending minibatch chunks (MTT
    pops chunks of a random permutation and draws a new one when they run out).
    """

    method = "mtt"
    not_class_parallel_because = ("every class's images enter one student trajectory (each student step trains "
                                  "on a batch mixing classes; it would need a split over expert trajectories)")

    def init_synthetic(self) -> None:
        hp = self.hp
        self.init_student()
        syn = self.initial_images(self.ipc)
        self.syn = syn.clone().requires_grad_(True)
        self.opt = torch.optim.SGD([{"params": [self.syn], "lr": hp["lr_img"], "momentum": hp["momentum_img"]},
                                    self.lr_group()])

    # -- pieces HaBa shares ------------------------------------------------------------------------
    def init_student(self) -> None:
        """Experts, the student template, the learnable lr and the augmentation."""
        hp = self.hp
        for key in ("syn_steps", "expert_epochs", "max_start_epoch"):
            if isinstance(hp[key], bool) or not isinstance(hp[key], int) or hp[key] < 1:
                raise ValueError(f"{key} must be a positive int, got {hp[key]!r}")
        self.experts = ExpertBuffer(hp["expert_dir"], dataset=self.ds.name, width=hp["width"],
                                    min_epochs=hp["max_start_epoch"] + hp["expert_epochs"],
                                    zca=zca_reg(hp.get("zca", False)), data_dir=self.ds.data_dir)
        self.student = ConvNet(self.ds.channels, self.num_classes, width=hp["width"], im_size=self.ds.im_size,
                               backend=self.backend)
        names = [k for k, _ in self.student.named_parameters()]
        if names != self.experts.names:
            raise ValueError(f"experts in {hp['expert_dir']!r} have parameters {self.experts.names}, "
                             f"the student has {names}")
        self.student.requires_grad_(False)
        self.syn_lr = torch.tensor(float(hp["lr_teacher"])).requires_grad_(True)
        self.aug = self.augment(hp["aug"])
        self._chunks: list[torch.Tensor] = []

    def lr_group(self) -> dict:
        return {"params": [self.syn_lr], "lr": self.hp["lr_lr"], "momentum": self.hp["momentum_lr"]}

    def next_chunk(self, n: int) -> torch.Tensor:
        """The next minibatch of ``n`` slots (``batch_syn`` of them; all when it is null)."""
        if not self._chunks:
            bs = self.hp["batch_syn"] or n
            self._chunks = list(torch.randperm(n, generator=self.gen).split(bs))
        return self._chunks.pop()

    def student_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """One student step's synthetic ``(images, labels)``, differentiable in the stored parameters."""
        idx = self.next_chunk(len(self.syn))
        return self.syn[idx], self.labels[idx]

    def student_logits(self, flat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return functional_call(self.student, unflatten(flat, self.experts.names, self.experts.shapes), (x,))

    def trajectory_loss(self) -> torch.Tensor:
        """Unroll the student from a random expert epoch and return the normalized distance."""
        hp = self.hp
        traj = self.experts.trajectories[int(torch.randint(len(self.experts), (1,), generator=self.gen))]
        t = int(torch.randint(hp["max_start_epoch"], (1,), generator=self.gen))
        start, target = traj[t], traj[t + hp["expert_epochs"]]
        theta = start.clone().requires_grad_(True)
        for _ in range(hp["syn_steps"]):
            x, y = self.student_batch()
            if self.aug is not None:
                x = self.aug(x, generator=self.gen)
            ce = F.cross_entropy(self.student_logits(theta, x), y)
            (grad,) = torch.autograd.grad(ce, theta, create_graph=True)
            theta = theta - self.syn_lr * grad
        return trajectory_matching_loss(theta, start, target)

    # -- Distiller -----------------------------------------------------------------------------------
    def step(self) -> float:
        loss = self.trajectory_loss()
        self.image_step(loss)
        return float(loss.detach())

    def synthetic_params(self) -> dict[str, torch.Tensor]:
        return {"syn": self.syn, "syn_lr": self.syn_lr}

    def extra_state(self) -> dict:
        return {"chunks": [c.clone() for c in self._chunks]}

    def load_extra_state(self, state: dict) -> None:
        self._chunks = [c.clone() for c in state.get("chunks", [])]

    def eval_overrides(self) -> dict:
        # MTT and HaBa evaluate with the learned student lr (docs/spec.md §0.5).
        return {"lr": float(self.syn_lr.detach())}

    def training_set(self):
        return self.syn.detach().clone(), self.labels.clone()

    def pixel_images(self):
        return self.ds.denormalize(self.syn.detach()).clamp(0, 1)


__all__ = ["MTT", "trajectory_matching_loss"]
