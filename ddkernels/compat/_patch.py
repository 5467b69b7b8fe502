"""``patch(module)``: swap the original functions/classes inside an already-imported user module."""
from __future__ import annotations

import inspect
import logging
import types
from dataclasses import dataclass, field
from typing import Callable, Iterable

from .convnet import ConvNet
from .dc import distance_wb, match_loss
from .haba import StyleTranslator
from .idc import decode_zoom, decode_zoom_multi, dist

log = logging.getLogger("ddkernels.compat")
_ORIGINALS = "__ddkernels_compat_originals__"


def _synth_decode_zoom(self, img, target, factor):
    return decode_zoom(img, target, factor, tuple(self.size))


def _synth_decode_zoom_multi(self, img, target, factor_max):
    return decode_zoom_multi(img, target, factor_max, tuple(self.size))


_synth_decode_zoom.__doc__ = "ddkernels.compat: " + (decode_zoom.__doc__ or "")
_synth_decode_zoom_multi.__doc__ = "ddkernels.compat: " + (decode_zoom_multi.__doc__ or "")


@dataclass(frozen=True)
class _Target:
    """One name the patcher knows: what the original looks like and what replaces it."""

    name: str
    origin: str                           # where the original lives, for messages
    params: tuple[str, ...]               # the original's positional parameters (after self), exactly
    replacement: object
    kind: str = "function"                # "function", "class" (matched on __init__) or "methods"
    methods: dict = field(default_factory=dict)   # kind "methods": method name -> (params, replacement)


TARGETS = {t.name: t for t in (
    _Target("distance_wb", "DatasetCondensation utils.py", ("gwr", "gws"), distance_wb),
    _Target("match_loss", "DatasetCondensation utils.py", ("gw_syn", "gw_real", "args"), match_loss),
    _Target("dist", "Efficient-Dataset-Condensation condense.py", ("x", "y", "method"), dist),
    _Target("decode_zoom", "a module-level IDC decode_zoom", ("img", "target", "factor"), decode_zoom),
    _Target("decode_zoom_multi", "a module-level IDC decode_zoom_multi", ("img", "target", "factor_max"),
            decode_zoom_multi),
    _Target("StyleTranslator", "DatasetFactorization utils.py",
            ("in_channel", "mid_channel", "out_channel", "image_size", "kernel_size"), StyleTranslator, "class"),
    _Target("Synthesizer", "Efficient-Dataset-Condensation condense.py", (), None, "methods",
            {"decode_zoom": (("img", "target", "factor"), _synth_decode_zoom),
             "decode_zoom_multi": (("img", "target", "factor_max"), _synth_decode_zoom_multi)}),
    _Target("ConvNet", "DatasetCondensation networks.py (imported by utils.py)",
            ("channel", "num_classes", "net_width", "net_depth", "net_act", "net_norm", "net_pooling", "im_size"),
            ConvNet, "class"),
)}


class PatchError(RuntimeError):
    """``patch`` found nothing it can replace, or a requested name is missing or not the original."""


