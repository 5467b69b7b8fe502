"""Atomic writes for run directories: a killed process never leaves a truncated file behind."""
from __future__ import annotations

import json
import os

import torch


def atomic_save(obj, path: str) -> None:
    """``torch.save`` to a temporary file in the same folder, then rename."""
    tmp = f"{path}.tmp-{os.getpid()}"
    torch.save(obj, tmp)
    os.replace(tmp, path)


def write_json(obj, path: str) -> None:
    """``json.dump`` (indent 2) to a temporary file in the same folder, then rename."""
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2)
    os.replace(tmp, path)


__all__ = ["atomic_save", "write_json"]
