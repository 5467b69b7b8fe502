"""Checks of run arguments, shared by the Python API and the CLI: each raises ``ValueError`` with one line
naming the option (as its command-line flag) and the values it allows, before any data is loaded."""
from __future__ import annotations

import numbers


def check_int(option: str, value, minimum: int | None = 1, *, optional: bool = False, note: str = "") -> None:
    """``value`` must be an int >= ``minimum`` (any int for ``None``; ``None`` too with ``optional``)."""
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int) or (minimum is not None and value < minimum):
        what = "an integer" if minimum is None else "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise ValueError(f"{option} must be {what}{note} (got {value!r})")


def check_positive_number(option: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value > 0:
        raise ValueError(f"{option} must be a positive number (got {value!r})")


def check_choice(option: str, value, choices) -> None:
    if value not in choices:
        raise ValueError(f"{option} must be one of {', '.join(map(str, choices))} (got {value!r})")


_KINDS = ((bool, "true or false"), (int, "an integer"), (float, "a number"), (str, "a string"),
          ((list, tuple), "a list"), (dict, "a mapping"))


def check_settings(defaults: dict, overrides: dict, what: str, others=()) -> dict:
    """``overrides`` (``--set KEY=VALUE``) checked against ``defaults`` (a preset): every key must be one of
    ``defaults`` and every value of its default's type, where an int is accepted for a float and becomes one.
    A default of ``None`` means "derived": then ``None`` is accepted too and the type is that of the first
    of ``others`` (the other presets) with a value for the key, any value where none has. ``zca`` takes
    false, true or a positive regularization (:func:`~ddkernels.distill.data.zca.zca_reg`). Returns the
    checked overrides; ``what`` names the kind of setting in messages (``dm hyperparameter``)."""
    unknown = sorted(set(overrides) - set(defaults))
    if unknown:
        raise ValueError(f"--set: unknown {what}(s) {unknown}; known: {sorted(defaults)}")
    checked = {}
    for key, value in overrides.items():
        candidates = [defaults[key]] + [o[key] for o in others if key in o]
        default = next((v for v in candidates if v is not None), None)
        if key == "zca":
            from .data.zca import zca_reg

            try:
                zca_reg(value)
            except ValueError:
                raise ValueError(f"--set zca must be false, true or a positive number (got {value!r})") from None
        elif default is not None and not (value is None and None in candidates):
            kind, name = next((k, n) for k, n in _KINDS if isinstance(default, k))
            if kind is float and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)  # JSON writes 1.0 as 1; an int learning rate would make int tensors
            if isinstance(value, bool) != (kind is bool) or not isinstance(value, kind):
                also = " or null" if None in candidates else ""
                raise ValueError(f"--set {key} must be {name}{also}, like the preset's {default!r} (got {value!r})")
        checked[key] = value
    return checked


__all__ = ["check_choice", "check_int", "check_positive_number", "check_settings"]
