"""Atomic writes for run directories: a killed process never leaves a truncated file behind."""
from __future__ import annotations

import contextlib
import json
import os
import signal
import threading

import torch


@contextlib.contextmanager
def interrupts_deferred():
    """Hold Ctrl-C back until the block has run (then raise ``KeyboardInterrupt``): for renames that belong
    together and the bookkeeping that names their result. Only in the main thread with Python's own
    SIGINT handler installed; anywhere else the block runs as it is."""
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield
        return
    caught = []
    signal.signal(signal.SIGINT, lambda *args: caught.append(args))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if caught:
        raise KeyboardInterrupt


def atomic_save(obj, path: str, *, keep_previous: str | None = None, then=None) -> None:
    """``torch.save`` to a temporary file in the same folder, then rename. With ``keep_previous``, the file
    ``path`` held so far is first renamed to ``keep_previous`` (a second, older copy to fall back to).
    ``then()`` runs with the renames, before a Ctrl-C during them is raised."""
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        torch.save(obj, tmp)
    except BaseException:  # Ctrl-C or a full disk mid-write: leave no half-written temporary behind
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    with interrupts_deferred():
        if keep_previous is not None and os.path.exists(path):
            os.replace(path, keep_previous)
        os.replace(tmp, path)
        if then is not None:
            then()


def write_json(obj, path: str) -> None:
    """``json.dump`` (indent 2) to a temporary file in the same folder, then rename."""
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2)
    os.replace(tmp, path)


__all__ = ["atomic_save", "interrupts_deferred", "write_json"]
