"""What every trainer shares: synthetic tensors, their optimizer, the RNG, state for checkpoints."""
from __future__ import annotations

import copy
import time

import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..data.augment import DiffAugment, strategy_for
from ..data import ClassSampler, Dataset
from ..distributed import Shard
from ...nn.convnet import ConvNet
from ..data.zca import zca_reg


class Distiller:
    """Base class of the trainers. Subclasses set :attr:`method`, create the synthetic parameters
    and ``self.opt`` (one optimizer over all of them; param groups for separate learning rates) in
    :meth:`init_synthetic`, and implement :meth:`step` (one outer iteration, returning its loss),
    :meth:`training_set` and :meth:`pixel_images`.

    Plain-image methods store one leaf tensor ``self.syn``. Factorized methods override
    :meth:`synthetic_params` (every stored tensor, by name: what is checkpointed, saved and counted
    against the storage budget) and, for state that is not stored in the synthetic set (a feature
    extractor, an auxiliary optimizer), :meth:`extra_state` / :meth:`load_extra_state`.

    All randomness (real batches, augmentation, network initialisation) comes from one
    ``torch.Generator`` seeded with ``seed``, so :meth:`state_dict` captures a run completely.

    Hyperparameter ``zca`` (False, True or a regularization) whitens the data first
    (:meth:`ddkernels.distill.data.Dataset.whitened`, fitted on the training images): ``self.ds.normalize``
    then whitens real, synthetic and test images alike.

    Class-parallel runs (:mod:`ddkernels.distill.distributed`): with a ``shard``, the trainer owns only the
    classes :attr:`classes` and holds only their rows of the :attr:`per_class_params` (class-major, in
    the order of :attr:`classes`). A trainer opts in with :attr:`class_parallel` and by drawing its
    randomness from the three streams: :attr:`gen` (shared: identical on every rank, e.g. fresh
    networks), :meth:`class_gen` (one class's real batches, augmentation, initialization) and
    :attr:`rank_gen` (rank-local work on shared parameters); without a shard all three are the one
    generator, so a plain run is what it always was. Gradients of stored tensors that are not
    per-class are summed over ranks in :meth:`image_step` (every rank must then take the same number
    of image steps); networks trained on data of all classes use :meth:`sum_grads`.

    Args:
        dataset: the real data (used as given if it is already whitened).
        ipc: stored synthetic images per class.
        hp: hyperparameters (see :mod:`ddkernels.distill.methods.presets`).
        backend: passed to every ``ddkernels`` op call.
        seed: seeds the generator.
        shard: the classes this process owns in a class-parallel run (``None``: all, one process).
    """

    method = ""
    #: how the stored tensors are to be read, saved in ``synthetic.pt``
    stored_space = "normalized"
    #: whether the training set is decoded from the stored tensors (then ``decoded.png`` is written)
    decodes = False
    #: names in :meth:`synthetic_params` whose first dim is class-major (``num_classes · n`` rows, class
    #: ``c`` owning rows ``c·n … c·n+n-1``; on a shard ``len(classes) · n`` rows in the order of
    #: :attr:`classes`); every other stored tensor is shared by all classes
    per_class_params: tuple[str, ...] = ("syn",)
    #: whether the classes can be split over ranks (see the class docstring)
    class_parallel = False
    #: why not, and what split the method would need instead (shown when a launch has several ranks)
    not_class_parallel_because = "it has not declared which of its parameters are per class and which are shared"
    #: how :meth:`step`'s loss combines over classes ("sum" or "mean"), to report one loss over all ranks
    loss_over_classes = "sum"

    def __init__(self, dataset: Dataset, ipc: int, hp: dict, *, backend: str = "auto", seed: int = 0,
                 shard: Shard | None = None):
        if isinstance(ipc, bool) or not isinstance(ipc, int) or ipc < 1:
            raise ValueError(f"ipc must be a positive int, got {ipc!r}")
        reg = zca_reg(hp.get("zca", False))
        if reg is not None and dataset.zca is None:
            dataset = dataset.whitened(reg)
        self.ds, self.ipc, self.hp, self.backend, self.seed = dataset, ipc, dict(hp), backend, seed
        self.num_classes = dataset.num_classes
        self.sampler = ClassSampler(dataset.train_y, dataset.num_classes)
        self.sampler.check(ipc, "ipc")
        self.batch_real = min(int(hp["batch_real"]), int(self.sampler.counts.min()))
        self.shard = shard
        if shard is None:
            self.gen = torch.Generator().manual_seed(seed)
            self.rank_gen, self._class_gens = self.gen, None
            self.classes = list(range(self.num_classes))
        else:
            if not self.class_parallel:
                raise ValueError(f"{self.method} cannot split classes over ranks: {self.not_class_parallel_because}")
            if shard.num_classes != self.num_classes:
                raise ValueError(f"shard is for {shard.num_classes} classes, the dataset has {self.num_classes}")
            self.gen, self._class_gens, self.rank_gen = shard.generators(seed)
            self.classes = list(shard.classes)
        self._slot = {c: i for i, c in enumerate(self.classes)}
        self.iteration, self.seconds, self.history = 0, 0.0, []
        self.init_synthetic()
        self.labels = self.stored_labels()  # after init_synthetic: a parameterization may store other counts
        if shard is not None:
            # Shared stored tensors must start equal on every rank, whatever their initialization drew.
            shard.broadcast_([t.data for k, t in self.synthetic_params().items() if k not in self.per_class_params])

    # -- to implement ---------------------------------------------------------------------------
    def init_synthetic(self) -> None:
        raise NotImplementedError

    def step(self) -> float:
        raise NotImplementedError

    def training_set(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The training set the synthetic parameters stand for: normalized images and labels."""
        raise NotImplementedError

    def pixel_images(self) -> torch.Tensor:
        """The stored images in [0, 1] for viewing (one per stored slot)."""
        raise NotImplementedError

    def synthetic_params(self) -> dict[str, torch.Tensor]:
        """The stored synthetic parameters by name (leaf tensors the outer loop optimizes)."""
        return {"syn": self.syn}

    def extra_state(self) -> dict:
        """Run state beyond the stored parameters and ``self.opt`` that a checkpoint must hold."""
        return {}

    def load_extra_state(self, state: dict) -> None:
        pass

    def stored_labels(self) -> torch.Tensor:
        """The class of each stored row of the per-class tensors (``ipc`` rows per owned class); a
        parameterization with another count per class overrides it."""
        return torch.tensor(self.classes, dtype=torch.int64).repeat_interleave(self.ipc)

    def replace_params(self, params: dict[str, torch.Tensor]) -> None:
        """Set the stored tensors by name (used to build the gathered set); override when the names of
        :meth:`synthetic_params` are not attributes."""
        for k, v in params.items():
            setattr(self, k, v)

    def storage(self) -> dict:
        """Stored floats against the budget of ``ipc`` plain images per class (equal-budget comparisons);
        on a shard, of the whole synthetic set (per-class tensors counted for every class)."""
        k = len(self.classes)
        stored = sum(t.numel() // k * self.num_classes if name in self.per_class_params else t.numel()
                     for name, t in self.synthetic_params().items())
        budget = self.num_classes * self.ipc * self.ds.train_x[0].numel()
        return {"stored_floats": int(stored), "budget_floats": int(budget), "ratio": round(stored / budget, 4)}

    # -- classes and random streams -------------------------------------------------------------
    def class_gen(self, c: int) -> torch.Generator:
        """Class ``c``'s random stream (the one generator in a plain run)."""
        return self.gen if self._class_gens is None else self._class_gens[c]

    def class_rows(self, t: torch.Tensor, c: int, n: int | None = None) -> torch.Tensor:
        """Class ``c``'s ``n`` (default ``ipc``) rows of a class-major per-class tensor."""
        n = n or self.ipc
        i = self._slot[c]
        return t[i * n:(i + 1) * n]

    def init_indices(self, n: int) -> torch.Tensor:
        """``(len(classes), n)`` indices of distinct random real images per owned class."""
        if self._class_gens is None:
            return self.sampler.indices_all(n, self.gen)
        self.sampler.check(n)
        return torch.stack([self.sampler.indices(c, n, self.class_gen(c)) for c in self.classes])

    def init_randn(self, n: int, shape: tuple[int, ...]) -> torch.Tensor:
        """``(len(classes)·n, *shape)`` standard normal rows, class-major."""
        if self._class_gens is None:
            return torch.randn((self.num_classes * n, *shape), generator=self.gen)
        return torch.cat([torch.randn((n, *shape), generator=self.class_gen(c)) for c in self.classes])

    def local_share(self, total: int) -> int:
        """This rank's part of ``total`` samples drawn from the real data of all classes, split over
        ranks in proportion to their real images (largest remainders, so the parts sum to ``total``)."""
        if self.shard is None:
            return total
        counts = self.sampler.counts.double()
        weights = torch.stack([counts[list(b)].sum() for b in self.shard.blocks()])
        quota = total * weights / weights.sum()
        part = quota.floor().long()
        extra = total - int(part.sum())
        part[torch.argsort(quota - part, descending=True, stable=True)[:extra]] += 1
        return int(part[self.shard.rank])

    def local_pool(self) -> torch.Tensor:
        """Indices of every real training image of the owned classes."""
        s = self.sampler
        return torch.cat([s.order[int(s.offsets[c]):int(s.offsets[c] + s.counts[c])] for c in self.classes])

    def sum_grads(self, params) -> None:
        """Sum the gradients of a shared network's parameters over ranks (missing ones count as 0), so
        the same optimizer step follows on every rank; the losses behind them must be scaled so that
        their sum over ranks is the loss of the whole batch."""
        if self.shard is None or not self.shard.communicates:
            return
        params = list(params)
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        self.shard.sum_([p.grad for p in params])

    def gathered(self) -> "Distiller":
        """The whole synthetic set: on a shard, a view of this trainer holding every rank's rows
        (a collective: every rank must call it); without a shard, ``self``."""
        if self.shard is None:
            return self
        full = {}
        for k, t in self.synthetic_params().items():
            t = t.detach()
            full[k] = self.shard.gather_rows(t, len(t) // len(self.classes)) if k in self.per_class_params else t
        view = copy.copy(self)
        view.replace_params(full)
        view.shard, view._class_gens = None, None
        view.classes = list(range(self.num_classes))
        view._slot = {c: c for c in view.classes}
        view.labels = view.stored_labels()
        return view

    # -- shared helpers -------------------------------------------------------------------------
    def fresh_net(self, width: int | None = None) -> ConvNet:
        """A freshly initialised ConvNet-3, seeded from the run's generator."""
        seed = int(torch.randint(2 ** 62, (1,), generator=self.gen))
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            return ConvNet(self.ds.channels, self.num_classes, width=width or self.hp["width"], im_size=self.ds.im_size,
                           backend=self.backend)

    def real_init(self, n: int) -> torch.Tensor:
        """``n`` distinct random real images per owned class, normalized, class-major (``pix_init`` real)."""
        return self.ds.normalize(self.ds.train_x[self.init_indices(n).flatten()])

    def initial_images(self, n: int) -> torch.Tensor:
        """``n`` starting images per class as hp ``init`` asks: ``"real"`` or ``"noise"`` (N(0, 1))."""
        if self.hp["init"] == "real":
            return self.real_init(n)
        if self.hp["init"] == "noise":
            return self.init_randn(n, tuple(self.ds.train_x.shape[1:]))
        raise ValueError(f"init must be 'real' or 'noise' for {self.method}, got {self.hp['init']!r}")

    def eval_overrides(self) -> dict:
        """Evaluation-protocol fields the synthetic set needs (MTT: its learned lr), saved with the run."""
        return {}

    def real_batch(self, c: int, n: int | None = None, *, normalize: bool = True) -> torch.Tensor:
        """``n`` random real images of class ``c`` (default ``batch_real``), from class ``c``'s stream."""
        x = self.ds.train_x[self.sampler.indices(c, n or self.batch_real, self.class_gen(c))]
        return self.ds.normalize(x) if normalize else x

    def augment(self, strategy: str, mode: str = "single") -> DiffAugment | None:
        return DiffAugment(strategy_for(strategy, self.ds.name), mode=mode) if strategy else None

    def siamese(self, aug: DiffAugment | None, *batches: torch.Tensor, c: int) -> list[torch.Tensor]:
        """Apply one parameter set, drawn from class ``c``'s stream, to every batch (identity without
        augmentation)."""
        if aug is None:
            return list(batches)
        p = aug.sample(1, self.ds.im_size, generator=self.class_gen(c))
        return [aug.apply(b, p) for b in batches]

    def image_step(self, loss: torch.Tensor, params: list[torch.Tensor] | None = None) -> None:
        """One optimizer step on the synthetic parameters (only their gradients are computed); on a
        shard, the gradients of the shared (not per-class) ones are first summed over ranks."""
        named = self.synthetic_params()
        params = params if params is not None else [p for p in named.values() if p.requires_grad]
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        for p, g in zip(params, grads):
            p.grad = g
        if self.shard is not None and self.shard.communicates:
            shared = {id(t) for k, t in named.items() if k not in self.per_class_params}
            self.sum_grads([p for p in params if id(p) in shared])
        self.opt.step()
        for p in params:
            p.grad = None

    def train_net(self, net, opt, x: torch.Tensor, y: torch.Tensor, epochs: int, batch: int,
                  aug: DiffAugment | None) -> None:
        """Train ``net`` on a fixed (detached) set for ``epochs`` epochs, per-sample augmentation."""
        x, y = x.detach(), y.detach()
        if self.shard is not None:
            return self._train_net_sharded(net, opt, x, y, epochs, batch, aug)
        for _ in range(epochs):
            for idx in torch.randperm(len(x), generator=self.gen).split(batch):
                xb = aug(x[idx], generator=self.gen) if aug is not None else x[idx]
                loss = F.cross_entropy(net(xb), y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()

    def _train_net_sharded(self, net, opt, x, y, epochs, batch, aug) -> None:
        """:meth:`train_net` on a set whose rows are spread over ranks (``x`` is this rank's): each
        epoch, every rank cuts its shuffled rows into as many chunks as the whole set has batches;
        chunk ``j`` of every rank forms batch ``j`` (its mean loss is the sum of the ranks' summed
        losses over its total size), so each step is one all-reduce of the network's gradients."""
        rows = len(x) // len(self.classes)
        sizes = [len(b) * rows for b in self.shard.blocks()]
        n_batches = max(1, -(-sum(sizes) // batch))
        # tensor_split gives the first n % m chunks one extra row: the batch sizes every rank can compute.
        totals = [sum(n // n_batches + (j < n % n_batches) for n in sizes) for j in range(n_batches)]
        for _ in range(epochs):
            chunks = torch.randperm(len(x), generator=self.rank_gen).tensor_split(n_batches)
            for idx, total in zip(chunks, totals):
                opt.zero_grad(set_to_none=True)
                if len(idx):
                    xb = aug(x[idx], generator=self.rank_gen) if aug is not None else x[idx]
                    (F.cross_entropy(net(xb), y[idx], reduction="sum") / total).backward()
                self.sum_grads(net.parameters())
                opt.step()

    def _global_loss(self, loss: float) -> float:
        """The step's loss over all ranks' classes (each rank's ``loss`` covers its own)."""
        if self.shard is None or not self.shard.communicates:
            return loss
        parts = self.shard.gather_floats(loss)
        if self.loss_over_classes == "sum":
            return sum(parts)
        return sum(p * len(b) for p, b in zip(parts, self.shard.blocks())) / self.num_classes

    # -- running and checkpoints ----------------------------------------------------------------
    def run(self, iterations: int, *, callback=None, progress: bool = True) -> None:
        """Run outer iterations until ``iterations`` in total; ``callback(self)`` after each one."""
        bar = tqdm(range(self.iteration, iterations), desc=f"{self.method} distill", initial=self.iteration,
                   total=iterations, disable=not progress, mininterval=1.0)
        for _ in bar:
            t0 = time.perf_counter()
            loss = self._global_loss(float(self.step()))
            self.iteration += 1
            self.seconds += time.perf_counter() - t0
            self.history.append({"iteration": self.iteration, "loss": loss, "seconds": round(self.seconds, 3)})
            bar.set_postfix(loss=f"{loss:.4g}")
            if callback is not None:
                callback(self)

    def state_dict(self) -> dict:
        """Everything the run needs to continue; on a shard, this rank's part (its rows, its streams)."""
        state = {"method": self.method, "iteration": self.iteration, "seconds": self.seconds,
                 "params": {k: v.detach().clone() for k, v in self.synthetic_params().items()},
                 "optimizer": self.opt.state_dict(), "extra": self.extra_state(),
                 "generator": self.gen.get_state(), "history": list(self.history)}
        if self.shard is not None:
            state.update(shard=self._shard_id(), rank_generator=self.rank_gen.get_state(),
                         class_generators={c: g.get_state() for c, g in self._class_gens.items()})
        return state

    def _shard_id(self) -> dict | None:
        s = self.shard
        return None if s is None else {"rank": s.rank, "world_size": s.world_size, "classes": list(s.classes)}

    def load_state_dict(self, state: dict) -> None:
        if state.get("method") != self.method:
            raise ValueError(f"checkpoint is for method {state.get('method')!r}, not {self.method!r}")
        if state.get("shard") != self._shard_id():
            raise ValueError(f"checkpoint holds the state of shard {state.get('shard')} (None: a single-process run), "
                             f"this trainer is shard {self._shard_id()}")
        mine, saved = self.synthetic_params(), state["params"]
        if set(mine) != set(saved):
            raise ValueError(f"checkpoint holds synthetic parameters {sorted(saved)}, this run has {sorted(mine)}")
        for k, t in mine.items():
            if saved[k].shape != t.shape:
                raise ValueError(f"checkpoint's synthetic parameter {k!r} has shape {tuple(saved[k].shape)}, "
                                 f"this run's has {tuple(t.shape)}")
        with torch.no_grad():
            for k, t in mine.items():
                t.copy_(saved[k])
        self.opt.load_state_dict(state["optimizer"])
        self.load_extra_state(state.get("extra", {}))
        self.gen.set_state(state["generator"])
        if self.shard is not None:
            self.rank_gen.set_state(state["rank_generator"])
            for c, g in self._class_gens.items():
                g.set_state(state["class_generators"][c])
        self.iteration, self.seconds, self.history = state["iteration"], state["seconds"], list(state["history"])


__all__ = ["Distiller"]
