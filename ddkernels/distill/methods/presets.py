"""Hyperparameters. Every method declares its own table beside its trainer (``PRESETS`` in its module:
``paper``, the original code's values, docs/spec.md §1b, §2b, §3, §4b and §5b; ``quick``, sized for a
2-core CPU, why in one line per entry and the tuning behind it in docs/methods.md).

``preset(method, dataset, ipc, name)`` returns a dict; every key can be overridden. Keys every
method has: ``zca`` (whiten the data, :mod:`ddkernels.distill.data.zca`; off in DC/DSA/DM/IDC's code),
``precision`` (``"fp32"``; ``"bf16"``/``"fp16"``: :mod:`ddkernels.distill.precision`) and the
``eval*`` keys of the evaluation protocol (:func:`ddkernels.distill.runs.eval_protocol`).
"""
from __future__ import annotations

from .registry import METHODS

DSA_STRATEGY = "color_crop_cutout_flip_scale_rotate"
GRAY = ("mnist", "fashion-mnist", "digits")


def get_loops(ipc: int) -> tuple[int, int]:
    """VICO ``get_loops``: (outer_loop, inner_loop) by IPC."""
    table = {1: (1, 1), 10: (10, 50), 20: (20, 25), 30: (30, 20), 40: (40, 15), 50: (50, 10)}
    if ipc in table:
        return table[ipc]
    # Other IPCs: VICO exits; use the nearest listed setting instead of failing.
    return table[min(table, key=lambda k: abs(k - ipc))]


def default_expert_dir(dataset: str, name: str) -> str:
    """Where ``ddkernels experts --dataset D --preset P`` is told to write by docs/methods.md."""
    return f"runs/experts-{dataset}-{name}"


def preset(method: str, dataset: str, ipc: int, name: str) -> dict:
    """The hyperparameters of ``method`` on ``dataset`` at ``ipc`` for preset ``name`` (a lookup in the
    method's ``PRESETS`` table)."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {', '.join(METHODS)}")
    table = METHODS[method].PRESETS
    if name not in table:
        raise ValueError(f"preset must be one of {tuple(table)}, got {name!r}")
    return table[name](dataset, ipc)


__all__ = ["DSA_STRATEGY", "GRAY", "default_expert_dir", "get_loops", "preset"]