def _leading_params(fn: Callable, skip_self: bool) -> tuple[str, ...] | None:
    try:
        ps = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return None
    ps = [p for p in ps if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return tuple(p.name for p in (ps[1:] if skip_self else ps))


def _why_not(target: _Target, obj) -> str | None:
    """None when ``obj`` looks like the original, else the reason it does not."""
    expect = f"{target.name}({', '.join(target.params)})"
    if target.kind == "function":
        if isinstance(obj, types.ModuleType):
            return f"it is the module {obj.__name__}, not {target.origin}'s {expect}"
        if not inspect.isfunction(obj):
            return f"it is a {type(obj).__name__}, not a function {expect}"
        got = _leading_params(obj, False)
        if got != target.params:
            return f"its parameters are {got}, {target.origin}'s {expect} takes {target.params}"
        return None
    if not inspect.isclass(obj):
        return f"it is a {type(obj).__name__}, not the class {target.name} of {target.origin}"
    if target.kind == "class":
        got = _leading_params(obj.__init__, True)
        if got != target.params:
            return f"its __init__ takes {got}, {target.origin}'s {target.name} takes {target.params}"
        return None
    for meth, (params, _) in target.methods.items():
        fn = getattr(obj, meth, None)
        if not inspect.isfunction(fn):
            return f"the class has no method {meth}"
        got = _leading_params(fn, True)
        if got != params:
            return f"its {meth} takes {got}, {target.origin}'s takes {params}"
    return None


@dataclass
class PatchReport:
    """What :func:`patch` did to one module."""

    module: str
    patched: list[str]
    skipped: dict[str, str]   # present under a known name but not the original: name -> why
    absent: list[str]

    def __str__(self) -> str:
        parts = [f"ddkernels.compat patched {self.module}: {', '.join(self.patched) or 'nothing'}"]
        if self.skipped:
            parts.append("left alone: " + "; ".join(f"{k} ({v})" for k, v in self.skipped.items()))
        return ". ".join(parts)


def patch(module: types.ModuleType, names: Iterable[str] | None = None) -> PatchReport:
    """Replace the original distillation functions inside an imported module with ddkernels' fused ones.

    ``import ddkernels.compat; ddkernels.compat.patch(utils)`` is the whole change for a training
    script forked from DatasetCondensation (``distance_wb``, ``match_loss``, ``ConvNet``), Efficient-Dataset-
    Condensation (``dist``, the ``Synthesizer`` decodes) or DatasetFactorization (``StyleTranslator``).
    Patch the module the training code looks the names up in: a script that ran
    ``from utils import *`` holds its own copies, so patch that script's module
    (``sys.modules["__main__"]``) or patch ``utils`` before the star import. Classes are swapped for
    objects created afterwards; ``Synthesizer``'s methods are swapped on the class itself.

    Each name is checked against the original's signature (a ``dist`` that is ``torch.distributed``
    is left alone). With ``names=None`` every known name that matches is patched, mismatches are
    reported (logged as warnings) and, if nothing matches, :class:`PatchError` names everything it
    looked for. With explicit ``names`` it patches all of them or nothing, naming what is missing.
    Patching twice is harmless; :func:`unpatch` restores the originals.

    Returns:
        A :class:`PatchReport` (also logged on the ``ddkernels.compat`` logger at INFO).
    """
    if not isinstance(module, types.ModuleType):
        raise TypeError(f"module must be an imported module (e.g. `import utils; patch(utils)`), "
                        f"got {type(module).__name__}")
    explicit = names is not None
    wanted = list(names) if explicit else list(TARGETS)
    unknown = [n for n in wanted if n not in TARGETS]
    if unknown:
        raise PatchError(f"ddkernels.compat has no replacement for {', '.join(unknown)}; it knows {', '.join(TARGETS)}")
    originals = module.__dict__.get(_ORIGINALS, {})
    todo, skipped, absent = [], {}, []
    for n in wanted:
        if n in originals or f"{n}.decode_zoom" in originals:
            todo.append(n)  # already patched: keep the first original
            continue
        if not hasattr(module, n):
            absent.append(n)
            continue
        why = _why_not(TARGETS[n], getattr(module, n))
        if why is None:
            todo.append(n)
        else:
            skipped[n] = why
    if explicit and (absent or skipped):
        problems = [f"{n} (not found)" for n in absent] + [f"{n} ({why})" for n, why in skipped.items()]
        raise PatchError(f"refusing to patch {module.__name__}: {'; '.join(problems)}. Nothing was patched.")
    if not todo:
        detail = "; ".join(f"{n}: {why}" for n, why in skipped.items())
        raise PatchError(f"refusing to patch {module.__name__}: it has none of {', '.join(TARGETS)} in the form of "
                         f"the original code" + (f" ({detail})" if detail else "") + ". Nothing was patched.")
    for n in todo:
        t = TARGETS[n]
        if t.kind == "methods":
            cls = getattr(module, n)
            for meth, (_, repl) in t.methods.items():
                key = f"{n}.{meth}"
                if key not in originals:
                    # None: the method was inherited; unpatch deletes ours instead of restoring
                    originals[key] = (cls, cls.__dict__.get(meth))
                    setattr(cls, meth, repl)
        elif n not in originals:
            originals[n] = getattr(module, n)
            setattr(module, n, t.replacement)
    module.__dict__[_ORIGINALS] = originals
    report = PatchReport(module.__name__, todo, skipped, absent)
    log.info("%s", report)
    for n, why in skipped.items():
        log.warning("ddkernels.compat left %s.%s alone: %s", module.__name__, n, why)
    return report


def unpatch(module: types.ModuleType) -> list[str]:
    """Restore every original :func:`patch` replaced in ``module``; returns the restored names."""
    originals = module.__dict__.pop(_ORIGINALS, {})
    for key, orig in originals.items():
        if isinstance(orig, tuple):  # a method: (class, its own function or None when inherited)
            cls, fn = orig
            if fn is None:
                delattr(cls, key.split(".", 1)[1])
            else:
                setattr(cls, key.split(".", 1)[1], fn)
        else:
            setattr(module, key, orig)
    if originals:
        log.info("ddkernels.compat restored %s in %s", ", ".join(originals), module.__name__)
    return list(originals)


def patched(module: types.ModuleType) -> list[str]:
    """The names currently patched in ``module``."""
    return list(module.__dict__.get(_ORIGINALS, {}))


__all__ = ["PatchError", "PatchReport", "TARGETS", "patch", "patched", "unpatch"]
