"""The two halves of every trainer: a **parameterization** (the stored tensors and how they decode into
training images) and an **objective** (the loss of one outer iteration on the decoded images, and the
steps it takes). A method (:mod:`.registry`) names one of each; any parameterization runs under any
objective whose needs it meets (:attr:`Objective.needs`).

Both are bound to their trainer (``self.t``: hyperparameters, random streams, classes, real data,
:meth:`~ddkernels.distill.methods.Distiller.image_step`) and keep their own state; the trainer reads
their attributes through (``trainer.syn``, ``trainer.syn_lr``, …).
"""
from __future__ import annotations

import torch


class _Part:
    #: whether the classes can be split over ranks, and if not why (see :class:`~ddkernels.distill.methods.Distiller`)
    class_parallel = True
    not_class_parallel_because = ""

    def __init__(self, trainer):
        self.t = trainer

    def init(self) -> None:
        """Create the state (draws from the trainer's streams happen here, in a fixed order)."""

    def params(self) -> dict[str, torch.Tensor]:
        """Stored tensors by name (checkpointed, saved, counted against the budget)."""
        return {}

    def param_groups(self) -> list[dict]:
        """Optimizer param groups over :meth:`params` (lr/momentum per group)."""
        return []

    def replace(self, params: dict[str, torch.Tensor]) -> None:
        """Set the stored tensors by name (the gathered view of a class-parallel run)."""
        for k, v in params.items():
            setattr(self, k, v)

    def extra_state(self) -> dict:
        return {}

    def load_extra_state(self, state: dict) -> None:
        pass

    def eval_overrides(self) -> dict:
        return {}

    def bound_to(self, trainer) -> "_Part":
        """A shallow copy working for ``trainer`` (a view of the one this part belongs to)."""
        new = object.__new__(type(self))
        new.__dict__.update(self.__dict__)
        new.t = trainer
        return new


class Parameterization(_Part):
    """How the stored tensors decode into training images. Subclasses implement :meth:`init`,
    :meth:`params`, :meth:`param_groups`, :meth:`training_set`, :meth:`pixel_images` and, for the
    objectives they serve, :meth:`class_batches` (per-class objectives) and :meth:`slots` (trajectory
    matching's student batches)."""

    #: how the stored tensors are to be read, saved in ``synthetic.pt``
    stored_space = "normalized"
    #: whether the training set is decoded from the stored tensors (then ``decoded.png`` is written)
    decodes = False
    #: names in :meth:`params` whose first dim is class-major (see ``Distiller.per_class_params``)
    per_class_params: tuple[str, ...] = ()
    #: the optimizer over :meth:`param_groups` plus the objective's
    optimizer = torch.optim.SGD

    def rows_per_class(self) -> int:
        """Rows per class of the per-class tensors (what :meth:`stored_labels` labels)."""
        return self.t.ipc

    def stored_labels(self) -> torch.Tensor:
        return torch.tensor(self.t.classes, dtype=torch.int64, device=self.t.device).repeat_interleave(
            self.rows_per_class())

    def class_batches(self, classes: list[int]) -> list[torch.Tensor]:
        """Per class in ``classes`` (owned ones), its current normalized synthetic batch, differentiable
        in the stored tensors; called again after every step."""
        raise NotImplementedError(f"{type(self).__name__} gives no per-class batches")

    def num_slots(self) -> int:
        """How many slots :meth:`slots` indexes (a student epoch's worth)."""
        return len(self.t.labels)

    def slots(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The images and labels of slots ``idx``, differentiable in the stored tensors."""
        return self.drawn_slots(idx, self.slot_draw(idx))

    def slot_draw(self, idx: torch.Tensor):
        """The random choices :meth:`slots` makes for ``idx``, drawn now (``None``: it makes none), so
        an unroll's reverse pass can rebuild the same batch (:mod:`.unroll`)."""
        return None

    def drawn_slots(self, idx: torch.Tensor, draw) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`slots` with its random choices given (``draw`` from :meth:`slot_draw`)."""
        raise NotImplementedError(f"{type(self).__name__} gives no student batches")

    def training_set(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The training set the stored tensors stand for: normalized images and labels (detached)."""
        raise NotImplementedError

    def pixel_images(self) -> torch.Tensor:
        """The stored images in [0, 1] for viewing (one per stored slot)."""
        raise NotImplementedError

    def before_step(self) -> None:
        """Called at the start of every outer iteration."""

    def regularizer(self) -> torch.Tensor | None:
        """A term added to the loss of every step on the stored tensors (``None``: none)."""
        return None

    def after_step(self) -> None:
        """Called after the objective's outer iteration."""


class Objective(_Part):
    """The loss of one outer iteration and the steps it takes on the stored tensors
    (``self.t.image_step``). Subclasses implement :meth:`step`."""

    #: the :class:`Parameterization` methods it calls (checked when a trainer is built)
    needs: tuple[str, ...] = ("class_batches",)
    #: the parameterizations it works with (``None``: any that gives what :attr:`needs` names)
    parameterizations: tuple[type, ...] | None = None
    #: how :meth:`step`'s loss combines over classes ("sum" or "mean"), to report one loss over all ranks
    loss_over_classes = "sum"

    def step(self) -> float:
        raise NotImplementedError

    def stored_floats(self) -> int:
        """Floats the objective stores itself (counted in a parameterization's budget)."""
        return 0


class PlainImages(Parameterization):
    """``ipc`` images per class in normalized space, one leaf ``syn`` (DC, DSA, DM, MTT); hp ``init``
    (``"real"``/``"noise"``), ``lr_img``, ``momentum_img``."""

    per_class_params = ("syn",)

    def init(self) -> None:
        self.syn = self.t.initial_images(self.t.ipc).clone().requires_grad_(True)

    def params(self):
        return {"syn": self.syn}

    def param_groups(self):
        return [{"params": [self.syn], "lr": self.t.hp["lr_img"], "momentum": self.t.hp["momentum_img"]}]

    def class_batches(self, classes):
        return [self.t.class_rows(self.syn, c) for c in classes]

    def num_slots(self):
        return len(self.syn)

    def drawn_slots(self, idx, draw):
        return self.syn[idx], self.t.labels[idx]

    def training_set(self):
        return self.syn.detach().clone(), self.t.labels.clone()

    def pixel_images(self):
        return self.t.ds.denormalize(self.syn.detach()).clamp(0, 1)


__all__ = ["Objective", "Parameterization", "PlainImages"]
