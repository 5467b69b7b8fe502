"""The one device a run computes on, and what is recorded about it.

Every trainer, the evaluation and the experts take ``device`` (``"auto"``, ``"cpu"``, ``"cuda"``,
``"cuda:N"`` or a :class:`torch.device`); :func:`resolve` turns it into a :class:`torch.device`
once, before any work, with one clear error when it cannot be used.

Randomness (docs/scaling.md, "Devices and seeds"): each stream of a run is a ``torch.Generator``
on the run's device (:func:`generator`), seeded as on CPU. A CPU run draws exactly what it always
drew; a CUDA run draws from CUDA's Philox generator, so it is reproducible for its device (and
GPU model), not equal to the CPU run. Fresh networks are initialised on the CPU from the CPU's
global RNG and then moved, so the same seed gives the same initial weights on every device.
A checkpoint resumed on another kind of device (a generator state's size tells which kind wrote it)
re-seeds each stream from ``(seed, iteration)`` (:func:`load_generator_state`) and says so.
"""
from __future__ import annotations

import os
import platform
import warnings

import numpy as np
import torch

DEVICE_CHOICES = ("auto", "cpu", "cuda", "cuda:N")


def resolve(device: str | torch.device | None = "auto", *, what: str = "device") -> torch.device:
    """The :class:`torch.device` a run uses; ``auto`` is ``cuda`` when one is visible, else ``cpu``.

    Under torchrun a bare ``cuda`` means this process's GPU, ``cuda:$LOCAL_RANK``. Raises
    ``ValueError`` naming ``what`` for anything else, and when CUDA is asked for but absent.
    """
    if device is None:
        device = "auto"
    if isinstance(device, torch.device):
        device = str(device)
    if not isinstance(device, str):
        raise ValueError(f"{what} must be one of {', '.join(DEVICE_CHOICES)}, got {device!r}")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ValueError(f"{what} must be one of {', '.join(DEVICE_CHOICES)}, got {device!r}") from None
    if dev.type == "cpu":
        return torch.device("cpu")
    if dev.type != "cuda":
        raise ValueError(f"{what} must be one of {', '.join(DEVICE_CHOICES)}, got {device!r} "
                         f"(the trainers run on CPUs and CUDA GPUs)")
    if not torch.cuda.is_available():
        why = ("this torch is a CPU-only build" if torch.version.cuda is None
               else "no CUDA GPU is visible (check CUDA_VISIBLE_DEVICES and the driver)")
        raise ValueError(f"{what} {device!r}: {why}; use {what} cpu")
    index = dev.index
    if index is None:
        index = int(os.environ.get("LOCAL_RANK", "0") or 0)
    if not 0 <= index < torch.cuda.device_count():
        raise ValueError(f"{what} {device!r}: GPU {index} does not exist; this machine has "
                         f"{torch.cuda.device_count()} (cuda:0 … cuda:{torch.cuda.device_count() - 1})")
    return torch.device("cuda", index)


def generator(device: torch.device, seed: int) -> torch.Generator:
    """A generator on ``device`` seeded with ``seed`` (on CPU: exactly ``torch.Generator().manual_seed(seed)``)."""
    return torch.Generator(device=device).manual_seed(seed)


def generator_state(gen: torch.Generator) -> torch.Tensor:
    """``gen``'s state for a checkpoint (as ``Generator.get_state``: the format checkpoints always had)."""
    return gen.get_state()


_CPU_STATE_BYTES = torch.Generator(device="cpu").get_state().numel()


def load_generator_state(gen: torch.Generator, state: torch.Tensor, *, seed: int, iteration: int,
                         name: str = "generator") -> bool:
    """Restore ``gen`` from :func:`generator_state` output. Returns True when restored exactly; when the
    checkpoint came from another kind of device (a CPU generator's state is a 5,056-byte Mersenne
    Twister state, a CUDA one's a 16-byte Philox seed and offset), re-seeds ``gen`` from ``(seed,
    iteration)``, warns, returns False."""
    kind = "cpu" if state.numel() == _CPU_STATE_BYTES else "cuda"
    if kind == gen.device.type:
        gen.set_state(state)
        return True
    mixed = int(np.random.SeedSequence([seed, iteration, 3]).generate_state(1, np.uint64)[0] >> np.uint64(1))
    gen.manual_seed(mixed)
    warnings.warn(f"{name}: the checkpoint's random state is a {kind} generator's and this run is on "
                  f"{gen.device.type}; the stream is re-seeded from (seed {seed}, iteration {iteration}), so "
                  f"the run continues reproducibly but does not draw what an uninterrupted {kind} run would",
                  stacklevel=2)
    return False


def describe(device: torch.device) -> dict:
    """What ``metrics.json``/``log.txt`` record about the device: its name, torch/CUDA/Triton versions,
    the CPU threads."""
    info = {"device": str(device), "torch": torch.__version__, "threads": torch.get_num_threads()}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(name=props.name, memory_gib=round(props.total_memory / 2 ** 30, 1),
                    capability=f"{props.major}.{props.minor}", cuda=torch.version.cuda)
    else:
        info["name"] = _cpu_model()
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    return info


def _cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo on Linux), else what the platform module knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def dist_backend(device: torch.device) -> str:
    """The torch.distributed backend for a run on ``device``: nccl for CUDA, gloo for CPU."""
    return "nccl" if device.type == "cuda" else "gloo"


__all__ = ["DEVICE_CHOICES", "describe", "dist_backend", "generator", "generator_state", "load_generator_state",
           "resolve"]
