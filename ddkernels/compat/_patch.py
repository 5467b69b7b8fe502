"""``patch(module)``: swap the original functions/classes inside an already-imported user module."""
from __future__ import annotations

import inspect
import logging
import types
from dataclasses import dataclass, field
from typing import Callable, Iterable

from . import dsa
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
    alt_params: tuple = ()                # other repositories' parameter lists the replacement also takes
    choose: Callable | None = None        # original -> replacement, where it depends on the repository

    def replacement_for(self, original):
        return self.choose(original) if self.choose is not None else self.replacement


def _param_diff_aug_for(original) -> type:
    # mtt-distillation's / DatasetFactorization's copy adds ratio_noise and resamples with align_corners=True
    try:
        copy = hasattr(original(), "ratio_noise")
    except Exception:  # not constructible without arguments: not the original, _why_not said so already
        copy = False
    return dsa.MTTParamDiffAug if copy else dsa.ParamDiffAug


_DSA = "DatasetCondensation / mtt-distillation / DatasetFactorization utils.py"
_DC_CONVNET = ("channel", "num_classes", "net_width", "net_depth", "net_act", "net_norm", "net_pooling", "im_size")


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
    _Target("ConvNet", "DatasetCondensation / mtt-distillation networks.py (imported by utils.py)", _DC_CONVNET,
            ConvNet, "class", alt_params=(
                _DC_CONVNET + ("only_feat",),  # DatasetFactorization networks.py
                ("num_classes", "net_norm", "net_depth", "net_width", "channel", "net_act", "net_pooling",
                 "im_size"))),  # Efficient-Dataset-Condensation models/convnet.py
    _Target("DiffAugment", _DSA, ("x", "strategy", "seed", "param"), dsa.DiffAugment),
    _Target("ParamDiffAug", _DSA, (), dsa.ParamDiffAug, "class", choose=_param_diff_aug_for),
    _Target("set_seed_DiffAug", _DSA, ("param",), dsa.set_seed_DiffAug),
) + tuple(_Target(f"rand_{t}", _DSA, ("x", "param"), getattr(dsa, f"rand_{t}"))
          for t in ("scale", "rotate", "flip", "brightness", "saturation", "contrast", "crop", "cutout"))}


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
        if got not in (target.params,) + target.alt_params:
            return f"its parameters are {got}, {target.origin}'s {expect} takes {target.params}"
        return None
    if not inspect.isclass(obj):
        return f"it is a {type(obj).__name__}, not the class {target.name} of {target.origin}"
    if target.kind == "class":
        got = _leading_params(obj.__init__, True)
        if got not in (target.params,) + target.alt_params:
            alts = "".join(f" or {a}" for a in target.alt_params)
            return f"its __init__ takes {got}, {target.origin}'s {target.name} takes {target.params}{alts}"
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
    """What :func:`patch` did (or, with ``dry_run=True``, would do) to one module."""

    module: str
    patched: list[str]        # replaced (dry run: would be replaced)
    skipped: dict[str, str]   # present under a known name but not the original: name -> why
    absent: list[str]
    replacements: dict[str, str] = field(default_factory=dict)  # patched name -> what replaces it
    dry_run: bool = False

    def __str__(self) -> str:
        verb = "would patch" if self.dry_run else "patched"
        done = ", ".join(f"{n} -> {self.replacements[n]}" if n in self.replacements else n for n in self.patched)
        parts = [f"ddkernels.compat {verb} {self.module}: {done or 'nothing'}"]
        if self.skipped:
            parts.append("left alone: " + "; ".join(f"{k} ({v})" for k, v in self.skipped.items()))
        return ". ".join(parts)


def _describe(obj) -> str:
    if isinstance(obj, tuple):  # methods
        return ", ".join(_describe(o) for o in obj)
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', type(obj).__name__)}"


def patch(module: types.ModuleType, names: Iterable[str] | None = None, *, dry_run: bool = False) -> PatchReport:
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

    The DSA names (``DiffAugment``, ``ParamDiffAug``, ``set_seed_DiffAug``, ``rand_*``) go to
    :mod:`ddkernels.compat.dsa`; a ``ParamDiffAug`` with mtt-distillation's / DatasetFactorization's
    ``ratio_noise`` is replaced by :class:`~ddkernels.compat.dsa.MTTParamDiffAug` (their
    ``align_corners=True``). ``ConvNet`` is matched against the DatasetCondensation / mtt-distillation,
    DatasetFactorization and Efficient-Dataset-Condensation constructors.

    Args:
        dry_run: change nothing; the report lists what would be replaced, by what, and why anything
            is left alone (nothing matching raises no error then).

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
    replacements = {}
    for n in todo:
        t = TARGETS[n]
        if t.kind == "methods":
            replacements[n] = _describe(tuple(r for _, r in t.methods.values()))
        elif n in originals:
            replacements[n] = _describe(getattr(module, n))
        else:
            replacements[n] = _describe(t.replacement_for(getattr(module, n)))
    if dry_run:
        report = PatchReport(module.__name__, todo, skipped, absent, replacements, dry_run=True)
        log.info("%s", report)
        return report
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
            setattr(module, n, t.replacement_for(originals[n]))
    module.__dict__[_ORIGINALS] = originals
    report = PatchReport(module.__name__, todo, skipped, absent, replacements)
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
