"""RTP, "Remember the Past" (Deng & Russakovsky, NeurIPS 2022), docs/spec.md §5a: addressable memories
(:class:`AddressableMemories`) trained by back-propagation through an unrolled inner loop of momentum
SGD (:class:`BPTT`).

The synthetic set is :class:`ddkernels.nn.AddressableMemory`: ``K`` bases and ``C·r`` class-major
addressing rows, ``r`` filling the IPC budget (docs/spec.md §5a ``cal_ncoef``); row ``c·r + i`` decodes to one
image of class ``c`` (hard labels, as in the official code; hp ``label_mode`` ``"soft"`` learns a label
distribution per row, ``"embedding"`` a code per class that addresses the memory, see
:mod:`ddkernels.nn.memory`). One outer iteration:

1. a fresh ConvNet ``θ_0``; ``T`` steps of momentum SGD (``v ← μv + g``, ``θ ← θ − ηv``, PyTorch's
   form), step ``t`` on ``batch_syn`` random rows per class; the weights ``θ_t`` before every step
   go into one ``(T, P)`` buffer on the weights' device (the original deep-copies the module to
   the CPU each step); with ``label_mode="soft"`` a step's loss is the soft-target cross-entropy
   on the rows' label distributions;
2. meta loss ``L = CE(f(θ_T; real), y)`` on ``batch_real`` real images per class;
3. the reverse pass (:func:`bptt_meta_gradient`, the shared one of :mod:`.unroll`): for
   ``t = T−1 … 0``, with ``v̄`` the adjoint of the momentum buffer and ``w̄`` that of the weights,
   ``v̄ ← μv̄ − ηw̄``; recompute step ``t``'s loss from the snapshot and the memory, ``g_t = ∇_θ ℓ_t`` with a graph, and one mixed
   second-derivative product ``∂⟨g_t, v̄⟩/∂(bases, rows, labels, θ_t)`` gives the memory's gradient and
   ``w̄ += ∂⟨g_t, v̄⟩/∂θ_t``. Memory is one step's graph plus the snapshot buffer.
4. ``clip_grad_norm_`` (max 2) over all stored tensors and an SGD step (lr 0.1, momentum 0.5).

The decode upsamples the ``K`` bases once per pass and writes the images with one GEMM; the reverse
pass accumulates the gradient of the upsampled bases over all ``T`` steps and applies the
upsample's adjoint once. ``backend="reference"`` uses the original order instead (GEMM at low
resolution, then upsample every image, every step); RTP calls no other ``ddkernels`` op, so that is
the only thing ``backend`` switches.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from ...nn.memory import (AddressableMemory, addressable_decode, check_label_mode, rows_for_budget,
                          upsample_bases)
from .base import Distiller
from .parts import Objective, Parameterization
from .registry import register
from .unroll import FlatParams, check_product, unroll_forward, unroll_reverse


def unroll_momentum_sgd(f: Callable, theta0: torch.Tensor, batches: Callable[[int], tuple[torch.Tensor, torch.Tensor]],
                        steps: int, lr: float, momentum: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``steps`` of momentum SGD on ``CE(f(θ, x_t), y_t)`` from ``θ_0`` without a graph
    (:func:`~.unroll.unroll_forward` with ``batches(t) -> (x_t, y_t)``, detached).

    Returns:
        ``(θ_T, snapshots)`` with ``snapshots[t] = θ_t``, the weights before step ``t``, one
        ``(steps, P)`` buffer on ``θ_0``'s device.
    """
    theta, tape = unroll_forward(f, theta0, steps, lambda t: t, batches, lr, momentum)
    return theta, tape.weights


