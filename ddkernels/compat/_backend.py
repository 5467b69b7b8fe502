"""The module-wide backend of :mod:`ddkernels.compat` (the originals' signatures have no ``backend``)."""
from __future__ import annotations

import contextlib
from typing import Iterator

from ..dispatch import check_backend_name

_backend = "auto"


def set_backend(name: str) -> None:
    """Backend every compat call uses unless it is given ``backend=`` (default ``"auto"``)."""
    global _backend
    check_backend_name(name)
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
