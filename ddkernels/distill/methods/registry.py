"""The methods: each is a :class:`~ddkernels.distill.methods.Distiller` subclass declared in its own
module with :func:`register`, naming its parameterization, its objective and its preset table.
:data:`METHODS` and the preset names the CLI offers are read off those declarations."""
from __future__ import annotations

METHODS: dict = {}


def register(cls):
    """Add the method ``cls`` (a :class:`~ddkernels.distill.methods.Distiller` subclass) under ``cls.method``."""
    if not cls.method or cls.method in METHODS:
        raise ValueError(f"method name {cls.method!r} is empty or already registered")
    if not cls.PRESETS:
        raise ValueError(f"method {cls.method!r} declares no presets")
    METHODS[cls.method] = cls
    return cls


def preset_names() -> tuple[str, ...]:
    """The preset names every registered method has (in the first method's order)."""
    tables = [set(cls.PRESETS) for cls in METHODS.values()]
    first = next(iter(METHODS.values())).PRESETS
    return tuple(n for n in first if all(n in t for t in tables))


def method_table() -> list[tuple[str, str, str, tuple[str, ...]]]:
    """``(method, parameterization, objective, presets)`` per method (for docs/methods.md's table); a method
    with a choice of objectives lists them with the hp value that picks each."""
    rows = []
    for name, cls in METHODS.items():
        obj = cls.OBJECTIVE
        objective = (", ".join(f"{o.__name__} ({cls.OBJECTIVE_KEY}={k})" for k, o in obj.items())
                     if isinstance(obj, dict) else obj.__name__)
        rows.append((name, cls.PARAMETERIZATION.__name__, objective, tuple(cls.PRESETS)))
    return rows


def method_table_markdown() -> str:
    """:func:`method_table` as a Markdown table (docs/methods.md's)."""
    lines = ["| method | parameterization | objective | presets |", "|---|---|---|---|"]
    lines += [f"| {m} | {p} | {o} | {', '.join(n)} |" for m, p, o, n in method_table()]
    return "\n".join(lines)


__all__ = ["METHODS", "method_table", "method_table_markdown", "preset_names", "register"]