def bptt_meta_gradient(f: Callable, theta0: torch.Tensor, memory: AddressableMemory, rows: torch.Tensor,
                       real_x: torch.Tensor, real_y: torch.Tensor, *, lr: float, momentum: float,
                       upsample_first: bool = True, pinned: bool = False,
                       product: str = "forward") -> tuple[torch.Tensor, ...]:
    """RTP's meta-gradient of ``L = CE(f(θ_T; real_x), real_y)`` w.r.t. the memory's stored tensors.

    ``θ_T`` is ``len(rows)`` steps of momentum SGD (lr ``lr``, momentum ``momentum``) from ``θ_0``,
    step ``t`` on the decoded rows ``rows[t]`` with their targets (:meth:`AddressableMemory.targets`:
    class labels, or with ``label_mode="soft"`` the rows' label distributions, the step's loss then
    the soft-target cross-entropy ``−Σ_c q_c log softmax(z)_c``); the gradient is the shared reverse
    pass (:mod:`.unroll`, docs/spec.md §5a ``bptt_efficient_backward``) with the record of step ``t``
    its index into ``rows``. Every stored tensor is an input of the reverse pass, so the learned
    labels (logits, codes) get the exact meta-gradient like the bases and the addressing.

    Args:
        f: ``f(θ, x) -> logits`` for a flat ``θ`` (e.g. :class:`~.unroll.FlatParams`).
        theta0: ``(P,)`` initial weights.
        memory: the addressable memory (its tables are read, never modified).
        rows: int64 ``(T, N_b)``, the addressing rows of each inner step.
        real_x, real_y: the meta batch.
        upsample_first: decode with the upsampled bases (one GEMM); ``False`` uses the original order.
        pinned: the weight buffer in pinned host memory (:func:`~.unroll.unroll_forward`).
        product: how the reverse takes each step's second-derivative product (:func:`~.unroll.unroll_reverse`).

    Returns:
        ``(L, dL/d bases, dL/d addressing, …)``: one gradient per tensor of :meth:`AddressableMemory.tables`,
        in its order and shaped like it (``"soft"`` adds ``label_logits``, ``"embedding"`` ``label_codes``).
    """
    if rows.dim() != 2:
        raise ValueError(f"rows must be 2-D (T, N_b) (one row set per inner step), got shape {tuple(rows.shape)}")
    check_product(product)  # before the forward sweep
    memory._check_rows(rows)  # once; the steps index unchecked
    steps = rows.shape[0]
    shape, ds = memory.image_shape, memory.downsample
    bases = memory.bases.detach()
    leaves = {k: v.detach().clone().requires_grad_(True) for k, v in memory.tables().items() if k != "bases"}
    # The decode's bases operand: the upsampled bases (a leaf whose gradient is accumulated over all
    # steps, then pulled back through the upsample once) or, for the original order, the bases.
    operand = (upsample_bases(bases, shape, ds) if upsample_first else bases).clone().requires_grad_(True)

    def build(t):
        coeffs = memory.coefficients(rows[t], leaves, checked=False)
        y = memory.targets(rows[t], leaves, checked=False)
        if upsample_first:
            return (coeffs @ operand).view(-1, *shape), y
        return addressable_decode(operand, coeffs, shape, ds, upsample_first=False), y

    # θ_0's own terms are skipped (a fresh network's weights need no gradient). The forward keeps the last
    # step's graph (no recompute, no peak cost) with the forward-mode product only: with the double
    # backward, runs keep the numbers they were written with, bit for bit (a kept step rounds differently).
    keep = int(product == "forward")
    theta_T, tape = unroll_forward(f, theta0, steps, lambda t: t, build, lr, momentum, pinned=pinned, keep=keep)
    th = theta_T.requires_grad_(True)
    loss = F.cross_entropy(f(th, real_x), real_y)
    (w_bar,) = torch.autograd.grad(loss, th)
    g_operand, *g_rest = unroll_reverse(tape, w_bar, [operand, *leaves.values()], product=product,
                                        theta_grad=False).inputs
    if upsample_first and ds > 1:
        leaf = bases.clone().requires_grad_(True)
        (g_bases,) = torch.autograd.grad(upsample_bases(leaf, shape, ds), leaf, grad_outputs=g_operand)
    else:
        g_bases = g_operand
    return (loss.detach(), g_bases, *g_rest)


def check_label_hp(hp: dict) -> None:
    """``label_mode``, ``label_dim`` and ``lr_label`` (a positive number, only for a mode that learns labels)."""
    mode = hp.get("label_mode", "onehot")
    check_label_mode(mode, hp.get("label_dim"))
    lr = hp.get("lr_label")
    if lr is not None:
        if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr > 0:
            raise ValueError(f"lr_label must be a positive number or None (lr_syn), got {lr!r}")
        if mode == "onehot":
            raise ValueError("lr_label is the learned labels' step size: it needs label_mode 'soft' or 'embedding'")


