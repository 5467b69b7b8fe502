"""Device discipline without a GPU: catch code that creates a tensor or a generator on the default
device instead of the run's.

On a CPU-only machine such code still works (the default device *is* the run's), and on a GPU it
fails or copies every step. :func:`strict_device` records every factory call (``torch.zeros``,
``torch.randperm``, ``torch.tensor``, ...) and every ``torch.Generator`` made directly by ddkernels'
code without an explicit ``device``, and fails the test naming each file and line. Calls made inside
PyTorch (a layer's own parameter init) are not ours and are not checked.
"""
from __future__ import annotations

import contextlib
import os
import sys

import torch
from torch.overrides import TorchFunctionMode

import ddkernels

PACKAGE = os.path.dirname(os.path.abspath(ddkernels.__file__)) + os.sep

FACTORIES = {torch.zeros, torch.ones, torch.empty, torch.full, torch.rand, torch.randn, torch.randint,
             torch.randperm, torch.arange, torch.tensor, torch.eye, torch.linspace, torch.logspace,
             torch.empty_strided, torch.scalar_tensor, torch.as_tensor}


def _ours(depth: int) -> str | None:
    """``file:line`` of the frame ``depth`` levels up when it is ddkernels' code, else None."""
    frame = sys._getframe(depth + 1)
    path = os.path.abspath(frame.f_code.co_filename)
    return f"{os.path.relpath(path, os.path.dirname(PACKAGE.rstrip(os.sep)))}:{frame.f_lineno}" if path.startswith(PACKAGE) else None


class _FactoryGuard(TorchFunctionMode):
    def __init__(self, found: list[str]):
        super().__init__()
        self.found = found

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in FACTORIES and kwargs.get("device") is None:
            from_tensor = func is torch.as_tensor and args and isinstance(args[0], torch.Tensor)
            where = None if from_tensor else _ours(1)
            if where:
                self.found.append(f"{where}: torch.{func.__name__}(...) without device=")
        return func(*args, **kwargs)


@contextlib.contextmanager
def strict_device():
    """Fail (on exit) if ddkernels created a tensor or generator without naming its device."""
    found: list[str] = []
    real = torch.Generator

    class Generator(real):
        def __new__(cls, device=None):
            if device is None:
                where = _ours(1)
                if where:
                    found.append(f"{where}: torch.Generator() without device=")
                return real.__new__(cls)
            return real.__new__(cls, device)

    torch.Generator = Generator
    try:
        with _FactoryGuard(found):
            yield found
    finally:
        torch.Generator = real
    if found:
        unique = sorted(set(found))
        raise AssertionError(f"{len(unique)} place(s) create tensors on the default device instead of the run's:\n  "
                             + "\n  ".join(unique))
