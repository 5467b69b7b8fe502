"""The module-wide backend of :mod:`ddkernels.compat` (the originals' signatures have no ``backend``)."""
from __future__ import annotations

import contextlib
from typing import Iterator

from ..dispatch import BACKENDS

_CHOICES = ("auto",) + BACKENDS
_backend = "auto"


def set_backend(name: str) -> None:
    """Backend every compat call uses unless it is given ``backend=`` (default ``"auto"``)."""
    global _backend
    if name not in _CHOICES:
        raise ValueError(f"backend must be one of {', '.join(map(repr, _CHOICES))}, got {name!r}")
    _backend = name


def get_backend() -> str:
    return _backend


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """``with use_backend("reference"): ...`` — the module-wide backend for a block, then restored."""
    old = _backend
    set_backend(name)
    try:
        yield
    finally:
        set_backend(old)


def resolve(backend: str | None) -> str:
    return _backend if backend is None else backend
