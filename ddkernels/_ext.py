"""Loading of the native extension (the CPU kernels; GPUs run Triton, see :mod:`ddkernels.dispatch`),
once, with a single warning when it is missing."""
from __future__ import annotations

import functools
import importlib
import os
import warnings


@functools.lru_cache(maxsize=None)
def load(name: str = "_C") -> tuple[bool, str]:
    """Import ``ddkernels.<name>``; return ``(loaded, reason_if_not)``.

    The import registers the extension's ops under ``torch.ops.ddkernels``. A missing extension
    warns once and leaves the reference backend in charge; it never fails the import of ddkernels.
    """
    if os.environ.get("DDKERNELS_NO_EXT", "0").lower() in ("1", "true", "yes", "on"):
        return False, "DDKERNELS_NO_EXT is set"
    try:
        importlib.import_module(f"ddkernels.{name}")
    except ImportError as e:
        reason = f"ddkernels.{name} is not built ({e}); build it with `make build` or `pip install --no-build-isolation -e .`"
        warnings.warn(f"ddkernels: {reason}. CPU calls fall back to the reference backend.", stacklevel=3)
        return False, reason
    return True, ""


def cpu_available() -> tuple[bool, str]:
    return load("_C")