class AddressableMemories(Parameterization):
    """:class:`ddkernels.nn.AddressableMemory` as the stored set: ``bases`` (shared) and ``addressing``
    (class-major rows, one decoded image each); hp ``num_bases``, ``downsample``, ``rows_per_class``
    (``None``: what the budget leaves), ``init`` (``"xavier"``, RTP's, or ``"real"``: a rank-K fit of
    one real image per row), ``lr_syn``, ``momentum_syn``, ``label_mode`` (``"onehot"``: hard labels,
    the official code; ``"soft"``: a learned label distribution per row, BPTT only; ``"embedding"``: a
    learned ``label_dim``-dimensional code per class addresses the memory; see
    :mod:`ddkernels.nn.memory`), ``label_dim`` (``None``: the number of classes) and ``lr_label`` (the
    label tensors' step size; ``None``: ``lr_syn``). The label tensors are stored, counted against the
    budget and trained by the same meta-gradient and optimizer."""

    stored_space = "normalized (bases × addressing; decode with ddkernels.nn.AddressableMemory)"
    #: ``synthetic.png`` already shows every addressing row decoded (one image per stored row)
    decodes = False
    class_parallel = False
    not_class_parallel_because = "its bases are shared by every class and enter every class's images"

    @property
    def per_class_params(self) -> tuple[str, ...]:
        mode = self.t.hp.get("label_mode", "onehot")
        return {"onehot": ("addressing",), "soft": ("addressing", "label_logits"),
                "embedding": ("label_codes",)}.get(mode, ("addressing",))

    def init(self) -> None:
        t, hp = self.t, self.t.hp
        mode, label_dim = hp.get("label_mode", "onehot"), hp.get("label_dim")
        check_label_hp(hp)  # before any work
        if mode == "soft" and not isinstance(t.objective, BPTT):
            raise ValueError(f"label_mode='soft' learns the labels through BPTT's inner loop; objective "
                             f"{type(t.objective).__name__} does not train on the stored labels (use 'onehot' or "
                             f"'embedding')")
        shape = (t.ds.channels, *t.ds.im_size)
        k, ds = hp["num_bases"], hp["downsample"]
        budget_r = rows_for_budget(t.ipc, t.num_classes, shape, k, ds, label_mode=mode, label_dim=label_dim)
        r = hp["rows_per_class"] if hp["rows_per_class"] is not None else budget_r
        if not isinstance(r, int) or isinstance(r, bool) or not 1 <= r <= budget_r:
            raise ValueError(f"rows_per_class must be an int in [1, {budget_r}] (what the budget of ipc={t.ipc} "
                             f"leaves after {k} bases with label_mode={mode!r}), or None for the budget's maximum; "
                             f"got {r!r}")
        if hp["init"] not in ("xavier", "real"):
            raise ValueError(f"init must be 'xavier' (RTP) or 'real' (rank-K fit of real images), got {hp['init']!r}")
        self.memory = AddressableMemory(t.num_classes, k, r, shape, ds, label_mode=mode, label_dim=label_dim,
                                        generator=t.gen, device=t.device)
        if hp["init"] == "real":
            t.sampler.check(r, "rows_per_class (init='real' draws one real image per row)")
            idx = t.sampler.indices_all(r, t.gen).flatten()
            self.memory.init_from_images(t.ds.normalize(t.ds.train_x[idx]))

    def params(self):
        return dict(self.memory.tables())

    def param_groups(self):
        hp = self.t.hp
        tables = self.memory.tables()
        if hp.get("lr_label") is None:  # one group, the label tensors (if any) at lr_syn
            return [{"params": list(tables.values()), "lr": hp["lr_syn"], "momentum": hp["momentum_syn"]}]
        # The labels' meta-gradient is orders of magnitude smaller than the bases' (docs/results.md,
        # RTP label modes): their own step size lets them move within a short run.
        labels = [v for k, v in tables.items() if k.startswith("label_")]
        return [{"params": [tables["bases"], tables["addressing"]], "lr": hp["lr_syn"], "momentum": hp["momentum_syn"]},
                {"params": labels, "lr": hp["lr_label"], "momentum": hp["momentum_syn"]}]

    def stored_labels(self):
        return self.memory.labels()  # the class of each addressing row

    @property
    def upsample_first(self) -> bool:
        return self.t.backend != "reference"

    def decoded(self) -> torch.Tensor:
        """Every addressing row decoded (class-major), differentiable in the stored tensors."""
        return self.memory.decode(upsample_first=self.upsample_first)

    def class_batches(self, classes):
        x = self.decoded()
        return [self.t.class_rows(x, c, self.memory.rows_per_class) for c in classes]

    def drawn_slots(self, idx, draw):
        return self.decoded()[idx], self.t.labels[idx]

    def training_set(self):
        """The decoded rows and their targets: int64 class labels, or ``(C·r, C)`` float label
        distributions with ``label_mode="soft"`` (the evaluation then trains on them, soft-target CE)."""
        with torch.no_grad():
            y = self.memory.targets() if self.memory.label_mode == "soft" else self.t.labels
            return self.decoded().detach().clone(), y.detach().clone()

    def pixel_images(self):
        return self.t.ds.denormalize(self.training_set()[0]).clamp(0, 1)


