"""Atomic writes for run directories: a killed process never leaves a truncated file behind."""
from __future__ import annotations

import json
import os

import torch


def atomic_save(obj, path: str, *, keep_previous: str | None = None) -> None:
    """``torch.save`` to a temporary file in the same folder, then rename. With ``keep_previous``, the file
    ``path`` held so far is first renamed to ``keep_previous`` (a second, older copy to fall back to)."""
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        torch.save(obj, tmp)
    except BaseException:  # Ctrl-C or a full disk mid-write: leave no half-written temporary behind
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    if keep_previous is not None and os.path.exists(path):
        os.replace(path, keep_previous)
    os.replace(tmp, path)


def write_json(obj, path: str) -> None:
    """``json.dump`` (indent 2) to a temporary file in the same folder, then rename."""
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2)
    os.replace(tmp, path)


__all__ = ["atomic_save", "write_json"]
