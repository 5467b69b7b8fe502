"""What every trainer shares: synthetic tensors, their optimizer, the RNG, state for checkpoints."""
from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..augment import DiffAugment, strategy_for
from ..data import ClassSampler, Dataset
from ..models import ConvNet


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

    Args:
        dataset: the real data.
        ipc: stored synthetic images per class.
        hp: hyperparameters (see :mod:`ddkernels.methods.presets`).
        backend: passed to every ``ddkernels`` op call.
        seed: seeds the generator.
    """

    method = ""
    #: how the stored tensors are to be read, saved in ``synthetic.pt``
    stored_space = "normalized"
    #: whether the training set is decoded from the stored tensors (then ``decoded.png`` is written)
    decodes = False
    #: names in :meth:`synthetic_params` whose first dim is class-major (``num_classes · n`` rows, class
    #: ``c`` owning rows ``c·n … c·n+n-1``); every other stored tensor is shared by all classes
    per_class_params: tuple[str, ...] = ("syn",)

    def __init__(self, dataset: Dataset, ipc: int, hp: dict, *, backend: str = "auto", seed: int = 0):
        if isinstance(ipc, bool) or not isinstance(ipc, int) or ipc < 1:
            raise ValueError(f"ipc must be a positive int, got {ipc!r}")
        self.ds, self.ipc, self.hp, self.backend, self.seed = dataset, ipc, dict(hp), backend, seed
        self.num_classes = dataset.num_classes
        self.sampler = ClassSampler(dataset.train_y, dataset.num_classes)
        self.sampler.check(ipc, "ipc")
        self.batch_real = min(int(hp["batch_real"]), int(self.sampler.counts.min()))
        self.gen = torch.Generator().manual_seed(seed)
        self.labels = torch.arange(self.num_classes).repeat_interleave(ipc)
        self.iteration, self.seconds, self.history = 0, 0.0, []
        self.init_synthetic()

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

    def storage(self) -> dict:
        """Stored floats against the budget of ``ipc`` plain images per class (equal-budget comparisons)."""
        stored = sum(t.numel() for t in self.synthetic_params().values())
        budget = self.num_classes * self.ipc * self.ds.train_x[0].numel()
        return {"stored_floats": int(stored), "budget_floats": int(budget), "ratio": round(stored / budget, 4)}

    # -- shared helpers -------------------------------------------------------------------------
    def fresh_net(self, width: int | None = None) -> ConvNet:
        """A freshly initialised ConvNet-3, seeded from the run's generator."""
        seed = int(torch.randint(2 ** 62, (1,), generator=self.gen))
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            return ConvNet(self.ds.channels, self.num_classes, width=width or self.hp["width"], im_size=self.ds.im_size)

    def real_init(self, n: int) -> torch.Tensor:
        """``n`` distinct random real images per class, normalized, class-major (``pix_init`` real)."""
        idx = self.sampler.indices_all(n, self.gen).flatten()
        return self.ds.normalize(self.ds.train_x[idx])

    def initial_images(self, n: int) -> torch.Tensor:
        """``n`` starting images per class as hp ``init`` asks: ``"real"`` or ``"noise"`` (N(0, 1))."""
        if self.hp["init"] == "real":
            return self.real_init(n)
        if self.hp["init"] == "noise":
            return torch.randn((self.num_classes * n, *self.ds.train_x.shape[1:]), generator=self.gen)
        raise ValueError(f"init must be 'real' or 'noise' for {self.method}, got {self.hp['init']!r}")

    def eval_overrides(self) -> dict:
        """Evaluation-protocol fields the synthetic set needs (MTT: its learned lr), saved with the run."""
        return {}

    def real_batch(self, c: int, n: int | None = None, *, normalize: bool = True) -> torch.Tensor:
        """``n`` random real images of class ``c`` (default ``batch_real``)."""
        x = self.ds.train_x[self.sampler.indices(c, n or self.batch_real, self.gen)]
        return self.ds.normalize(x) if normalize else x

    def augment(self, strategy: str, mode: str = "single") -> DiffAugment | None:
        return DiffAugment(strategy_for(strategy, self.ds.name), mode=mode) if strategy else None

    def siamese(self, aug: DiffAugment | None, *batches: torch.Tensor) -> list[torch.Tensor]:
        """Apply one shared parameter set to every batch (identity without augmentation)."""
        if aug is None:
            return list(batches)
        p = aug.sample(1, self.ds.im_size, generator=self.gen)
        return [aug.apply(b, p) for b in batches]

    def image_step(self, loss: torch.Tensor, params: list[torch.Tensor] | None = None) -> None:
        """One optimizer step on the synthetic parameters (only their gradients are computed)."""
        params = params if params is not None else [p for p in self.synthetic_params().values() if p.requires_grad]
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        for p, g in zip(params, grads):
            p.grad = g
        self.opt.step()
        for p in params:
            p.grad = None

    def train_net(self, net, opt, x: torch.Tensor, y: torch.Tensor, epochs: int, batch: int,
                  aug: DiffAugment | None) -> None:
        """Train ``net`` on a fixed (detached) set for ``epochs`` epochs, per-sample augmentation."""
        x, y = x.detach(), y.detach()
        for _ in range(epochs):
            for idx in torch.randperm(len(x), generator=self.gen).split(batch):
                xb = aug(x[idx], generator=self.gen) if aug is not None else x[idx]
                loss = F.cross_entropy(net(xb), y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()

    # -- running and checkpoints ----------------------------------------------------------------
    def run(self, iterations: int, *, callback=None, progress: bool = True) -> None:
        """Run outer iterations until ``iterations`` in total; ``callback(self)`` after each one."""
        bar = tqdm(range(self.iteration, iterations), desc=f"{self.method} distill", initial=self.iteration,
                   total=iterations, disable=not progress, mininterval=1.0)
        for _ in bar:
            t0 = time.perf_counter()
            loss = float(self.step())
            self.iteration += 1
            self.seconds += time.perf_counter() - t0
            self.history.append({"iteration": self.iteration, "loss": loss, "seconds": round(self.seconds, 3)})
            bar.set_postfix(loss=f"{loss:.4g}")
            if callback is not None:
                callback(self)

    def state_dict(self) -> dict:
        return {"method": self.method, "iteration": self.iteration, "seconds": self.seconds,
                "params": {k: v.detach().clone() for k, v in self.synthetic_params().items()},
                "optimizer": self.opt.state_dict(), "extra": self.extra_state(),
                "generator": self.gen.get_state(), "history": list(self.history)}

    def load_state_dict(self, state: dict) -> None:
        if state.get("method") != self.method:
            raise ValueError(f"checkpoint is for method {state.get('method')!r}, not {self.method!r}")
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
        self.iteration, self.seconds, self.history = state["iteration"], state["seconds"], list(state["history"])


__all__ = ["Distiller"]
