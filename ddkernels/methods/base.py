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
    """Base class of the trainers. Subclasses set :attr:`method`, create ``self.syn`` (a leaf
    tensor) and ``self.opt`` in :meth:`init_synthetic`, and implement :meth:`step` (one outer
    iteration, returning its loss) and :meth:`training_set`.

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

    # -- shared helpers -------------------------------------------------------------------------
    def fresh_net(self, width: int | None = None) -> ConvNet:
        """A freshly initialised ConvNet-3, seeded from the run's generator."""
        seed = int(torch.randint(2 ** 62, (1,), generator=self.gen))
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            return ConvNet(self.ds.channels, self.num_classes, width=width or self.hp["width"], im_size=self.ds.im_size)

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

    def image_step(self, loss: torch.Tensor) -> None:
        """One optimizer step on the synthetic tensor (only its gradient is computed)."""
        (grad,) = torch.autograd.grad(loss, [self.syn])
        self.syn.grad = grad
        self.opt.step()
        self.syn.grad = None

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
                "syn": self.syn.detach().clone(), "optimizer": self.opt.state_dict(),
                "generator": self.gen.get_state(), "history": list(self.history)}

    def load_state_dict(self, state: dict) -> None:
        if state.get("method") != self.method:
            raise ValueError(f"checkpoint is for method {state.get('method')!r}, not {self.method!r}")
        if state["syn"].shape != self.syn.shape:
            raise ValueError(f"checkpoint's synthetic tensor has shape {tuple(state['syn'].shape)}, "
                             f"this run's has {tuple(self.syn.shape)}")
        with torch.no_grad():
            self.syn.copy_(state["syn"])
        self.opt.load_state_dict(state["optimizer"])
        self.gen.set_state(state["generator"])
        self.iteration, self.seconds, self.history = state["iteration"], state["seconds"], list(state["history"])


__all__ = ["Distiller"]
