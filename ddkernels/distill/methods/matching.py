"""Gradient matching, the objective of DC, DSA and IDC (docs/spec.md §1a "Matching loss", §2a ``match_loss``).

For each class: the network's parameter gradients on real images (detached) and on synthetic images
(``create_graph=True``, so the distance backpropagates into the synthetic images); then one
:func:`ddkernels.grad_distance` call over all classes and layers at once (``batched=True``).
:class:`GradientMatching` runs DC's schedule (the network trains on the synthetic set between
matching steps), :class:`RealNetGradientMatching` IDC's (it trains on real data); both take their
synthetic batches from any parameterization's ``class_batches``.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from .. import precision as amp
from ..data.augment import cutmix, cutmix_loss
from ...ops.grad_distance import grad_distance, stack_classes
from .parts import Objective

LAYERS = ("all", "weights", "conv")


def matched_params(net: torch.nn.Module, layers: str) -> list[torch.nn.Parameter]:
    """Parameters whose gradients are matched.

    ``"all"``: every parameter (DC with ``mse``/``global_cos``); ``"weights"``: tensors of 2 or more
    dims (DC ``ours``, where 1-D tensors contribute exactly 0, so skipping them changes nothing but
    the cost); ``"conv"``: 4-D conv weights only (IDC's default, ``--bias False --fc False``).
    """
    if layers not in LAYERS:
        raise ValueError(f"layers must be one of {LAYERS}, got {layers!r}")
    min_dim = {"all": 1, "weights": 2, "conv": 4}[layers]
    return [p for p in net.parameters() if p.dim() >= min_dim]


def class_gradients(net: torch.nn.Module, params: Sequence[torch.Tensor], x: torch.Tensor, label: int,
                    create_graph: bool) -> tuple[torch.Tensor, ...]:
    """∇_params CE(net(x), label) for a batch of one class."""
    y = torch.full((x.shape[0],), label, dtype=torch.long, device=x.device)
    return torch.autograd.grad(F.cross_entropy(net(x), y), params, create_graph=create_graph)


def gradient_match(net: torch.nn.Module, params: Sequence[torch.Tensor], real: Sequence[torch.Tensor],
                   syn: Sequence[torch.Tensor], classes: Sequence[int], metric: str, backend: str = "auto") -> torch.Tensor:
    """Per-class gradient-matching distances.

    Args:
        net: the network (its parameters are not updated here).
        params: the parameters to match (see :func:`matched_params`).
        real: per class, an (augmented, normalized) real batch ``(n_real, C, H, W)``.
        syn: per class, the synthetic batch, differentiable in the synthetic parameters.
        classes: the label of each entry.
        metric: a :func:`ddkernels.grad_distance` metric.
        backend: passed to :func:`ddkernels.grad_distance`.

    Returns:
        ``(K,)`` distances, differentiable in ``syn``.
    """
    g_real = [[g.detach() for g in class_gradients(net, params, x, c, False)] for x, c in zip(real, classes)]
    g_syn = [class_gradients(net, params, x, c, True) for x, c in zip(syn, classes)]
    return grad_distance(stack_classes(g_syn), stack_classes(g_real), metric, batched=True, backend=backend)


class GradientMatching(Objective):
    """DC's outer iteration (VICO ``main.py``): a fresh network; ``outer_loop`` times: match every
    class (one batched distance call), one step on the stored tensors after summing over classes, then
    (but after the last) ``inner_loop`` epochs of training the network (SGD ``lr_net``) on the current
    training set, per-sample augmentation. hp ``aug`` is the Siamese augmentation of the matching
    (DSA; ``""``: none, DC) and the per-sample one of the network training; ``metric``, ``layers``,
    ``batch_train``. Returns the mean matching loss over the outer loop.

    Class-parallel: each rank matches its classes; the inner training of the shared network on the
    whole synthetic set sums its gradients over ranks (see :meth:`Distiller.train_net`).
    """

    def init(self):
        self.aug = self.t.augment(self.t.hp["aug"])

    def match(self, net, params, classes: list[int], aug) -> torch.Tensor:
        """Per-class distances: the classes' synthetic batches, then per class a real batch and one
        Siamese augmentation of both (the class's stream)."""
        t = self.t
        pairs = [t.siamese(aug, t.real_batch(c), s, c=c) for c, s in zip(classes, t.param.class_batches(classes))]
        return gradient_match(net, params, [p[0] for p in pairs], [p[1] for p in pairs], classes, t.hp["metric"],
                              t.backend)

    def step(self) -> float:
        t, hp = self.t, self.t.hp
        net = t.fresh_net()
        params = matched_params(net, hp["layers"])
        net_opt = torch.optim.SGD(net.parameters(), lr=hp["lr_net"])
        outer, inner = hp["outer_loop"], hp["inner_loop"]
        total = 0.0
        for ol in range(outer):
            loss = self.match(net, params, t.classes, self.aug).sum()
            t.image_step(loss)
            total += float(loss.detach())
            if ol == outer - 1:
                break
            t.train_net(net, net_opt, *t.param.training_set(), inner, hp["batch_train"], self.aug)
        return total / outer


class RealNetGradientMatching(GradientMatching):
    """IDC's outer iteration (docs/spec.md §1a): a fresh network (SGD ``lr_net``, momentum 0.9, weight
    decay 5e-4), then ``inner_loop`` times: gradient matching (hp ``aug_match``, IDC's DiffAug with one
    parameter set per class) and training the network on ``n_data`` real images (``aug_net`` per
    sample, CutMix ``cutmix_p``). ``class_steps``: ``"sequential"`` (IDC: one step per class, in class
    order) or ``"batched"`` (all classes in one distance call and one step). Returns the mean loss per
    class.

    Class-parallel: the network trained on real data is shared: every rank draws its part of each
    ``batch_net`` batch from its own classes (:meth:`Distiller.local_share`) and the gradients are
    summed over ranks, so the network stays identical on every rank.
    """

    loss_over_classes = "mean"

    def init(self):
        hp = self.t.hp
        self.match_aug = self.t.augment(hp["aug_match"], mode="idc")
        self.net_aug = self.t.augment(hp["aug_net"], mode="idc")

    def step(self) -> float:
        t, hp = self.t, self.t.hp
        net = t.fresh_net()
        params = matched_params(net, hp["layers"])
        net_opt = torch.optim.SGD(net.parameters(), lr=hp["lr_net"], momentum=0.9, weight_decay=5e-4)
        total, count = 0.0, 0
        self.net = net  # the last outer iteration's network, kept for inspection (shared on every rank)
        classes = t.classes
        for _ in range(hp["inner_loop"]):
            if hp["class_steps"] == "sequential":
                for c in classes:
                    loss = self.match(net, params, [c], self.match_aug).sum()
                    t.image_step(loss)
                    total, count = total + float(loss.detach()), count + 1
            else:
                loss = self.match(net, params, classes, self.match_aug)
                t.image_step(loss.sum())
                total, count = total + float(loss.sum().detach()), count + len(classes)
            self.train_on_real(net, net_opt)
        return total / count

    def train_on_real(self, net, opt) -> None:
        t, hp = self.t, self.t.hp
        # On a shard: this rank's part of each batch, from its classes; losses scaled by part/batch so
        # the gradients summed over ranks are the whole batch's.
        pool = t.local_pool() if t.shard is not None else None
        n_local = t.local_share(hp["batch_net"])
        for _ in range(max(1, hp["n_data"] // hp["batch_net"])):
            opt.zero_grad(set_to_none=True)
            if n_local:
                if pool is None:
                    idx = torch.randint(len(t.ds.train_y), (n_local,), generator=t.gen, device=t.device)
                else:
                    idx = pool[torch.randint(len(pool), (n_local,), generator=t.rank_gen, device=t.device)]
                x, y = t.ds.normalize(t.ds.train_x[idx]), t.ds.train_y[idx]
                if self.net_aug is not None:
                    x = self.net_aug(x, generator=t.rank_gen)
                x, y, y_b, ratio = cutmix(x, y, prob=hp["cutmix_p"], generator=t.rank_gen)
                amp.scaled(cutmix_loss(net(x), y, y_b, ratio) * (n_local / hp["batch_net"]), t.net_scaler).backward()
            t.sum_grads(net.parameters())
            amp.step(opt, t.net_scaler)


__all__ = ["GradientMatching", "LAYERS", "RealNetGradientMatching", "class_gradients", "gradient_match",
           "matched_params"]
