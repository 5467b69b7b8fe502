"""Class-parallel distillation with ``torch.distributed`` (launched by ``torchrun``).

Class-decomposable methods (DC, DSA, DM, IDC) match each class's synthetic rows against that class's
real data, so the classes can be split over ranks. A :class:`Shard` says which classes a rank owns:
rank ``r`` of ``N`` owns the contiguous block ``[r·K//N, (r+1)·K//N)`` of the ``K`` classes (a
contiguous block keeps the gathered set class-major by concatenating ranks in order). A trainer
built with a shard holds and optimizes only those classes' rows of every tensor named in
:attr:`~ddkernels.distill.methods.Distiller.per_class_params`; every other stored tensor, and any network it
trains on data of all classes (IDC's), is shared: its gradients are summed over ranks with
``all_reduce`` before each step, so it stays identical on every rank.

Random streams (see :meth:`Shard.generators`): a *shared* stream seeded with ``seed`` (identical on
every rank: fresh networks, shared initializations), one stream per *class* seeded from
``(seed, class)`` (its real batches, augmentation, initialization) and one per *rank* seeded from
``(seed, rank)`` (rank-local work on shared parameters, e.g. IDC's real-data batches). A run is
reproducible for a fixed world size. Where the math is per class (DM; DC/DSA without inner training;
IDC with one inner step per outer iteration) a class's result does not depend on the world size at all;
elsewhere the rank-local batches of the shared network change with it. A plain single-process run
(no shard) keeps its original single stream, so its numbers are unchanged.
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

#: seconds ``init_process_group`` waits for every rank to join (and collectives wait for each other)
DEFAULT_TIMEOUT_S = 300


def class_block(num_classes: int, world_size: int, rank: int) -> tuple[int, ...]:
    """The classes rank ``rank`` of ``world_size`` owns: a contiguous block, sizes differing by ≤ 1."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in a world of size {world_size}")
    if num_classes < world_size:
        raise ValueError(f"the dataset has {num_classes} classes but the launch has {world_size} ranks: class-parallel "
                         f"distillation gives every rank at least one class; launch at most {num_classes} processes "
                         f"(torchrun --nnodes × --nproc_per_node ≤ {num_classes})")
    return tuple(range(rank * num_classes // world_size, (rank + 1) * num_classes // world_size))


def _stream_seed(seed: int, kind: int, index: int) -> int:
    # SeedSequence mixes (seed, kind, index) into well-separated 63-bit seeds, so class c's stream and
    # rank r's stream never coincide with each other or with the shared stream (seeded with ``seed``).
    return int(np.random.SeedSequence([seed, kind, index]).generate_state(1, np.uint64)[0] >> np.uint64(1))


@dataclass(frozen=True)
class Shard:
    """The part of a class-parallel run one process does.

    Args:
        rank: this process's rank.
        world_size: number of processes (1: the class-parallel streams without communication, e.g.
            the single-process reference the tests compare a multi-process run with).
        classes: the classes this rank owns (sorted, see :func:`class_block`).
        num_classes: classes of the dataset.
    """

    rank: int
    world_size: int
    classes: tuple[int, ...]
    num_classes: int

    @classmethod
    def of(cls, num_classes: int, world_size: int = 1, rank: int = 0) -> "Shard":
        return cls(rank, world_size, class_block(num_classes, world_size, rank), num_classes)

    @property
    def communicates(self) -> bool:
        return self.world_size > 1

    def blocks(self) -> list[tuple[int, ...]]:
        """Every rank's classes, in rank order."""
        return [class_block(self.num_classes, self.world_size, r) for r in range(self.world_size)]

    def generators(self, seed: int, device: torch.device | str = "cpu"
                   ) -> tuple[torch.Generator, dict[int, torch.Generator], torch.Generator]:
        """(shared, per-class for the owned classes, per-rank) generators on ``device``; see the
        module docstring."""
        def gen(s):
            return torch.Generator(device=device).manual_seed(s)
        per_class = {c: gen(_stream_seed(seed, 1, c)) for c in self.classes}
        return gen(seed), per_class, gen(_stream_seed(seed, 2, self.rank))

    # -- collectives (no-ops on one process) ----------------------------------------------------
    def sum_(self, tensors: list[torch.Tensor]) -> None:
        """Sum each tensor over ranks, in place (one flattened all-reduce)."""
        if not self.communicates or not tensors:
            return
        flat = torch.cat([t.reshape(-1) for t in tensors])
        dist.all_reduce(flat)
        for t, part in zip(tensors, flat.split([t.numel() for t in tensors])):
            t.copy_(part.view_as(t))

    def broadcast_(self, tensors: list[torch.Tensor]) -> None:
        """Overwrite each tensor with rank 0's."""
        if self.communicates:
            for t in tensors:
                dist.broadcast(t, 0)

    def gather_rows(self, local: torch.Tensor, rows_per_class: int) -> torch.Tensor:
        """Concatenate every rank's class-major rows in rank order (= class order), on every rank."""
        if not self.communicates:
            return local
        sizes = [len(b) * rows_per_class for b in self.blocks()]
        # all_gather needs equal shapes: pad to the largest block, then cut each rank's part back.
        padded = local.new_zeros((max(sizes), *local.shape[1:]))
        padded[:len(local)] = local
        parts = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(parts, padded.contiguous())
        return torch.cat([p[:n] for p, n in zip(parts, sizes)])

    def gather_floats(self, value: float, device: torch.device | str = "cpu") -> list[float]:
        """One float from every rank, in rank order (through a tensor on ``device``: nccl needs CUDA)."""
        if not self.communicates:
            return [value]
        out = torch.zeros(self.world_size, dtype=torch.float64, device=device)
        out[self.rank] = value
        dist.all_reduce(out)
        return out.tolist()

    def barrier(self) -> None:
        if self.communicates:
            dist.barrier()


def launched_world() -> tuple[int, int]:
    """``(world_size, rank)`` from the environment torchrun sets; ``(1, 0)`` outside torchrun."""
    try:
        world, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
    except ValueError:
        raise ValueError(f"WORLD_SIZE={os.environ.get('WORLD_SIZE')!r} / RANK={os.environ.get('RANK')!r} must be "
                         f"integers (they are set by torchrun)") from None
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"RANK={rank} is not in WORLD_SIZE={world}")
    return world, rank


def join(world_size: int, rank: int, timeout_s: float = DEFAULT_TIMEOUT_S, backend: str = "gloo") -> None:
    """Join the process group torchrun describes (``env://``: MASTER_ADDR, MASTER_PORT, RANK, WORLD_SIZE).

    ``backend``: gloo for a run on CPUs, nccl for one on CUDA GPUs (one GPU per process,
    ``cuda:$LOCAL_RANK``; :func:`ddkernels.distill.device.dist_backend` picks it). Raises ``RuntimeError`` naming the rendezvous and ``--dist-timeout``
    when not every rank joins within ``timeout_s`` seconds (a node not started, a wrong
    ``--rdzv_endpoint``/``MASTER_ADDR``, a firewall).
    """
    if not timeout_s > 0:
        raise ValueError(f"--dist-timeout must be > 0 seconds, got {timeout_s!r}")
    if backend not in ("gloo", "nccl"):
        raise ValueError(f"dist backend must be 'gloo' or 'nccl', got {backend!r}")
    if dist.is_initialized():
        if dist.get_world_size() != world_size:
            raise RuntimeError(f"a process group of size {dist.get_world_size()} exists; this run needs {world_size}")
        return
    where = f"{os.environ.get('MASTER_ADDR', '?')}:{os.environ.get('MASTER_PORT', '?')}"
    try:
        dist.init_process_group(backend, rank=rank, world_size=world_size,
                                timeout=datetime.timedelta(seconds=timeout_s))
    except dist.DistError as err:
        raise RuntimeError(
            f"rank {rank} of {world_size}: not every rank joined the process group at {where} within "
            f"--dist-timeout {timeout_s:g} s ({err}). Start the same torchrun command on every node with matching "
            f"--nnodes/--nproc_per_node and a --rdzv_endpoint (or MASTER_ADDR/MASTER_PORT) they can all reach."
        ) from None


def leave() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


__all__ = ["DEFAULT_TIMEOUT_S", "Shard", "class_block", "join", "launched_world", "leave"]