class BPTT(Objective):
    """RTP's outer iteration (see the module doc): a fresh network, ``inner_steps`` of momentum SGD
    (``inner_lr``, ``inner_momentum``) on ``batch_syn`` random addressing rows per class, the meta
    loss on ``batch_real`` real images per class, its gradient by :func:`bptt_meta_gradient`, the
    gradient norm clipped to hp ``clip``, one optimizer step. The reverse pass recomputes each
    step from the memory, so it needs :class:`AddressableMemories`."""

    needs = ()
    parameterizations = (AddressableMemories,)
    class_parallel = False
    not_class_parallel_because = ("its meta-gradient flows through one unrolled training of a network on batches "
                                  "of all classes (it would need a split of the inner loop's batches)")

    def step(self) -> float:
        t, hp = self.t, self.t.hp
        memory = t.param.memory
        f = FlatParams(t.fresh_net())
        real_idx = t.sampler.indices_all(t.batch_real, t.gen).flatten()
        real_x, real_y = t.ds.normalize(t.ds.train_x[real_idx]), t.ds.train_y[real_idx]
        rows = torch.stack([memory.sample_rows(hp["batch_syn"], t.gen) for _ in range(hp["inner_steps"])])
        loss, *grads = bptt_meta_gradient(
            f, f.flat(), memory, rows, real_x, real_y, lr=hp["inner_lr"], momentum=hp["inner_momentum"],
            upsample_first=t.param.upsample_first, product=hp.get("unroll_product", "forward"))
        params = list(memory.tables().values())
        for p, g in zip(params, grads):
            p.grad = g
        if hp["clip"]:
            torch.nn.utils.clip_grad_norm_(params, max_norm=hp["clip"])
        t.opt.step()
        for p in params:
            p.grad = None
        return float(loss)


def paper(dataset: str, ipc: int) -> dict:
    """docs/spec.md §5b: K = 16 bases at half resolution, r from the budget, T = 150 inner steps of SGD(0.01,
    momentum 0.9) on 32 rows per class, 64 real images per class in the meta loss, outer SGD(0.1,
    momentum 0.5) after clipping the gradient norm to 2, 500k outer iterations (the config's n_iters); one-hot
    labels (the official code's; ``label_mode`` ``"soft"``/``"embedding"`` are this library's options)."""
    return dict(iterations=500000, num_bases=16, downsample=2, rows_per_class=None, init="xavier", inner_steps=150,
                inner_lr=0.01, inner_momentum=0.9, batch_syn=32, batch_real=64, lr_syn=0.1, momentum_syn=0.5,
                clip=2.0, width=128, eval="rtp", eval_epochs=300, eval_aug=None, eval_width=None,
                precision="fp32", label_mode="onehot", label_dim=None, lr_label=None, unroll_product="forward")


def quick(dataset: str, ipc: int) -> dict:
    # CPU-sized (evaluation cost grows with the C·r decoded images): more bases, so fewer rows; a
    # real warm start; T = 10 steps on 6 rows; IPC < 10 half-resolution, IPC ≥ 10 full-resolution bases.
    hp = paper(dataset, ipc)
    if ipc < 10:
        hp.update(iterations=40, num_bases=30, lr_syn=3.0)
    else:
        hp.update(iterations=20, num_bases=80, downsample=1, lr_syn=0.3)
    if dataset == "digits":
        hp.update(num_bases=4)
    hp.update(init="real", inner_steps=10, batch_syn=6, batch_real=20, width=32, eval_width=32)
    return hp


@register
class RTP(Distiller):
    """RTP: :class:`AddressableMemories` × :class:`BPTT`; decoded training set of ``C·r`` images with
    hard labels."""

    method = "rtp"
    PARAMETERIZATION = AddressableMemories
    OBJECTIVE = BPTT
    PRESETS = {"paper": paper, "quick": quick}
    # learned labels came later (issue 20), then the reverse pass's forward-mode product (issue 16)
    HP_SINCE = {**Distiller.HP_SINCE, "label_mode": "onehot", "label_dim": None, "lr_label": None,
                "unroll_product": "backward"}

    @classmethod
    def check_hp(cls, hp: dict) -> None:
        check_label_hp(hp)
        check_product(hp.get("unroll_product", "forward"), "unroll_product")


__all__ = ["AddressableMemories", "BPTT", "FlatParams", "RTP", "bptt_meta_gradient", "unroll_momentum_sgd"]
