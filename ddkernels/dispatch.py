"""The single dispatch point: which backend runs a call, and why the others cannot.

Every public op owns one :class:`OpBackends`. Each backend declares what it supports (device,
dtype, plus per-call extra reasons from the op); for a call it answers *why not* as a list of
reasons. ``backend="auto"`` (or the ``DDKERNELS_BACKEND`` environment variable, which replaces
``auto``) takes the first backend, in the device's preference order, that has no reasons. An
explicit backend that cannot run the call raises :class:`BackendUnavailable` listing every reason.
The choice is made per call, so CPU and GPU tensors can be mixed freely.

GPUs are Triton's: every GPU kernel is a Triton kernel (``backend="triton"``, picked by ``auto`` for
CUDA tensors), and an op without one runs its reference (PyTorch) on GPUs. There is no separate
CUDA backend; the C++ extension holds the CPU kernels only.
"""
from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass, field
from typing import Callable, Iterable

import torch

from . import _ext

BACKENDS = ("reference", "cpu", "triton")
# Fastest first. Triton on CPU tensors runs in the interpreter (tests only), so auto never picks it.
AUTO_ORDER = {"cpu": ("cpu", "reference"), "cuda": ("triton", "reference")}
FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


class BackendUnavailable(RuntimeError):
    """An explicitly requested backend cannot run this call; the message lists every reason."""


def check_backend_name(backend: str, what: str = "backend") -> None:
    """Raise ValueError, naming ``what``, unless ``backend`` is ``"auto"`` or one of :data:`BACKENDS`."""
    if backend == "auto" or backend in BACKENDS:
        return
    raise ValueError(f"{what} must be one of 'auto', {', '.join(map(repr, BACKENDS))} "
                     f"(GPUs run 'triton'; there is no 'cuda' backend); got {backend!r}")


def triton_interpret() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _triton_importable() -> bool:
    return importlib.util.find_spec("triton") is not None


@dataclass(frozen=True)
class Backend:
    """What one backend of one op supports."""

    name: str
    devices: tuple[str, ...]
    dtypes: tuple[torch.dtype, ...]
    # Static reasons (missing extension, missing package, no kernel written), computed lazily.
    unavailable: Callable[[], list[str]] = field(default=lambda: [])
    # Reasons that depend on the device beyond its type (e.g. Triton on CPU needs the interpreter).
    device_reasons: Callable[[torch.device], list[str]] = field(default=lambda device: [])

    def why_not(self, device: torch.device, dtype: torch.dtype) -> list[str]:
        reasons = list(self.unavailable())
        if not self.devices:  # a backend the op does not implement: its own reason says it all
            return reasons
        if device.type not in self.devices:
            reasons.append(f"tensors are on {device.type}; supports {', '.join(self.devices) or 'nothing'}")
        else:
            reasons += self.device_reasons(device)
        if self.dtypes and dtype not in self.dtypes:
            names = ", ".join(str(d).replace("torch.", "") for d in self.dtypes)
            reasons.append(f"dtype {str(dtype).replace('torch.', '')} unsupported; supports {names}")
        return reasons


def reference_backend() -> Backend:
    return Backend("reference", ("cpu", "cuda", "mps", "xpu", "meta"), FLOATS)


def cpu_backend(dtypes: tuple[torch.dtype, ...] = (torch.float32, torch.float64)) -> Backend:
    def unavailable() -> list[str]:
        ok, why = _ext.cpu_available()
        return [] if ok else [why]

    return Backend("cpu", ("cpu",), dtypes, unavailable)


def triton_backend(dtypes: tuple[torch.dtype, ...] = FLOATS) -> Backend:
    def unavailable() -> list[str]:
        return [] if _triton_importable() else ["the triton package is not installed (pip install triton)"]

    def device_reasons(device: torch.device) -> list[str]:
        if device.type == "cpu" and not triton_interpret():
            return ["tensors are on cpu: Triton runs CPU tensors only in its interpreter "
                    "(TRITON_INTERPRET=1 set before importing triton; for tests)"]
        return []

    return Backend("triton", ("cuda", "cpu"), dtypes, unavailable, device_reasons)


def no_kernel(name: str, why: str) -> Backend:
    """A backend this op deliberately does not implement, with the reason users will see."""
    return Backend(name, (), (), lambda: [why])


def op_backends(op: str, *, triton: bool = True, gpu_note: str = "",
                cpu_dtypes: tuple[torch.dtype, ...] = (torch.float32, torch.float64)) -> "OpBackends":
    """The usual declaration: reference, the C++ CPU kernel (``cpu_dtypes``) and the Triton kernel;
    an op without a Triton kernel (``triton=False``) says in ``gpu_note`` what runs on GPUs instead."""
    assert triton or gpu_note, f"{op}: an op without a Triton kernel must say what runs on GPUs (gpu_note)"
    return OpBackends(op, [
        reference_backend(),
        cpu_backend(cpu_dtypes),
        triton_backend() if triton else no_kernel("triton", f"no Triton kernel for {op} ({gpu_note})"),
    ])


class OpBackends:
    """The backends of one op and the per-call choice among them."""

    registry: dict[str, "OpBackends"] = {}

    def __init__(self, op: str, backends: Iterable[Backend]):
        self.op = op
        self.backends = {b.name: b for b in backends}
        missing = set(BACKENDS) - set(self.backends)
        assert not missing, f"{op}: every backend must be declared (missing {missing})"
        OpBackends.registry[op] = self

    def reasons(self, name: str, device: torch.device, dtype: torch.dtype,
                extra: dict[str, list[str]] | None = None) -> list[str]:
        return self.backends[name].why_not(device, dtype) + list((extra or {}).get(name, ()))

    def select(self, backend: str, device: torch.device, dtype: torch.dtype,
               extra: dict[str, list[str]] | None = None) -> str:
        """Return the backend name that runs this call.

        ``extra`` maps a backend name to call-specific reasons it cannot run (e.g. a shape limit).
        """
        if not isinstance(backend, str):
            raise TypeError(f"backend must be a string, got {type(backend).__name__}")
        if backend == "auto":
            backend = os.environ.get("DDKERNELS_BACKEND", "auto") or "auto"
            check_backend_name(backend, "DDKERNELS_BACKEND")
        if backend == "auto":
            order = AUTO_ORDER.get(device.type, ("reference",))
            for name in order:
                if not self.reasons(name, device, dtype, extra):
                    return name
            tried = "; ".join(f"{n}: {', '.join(self.reasons(n, device, dtype, extra))}" for n in order)
            raise BackendUnavailable(f"{self.op}: no backend can run this call ({tried})")
        check_backend_name(backend)
        why = self.reasons(backend, device, dtype, extra)
        if why:
            raise BackendUnavailable(f"{self.op}: backend {backend!r} cannot run this call: " + "; ".join(why))
        return backend
