"""What every trainer shares: a parameterization × an objective (:mod:`.parts`), the optimizer over their
stored tensors, the RNG, state for checkpoints."""
from __future__ import annotations

import copy
import time

import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..data.augment import DiffAugment, strategy_for
from ..data import ClassSampler, Dataset
from ..device import (generator as device_generator, generator_state, load_generator_state,
                      resolve as resolve_device)
from ..distributed import Shard
from .. import precision as amp
from ...nn.convnet import ConvNet
from ..data.zca import zca_reg
from .parts import Objective, Parameterization


class Distiller:
    """A trainer: one :class:`~.parts.Parameterization` (the stored tensors and their decode) under one
    :class:`~.parts.Objective` (the loss of an outer iteration). A method is a subclass naming
    :attr:`method`, :attr:`PARAMETERIZATION`, :attr:`OBJECTIVE` and its :attr:`PRESETS` (see
    :mod:`.registry`); ``parameterization=`` / ``objective=`` build any other compatible pairing.

    Every stored tensor (:meth:`synthetic_params`: the parameterization's, then the objective's, e.g.
    MTT's learned lr) is checkpointed, saved and counted against the storage budget; one optimizer
    (the parameterization's kind) steps them all, one param group per learning rate. The parts'
    attributes read through the trainer (``trainer.syn``, ``trainer.bank``, ``trainer.experts``, …;
    assigning one sets it on its part).

    All randomness (real batches, augmentation, network initialisation) comes from one
    ``torch.Generator`` seeded with ``seed``, so :meth:`state_dict` captures a run completely.

    Hyperparameter ``zca`` (False, True or a regularization) whitens the data first
    (:meth:`ddkernels.distill.data.Dataset.whitened`, fitted on the training images): ``self.ds.normalize``
    then whitens real, synthetic and test images alike.

    Class-parallel runs (:mod:`ddkernels.distill.distributed`): with a ``shard``, the trainer owns only the
    classes :attr:`classes` and holds only their rows of the :attr:`per_class_params` (class-major, in
    the order of :attr:`classes`). Both parts must allow it (:attr:`class_parallel`) and draw their
    randomness from the three streams: :attr:`gen` (shared: identical on every rank, e.g. fresh
    networks), :meth:`class_gen` (one class's real batches, augmentation, initialization) and
    :attr:`rank_gen` (rank-local work on shared parameters); without a shard all three are the one
    generator, so a plain run is what it always was. Gradients of stored tensors that are not
    per-class are summed over ranks in :meth:`image_step` (every rank must then take the same number
    of image steps); networks trained on data of all classes use :meth:`sum_grads`.

    Hyperparameter ``precision`` (``"fp32"``, ``"bf16"``, ``"fp16"`` on CUDA; :mod:`ddkernels.distill.precision`):
    every outer iteration (:meth:`step`, the objective's networks forward and backward) runs under
    autocast; the stored tensors, their gradients and the optimizer state stay float32. Under ``fp16``
    the steps on the stored tensors and the networks' training steps go through gradient scalers.

    Args:
        dataset: the real data (used as given if it is already whitened).
        ipc: stored synthetic images per class.
        hp: hyperparameters (see :mod:`ddkernels.distill.methods.presets`).
        backend: passed to every ``ddkernels`` op call.
        seed: seeds the generator.
        device: where the run computes (``"auto"``: CUDA when visible, else the CPU; ``"cpu"``,
            ``"cuda"``, ``"cuda:N"``). The real data is moved there once; every stored tensor,
            network and random stream lives there (see :mod:`ddkernels.distill.device`).
        shard: the classes this process owns in a class-parallel run (``None``: all, one process).
        parameterization, objective: replace the method's (a combination no named method uses).
    """

    method = ""
    PARAMETERIZATION: type[Parameterization] | None = None
    #: an :class:`~.parts.Objective`, or a dict of them keyed by the value of hp :attr:`OBJECTIVE_KEY`
    OBJECTIVE: type[Objective] | dict[str, type[Objective]] | None = None
    OBJECTIVE_KEY = "base"
    #: preset name -> ``f(dataset, ipc) -> hp`` (see :func:`ddkernels.distill.methods.preset`)
    PRESETS: dict = {}
    #: checkpoint ``extra`` entries the method's format has always carried, whatever its objective
    EXTRA_STATE_DEFAULTS: dict = {}
    #: hyperparameters added after runs were written, with the value a run written before had (so
    #: resuming it keeps its behaviour; :func:`ddkernels.distill.runs.distill`)
    HP_SINCE: dict = {"precision": "fp32"}  # every method gained precision later (issue 21)
    #: whether the classes can be split over ranks (derived from the parts; for a method with a
    #: choice of objectives: whether some choice can), and why not
    class_parallel = False
    not_class_parallel_because = "it has not declared which of its parameters are per class and which are shared"

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        if cls.PARAMETERIZATION is None or "class_parallel" in cls.__dict__:
            return
        refusals = [cls._refusal(cls.PARAMETERIZATION, o) for o in cls._objective_choices()]
        cls.class_parallel = any(r is None for r in refusals)
        cls.not_class_parallel_because = next((r for r in refusals if r), "")

    @classmethod
    def check_hp(cls, hp: dict) -> None:
        """Method-specific checks of resolved hyperparameters that need no data, run before anything is
        loaded (:func:`ddkernels.distill.runs.check_arguments`); raises ``ValueError`` naming the bad one."""

    @classmethod
    def _objective_choices(cls) -> list[type[Objective]]:
        return list(cls.OBJECTIVE.values()) if isinstance(cls.OBJECTIVE, dict) else [cls.OBJECTIVE]

    @staticmethod
    def _refusal(param: type[Parameterization], objective: type[Objective]) -> str | None:
        """Why the pair cannot split classes over ranks (``None``: it can)."""
        for part in (objective, param):
            if not part.class_parallel:
                return part.not_class_parallel_because
        return None

    def __init__(self, dataset: Dataset, ipc: int, hp: dict, *, backend: str = "auto", seed: int = 0,
                 shard: Shard | None = None, parameterization: type[Parameterization] | None = None,
                 objective: type[Objective] | None = None, device: str | torch.device | None = "auto"):
        if isinstance(ipc, bool) or not isinstance(ipc, int) or ipc < 1:
            raise ValueError(f"ipc must be a positive int, got {ipc!r}")
        self.device = resolve_device(device)
        self.precision = amp.check_precision(hp.get("precision", "fp32"), self.device)
        # fp16 only: one scaler for the steps on the stored tensors, one for the networks' training
        self.scaler = amp.grad_scaler(self.precision, self.device)
        self.net_scaler = amp.grad_scaler(self.precision, self.device)
        param_cls, objective_cls = self._parts(hp, parameterization, objective)
        reg = zca_reg(hp.get("zca", False))
        if reg is not None and dataset.zca is None:
            dataset = dataset.whitened(reg)
        dataset = dataset.to(self.device)  # the one copy of the real data to the run's device
        self.ds, self.ipc, self.hp, self.backend, self.seed = dataset, ipc, dict(hp), backend, seed
        self.num_classes = dataset.num_classes
        self.sampler = ClassSampler(dataset.train_y, dataset.num_classes)
        self.sampler.check(ipc, "ipc")
        self.batch_real = min(int(hp["batch_real"]), min(self.sampler.sizes))
        self.shard = shard
        if shard is None:
            self.gen = device_generator(self.device, seed)
            self.rank_gen, self._class_gens = self.gen, None
            self.classes = list(range(self.num_classes))
        else:
            refusal = (self.not_class_parallel_because if not self.class_parallel
                       else self._refusal(param_cls, objective_cls))
            if refusal is not None:
                raise ValueError(f"{self.method} cannot split classes over ranks: {refusal}{self._split_hint(param_cls)}")
            if shard.num_classes != self.num_classes:
                raise ValueError(f"shard is for {shard.num_classes} classes, the dataset has {self.num_classes}")
            self.gen, self._class_gens, self.rank_gen = shard.generators(seed, self.device)
            self.classes = list(shard.classes)
        self._slot = {c: i for i, c in enumerate(self.classes)}
        self.iteration, self.seconds, self.history = 0, 0.0, []
        self.init_synthetic(param_cls, objective_cls)
        self.labels = self.stored_labels()  # after init_synthetic: a parameterization may store other counts
        if shard is not None:
            # Shared stored tensors must start equal on every rank, whatever their initialization drew.
            shard.broadcast_([t.data for k, t in self.synthetic_params().items() if k not in self.per_class_params])

    def _split_hint(self, param_cls) -> str:
        """For a method with a choice of objectives: which choices do split by class."""
        if not isinstance(self.OBJECTIVE, dict):
            return ""
        ok = [k for k, o in self.OBJECTIVE.items() if self._refusal(param_cls, o) is None]
        return f" ({self.method} with --set {self.OBJECTIVE_KEY}={'|'.join(ok)} splits by class)" if ok else ""

    def _parts(self, hp: dict, param_cls, objective_cls) -> tuple[type[Parameterization], type[Objective]]:
        """The parameterization and objective this trainer composes; checks the objective's needs."""
        param_cls = param_cls or self.PARAMETERIZATION
        if objective_cls is None:
            objective_cls = self.OBJECTIVE
            if isinstance(objective_cls, dict):
                key = hp[self.OBJECTIVE_KEY]
                if key not in objective_cls:
                    raise ValueError(f"{self.OBJECTIVE_KEY} must be one of {tuple(objective_cls)}, got {key!r}")
                objective_cls = objective_cls[key]
        if param_cls is None or objective_cls is None:
            raise ValueError(f"{type(self).__name__} needs a parameterization and an objective")
        allowed = objective_cls.parameterizations
        if allowed is not None and not issubclass(param_cls, allowed):
            raise ValueError(f"objective {objective_cls.__name__} needs the {' or '.join(a.__name__ for a in allowed)} "
                             f"parameterization, not {param_cls.__name__}")
        missing = [n for n in objective_cls.needs if getattr(param_cls, n) is getattr(Parameterization, n)]
        if missing:
            raise ValueError(f"objective {objective_cls.__name__} needs {', '.join(missing)}, which parameterization "
                             f"{param_cls.__name__} does not give")
        return param_cls, objective_cls

    def init_synthetic(self, param_cls: type[Parameterization], objective_cls: type[Objective]) -> None:
        """Build both parts: the parameterization's tensors first (it may size itself by what the
        objective stores), then the objective's state, then one optimizer over both."""
        self.param = param_cls(self)
        self.objective = objective_cls(self)
        self.param.init()
        self.objective.init()
        self.opt = self.param.optimizer(self.param.param_groups() + self.objective.param_groups())

    # -- the parts' attributes ------------------------------------------------------------------
    def __getattr__(self, name):
        # Only for names the trainer lacks: the parts' state (trainer.syn, trainer.experts, …).
        d = self.__dict__
        for part in (d.get("param"), d.get("objective")):
            if part is not None and hasattr(part, name):
                return getattr(part, name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __setattr__(self, name, value):
        d = self.__dict__
        for part in (d.get("param"), d.get("objective")):
            if part is not None and name in vars(part):
                setattr(part, name, value)
                return
        object.__setattr__(self, name, value)

    @property
    def stored_space(self) -> str:
        return self.param.stored_space

    @property
    def decodes(self) -> bool:
        return self.param.decodes

    @property
    def per_class_params(self) -> tuple[str, ...]:
        return self.param.per_class_params

    @property
    def loss_over_classes(self) -> str:
        return self.objective.loss_over_classes

    # -- one outer iteration and what it leaves -------------------------------------------------
    def step(self) -> float:
        """One outer iteration; returns its loss."""
        with amp.autocast(self.precision, self.device):  # every network of the iteration (HaBa's extractor too)
            self.param.before_step()
            loss = self.objective.step()
            self.param.after_step()
        return loss

    def training_set(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The training set the synthetic parameters stand for: normalized images and labels."""
        return self.param.training_set()

    def pixel_images(self) -> torch.Tensor:
        """The stored images in [0, 1] for viewing (one per stored slot)."""
        return self.param.pixel_images()

    def synthetic_params(self) -> dict[str, torch.Tensor]:
        """The stored synthetic parameters by name (leaf tensors the outer loop optimizes)."""
        return {**self.param.params(), **self.objective.params()}

    def extra_state(self) -> dict:
        """Run state beyond the stored parameters and ``self.opt`` that a checkpoint must hold."""
        return {**self.EXTRA_STATE_DEFAULTS, **self.objective.extra_state(), **self.param.extra_state()}

    def load_extra_state(self, state: dict) -> None:
        self.objective.load_extra_state(state)
        self.param.load_extra_state(state)

    def stored_labels(self) -> torch.Tensor:
        """The class of each stored row of the per-class tensors (rows per owned class, class-major)."""
        return self.param.stored_labels()

    def replace_params(self, params: dict[str, torch.Tensor]) -> None:
        """Set the stored tensors by name (used to build the gathered set)."""
        own = self.objective.params()
        self.param.replace({k: v for k, v in params.items() if k not in own})
        self.objective.replace({k: v for k, v in params.items() if k in own})

    def eval_overrides(self) -> dict:
        """Evaluation-protocol fields the synthetic set needs (MTT: its learned lr), saved with the run."""
        return {**self.objective.eval_overrides(), **self.param.eval_overrides()}

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
            return torch.randn((self.num_classes * n, *shape), generator=self.gen, device=self.device)
        return torch.cat([torch.randn((n, *shape), generator=self.class_gen(c), device=self.device)
                          for c in self.classes])

    def local_share(self, total: int) -> int:
        """This rank's part of ``total`` samples drawn from the real data of all classes, split over
        ranks in proportion to their real images (largest remainders, so the parts sum to ``total``)."""
        if self.shard is None:
            return total
        counts = torch.tensor(self.sampler.sizes, dtype=torch.float64, device="cpu")
        weights = torch.stack([counts[list(b)].sum() for b in self.shard.blocks()])
        quota = total * weights / weights.sum()
        part = quota.floor().long()
        extra = total - int(part.sum())
        part[torch.argsort(quota - part, descending=True, stable=True)[:extra]] += 1
        return int(part[self.shard.rank])

    def local_pool(self) -> torch.Tensor:
        """Indices of every real training image of the owned classes."""
        s = self.sampler
        return torch.cat([s.order[s.starts[c]:s.starts[c] + s.sizes[c]] for c in self.classes])

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
        view.param, view.objective = self.param.bound_to(view), self.objective.bound_to(view)
        view.replace_params(full)
        view.shard, view._class_gens = None, None
        view.classes = list(range(self.num_classes))
        view._slot = {c: c for c in view.classes}
        view.labels = view.stored_labels()
        return view

    # -- shared helpers -------------------------------------------------------------------------
    def fresh_net(self, width: int | None = None) -> ConvNet:
        """A freshly initialised ConvNet-3 on the run's device, seeded from the run's generator."""
        seed = int(torch.randint(2 ** 62, (1,), generator=self.gen, device=self.device))
        return self.seeded(seed, lambda: ConvNet(self.ds.channels, self.num_classes, width=width or self.hp["width"],
                                                 im_size=self.ds.im_size, backend=self.backend))

    def seeded(self, seed: int, build):
        """``build()`` (a module) initialised from the CPU's global RNG seeded with ``seed``, the
        caller's RNG untouched, then moved to the run's device: the same weights on every device."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return build().to(self.device)

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
        extra = self.param.regularizer()  # e.g. HaBa's club term, on every step (DC takes several per iteration)
        if extra is not None:
            loss = loss + extra
        named = self.synthetic_params()
        params = params if params is not None else [p for p in named.values() if p.requires_grad]
        grads = torch.autograd.grad(amp.scaled(loss, self.scaler), params, allow_unused=True)
        for p, g in zip(params, grads):
            p.grad = g
        if self.shard is not None and self.shard.communicates:
            shared = {id(t) for k, t in named.items() if k not in self.per_class_params}
            self.sum_grads([p for p in params if id(p) in shared])
        amp.step(self.opt, self.scaler)
        for p in params:
            p.grad = None

    def train_net(self, net, opt, x: torch.Tensor, y: torch.Tensor, epochs: int, batch: int,
                  aug: DiffAugment | None) -> None:
        """Train ``net`` on a fixed (detached) set for ``epochs`` epochs, per-sample augmentation."""
        x, y = x.detach(), y.detach()
        if self.shard is not None:
            return self._train_net_sharded(net, opt, x, y, epochs, batch, aug)
        for _ in range(epochs):
            for idx in torch.randperm(len(x), generator=self.gen, device=self.device).split(batch):
                xb = aug(x[idx], generator=self.gen) if aug is not None else x[idx]
                loss = F.cross_entropy(net(xb), y[idx])
                opt.zero_grad(set_to_none=True)
                amp.scaled(loss, self.net_scaler).backward()
                amp.step(opt, self.net_scaler)

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
            chunks = torch.randperm(len(x), generator=self.rank_gen, device=self.device).tensor_split(n_batches)
            for idx, total in zip(chunks, totals):
                opt.zero_grad(set_to_none=True)
                if len(idx):
                    xb = aug(x[idx], generator=self.rank_gen) if aug is not None else x[idx]
                    amp.scaled(F.cross_entropy(net(xb), y[idx], reduction="sum") / total, self.net_scaler).backward()
                self.sum_grads(net.parameters())
                amp.step(opt, self.net_scaler)

    def _global_loss(self, loss: float) -> float:
        """The step's loss over all ranks' classes (each rank's ``loss`` covers its own)."""
        if self.shard is None or not self.shard.communicates:
            return loss
        parts = self.shard.gather_floats(loss, self.device)
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
                 "generator": generator_state(self.gen), "history": list(self.history)}
        if self.scaler is not None:
            state["scalers"] = {"image": self.scaler.state_dict(), "net": self.net_scaler.state_dict()}
        if self.shard is not None:
            state.update(shard=self._shard_id(), rank_generator=generator_state(self.rank_gen),
                         class_generators={c: generator_state(g) for c, g in self._class_gens.items()})
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
        if self.scaler is not None and "scalers" in state:
            self.scaler.load_state_dict(state["scalers"]["image"])
            self.net_scaler.load_state_dict(state["scalers"]["net"])
        self.load_extra_state(state.get("extra", {}))
        it = state["iteration"]
        load_generator_state(self.gen, state["generator"], seed=self.seed, iteration=it)
        if self.shard is not None:
            load_generator_state(self.rank_gen, state["rank_generator"], seed=self.seed + 1, iteration=it,
                                 name="rank generator")
            for c, g in self._class_gens.items():
                load_generator_state(g, state["class_generators"][c], seed=self.seed + 2 + c, iteration=it,
                                     name=f"class {c} generator")
        self.iteration, self.seconds, self.history = state["iteration"], state["seconds"], list(state["history"])


__all__ = ["Distiller"]
