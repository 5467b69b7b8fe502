"""The DSA of VICO-UoE/DatasetCondensation ``utils.py`` (and of its copies in
GeorgeCazenavette/mtt-distillation and Huage001/DatasetFactorization ``utils.py``) on ddkernels' DSA
(:mod:`ddkernels.augment`, docs/spec.md §0.3).

Same names and signatures — ``DiffAugment(x, strategy='', seed=-1, param=None)``, ``ParamDiffAug``,
``set_seed_DiffAug(param)``, ``rand_{scale,rotate,flip,brightness,saturation,contrast,crop,cutout}(x,
param)`` — and the same random protocol, draw for draw: ``seed=-1`` draws from the global RNG;
any other seed sets ``param.Siamese`` (``param.batchmode`` in the copies; both are set) and reseeds
the global RNG with ``seed, seed + 1, …`` before every draw (``param.latestseed``), so a real and a
synthetic call given the same seed get the same transform (Siamese augmentation). Every draw has the
original's shape, dtype and device, so the same global RNG state gives the same images.

What differs: the parameters are applied vectorized (no per-image Python lists for the affine
matrices, no index grids), a Siamese draw is broadcast from the first image instead of copied over
the batch in place — the original's ``randb[:] = randb[0]`` raises on current PyTorch for a batch of
one (IPC 1) —, the result has plain NCHW strides — the original's 1-channel ``crop`` output keeps
channels_last-like strides that current PyTorch's conv propagates, so the original ``ConvNet``'s
``view`` raises on (Fashion-)MNIST — and unknown strategies or modes raise ``ValueError`` (the
original calls ``exit`` or fails on a ``KeyError``).

The one difference between the repositories: mtt-distillation and DatasetFactorization resample
``scale``/``rotate`` with ``align_corners=True``, VICO with PyTorch's default (``False``). A
:class:`ParamDiffAug` carries it (``align_corners``); a ``ParamDiffAug`` of the original code does
not, and is read as the copies' when it has their extra ``ratio_noise`` attribute.
"""
from __future__ import annotations

import math
from typing import Callable

import torch

from ..augment import GROUPS, apply_transform
from ..nn.convnet import nchw


class ParamDiffAug:
    """The original ``ParamDiffAug()``: the DSA constants, ``aug_mode`` ``'S'`` (one group per call)
    or ``'M'`` (every group, in order). ``align_corners`` (keyword only): VICO's ``False``."""

    def __init__(self, *, align_corners: bool = False):
        self.aug_mode = "S"
        self.prob_flip = 0.5
        self.ratio_scale = 1.2
        self.ratio_rotate = 15.0
        self.ratio_crop_pad = 0.125
        self.ratio_cutout = 0.5  # the cut-out square is 0.5 × 0.5 of the image
        self.brightness = 1.0
        self.saturation = 2.0
        self.contrast = 0.5
        self.align_corners = align_corners
        self.latestseed = -1
        self.Siamese = self.batchmode = False


class MTTParamDiffAug(ParamDiffAug):
    """mtt-distillation's / DatasetFactorization's ``ParamDiffAug()``: VICO's, plus the unused
    ``ratio_noise``, resampling with ``align_corners=True``."""

    def __init__(self, *, align_corners: bool = True):
        super().__init__(align_corners=align_corners)
        self.ratio_noise = 0.05


def _align_corners(param) -> bool:
    ac = getattr(param, "align_corners", None)
    return hasattr(param, "ratio_noise") if ac is None else bool(ac)


def _siamese(param) -> bool:
    return bool(getattr(param, "Siamese", getattr(param, "batchmode", False)))


def set_seed_DiffAug(param) -> None:
    """Before each draw: reseed the global RNG with ``param.latestseed`` and advance it (``-1``: no-op)."""
    if param.latestseed != -1:
        torch.random.manual_seed(param.latestseed)
        param.latestseed += 1


def _generator(device: torch.device) -> torch.Generator | None:
    if device.type == "cpu":
        return torch.default_generator
    if device.type == "cuda":
        return torch.cuda.default_generators[device.index if device.index is not None else torch.cuda.current_device()]
    return None


_last_reseeded: list = [None]  # the generator the latest reseeded draw used (None: all were reseeded)


def _draw(param, sample: Callable[[], torch.Tensor], device: torch.device) -> torch.Tensor:
    """One of the original's draws: with a seed, reseed first — only the generator the draw uses
    (``torch.random.manual_seed`` reseeds every device, ~0.2 ms each on CPU); :func:`_settled` then
    leaves the global RNG as the original's per-draw reseeds would."""
    if param.latestseed != -1:
        gen = _generator(device)
        if gen is None:
            torch.random.manual_seed(param.latestseed)
        else:
            gen.manual_seed(param.latestseed)
        _last_reseeded[0] = gen
        param.latestseed += 1
    t = sample()
    return t[:1] if _siamese(param) else t  # Siamese: the first image's draw, broadcast by the transform


def _settled(param, fn):
    """Run ``fn`` and, if it reseeded, leave the generators as the original leaves them: every one
    seeded with the last seed (the original reseeds all before each draw), but the one the last
    draw used, which stays as that draw left it."""
    first = param.latestseed
    _last_reseeded[0] = None
    out = fn()
    gen = _last_reseeded[0]
    if first != -1 and param.latestseed != first and gen is not None:
        state = gen.get_state()
        torch.random.manual_seed(param.latestseed - 1)
        gen.set_state(state)
    return out


_CPU = torch.device("cpu")


def _scale(x: torch.Tensor, param) -> torch.Tensor:
    r, n = param.ratio_scale, x.shape[0]
    sx = _draw(param, lambda: torch.rand(n) * (r - 1.0 / r) + 1.0 / r, _CPU)
    sy = _draw(param, lambda: torch.rand(n) * (r - 1.0 / r) + 1.0 / r, _CPU)
    theta = torch.zeros(sx.shape[0], 2, 3)
    theta[:, 0, 0], theta[:, 1, 1] = sx, sy
    return apply_transform("scale", x, {"theta": theta.to(x.device)}, align_corners=_align_corners(param))


def _rotate(x: torch.Tensor, param) -> torch.Tensor:
    n = x.shape[0]
    # the original's operation order, so the float32 angles are bit-identical
    phi = _draw(param, lambda: (torch.rand(n) - 0.5) * 2 * param.ratio_rotate / 180 * math.pi, _CPU)
    theta = torch.zeros(phi.shape[0], 2, 3)
    theta[:, 0, 0], theta[:, 0, 1] = phi.cos(), (-phi).sin()
    theta[:, 1, 0], theta[:, 1, 1] = phi.sin(), phi.cos()
    return apply_transform("rotate", x, {"theta": theta.to(x.device)}, align_corners=_align_corners(param))


def _flip(x: torch.Tensor, param) -> torch.Tensor:
    u = _draw(param, lambda: torch.rand(x.shape[0], 1, 1, 1, device=x.device), x.device)
    return apply_transform("flip", x, {"flip": u.view(-1) < param.prob_flip})


def _uniform(x: torch.Tensor, param) -> torch.Tensor:
    return _draw(param, lambda: torch.rand(x.shape[0], 1, 1, 1, dtype=x.dtype, device=x.device), x.device).view(-1)


def _brightness(x: torch.Tensor, param) -> torch.Tensor:
    return apply_transform("brightness", x, {"shift": (_uniform(x, param) - 0.5) * param.brightness})


def _saturation(x: torch.Tensor, param) -> torch.Tensor:
    return apply_transform("saturation", x, {"factor": _uniform(x, param) * param.saturation})


def _contrast(x: torch.Tensor, param) -> torch.Tensor:
    return apply_transform("contrast", x, {"factor": _uniform(x, param) + param.contrast})


def _randint(x: torch.Tensor, param, low: int, high: int) -> torch.Tensor:
    return _draw(param, lambda: torch.randint(low, high, size=[x.shape[0], 1, 1], device=x.device), x.device).view(-1)


def _crop(x: torch.Tensor, param) -> torch.Tensor:
    sh, sw = int(x.shape[2] * param.ratio_crop_pad + 0.5), int(x.shape[3] * param.ratio_crop_pad + 0.5)
    dy = _randint(x, param, -sh, sh + 1)
    dx = _randint(x, param, -sw, sw + 1)
    return apply_transform("crop", x, {"dy": dy, "dx": dx})


def _cutout(x: torch.Tensor, param) -> torch.Tensor:
    ch, cw = int(x.shape[2] * param.ratio_cutout + 0.5), int(x.shape[3] * param.ratio_cutout + 0.5)
    oy = _randint(x, param, 0, x.shape[2] + 1 - ch % 2)
    ox = _randint(x, param, 0, x.shape[3] + 1 - cw % 2)
    return apply_transform("cutout", x, {"oy": oy, "ox": ox, "size": torch.tensor([ch, cw])})


_TRANSFORMS = {"scale": _scale, "rotate": _rotate, "flip": _flip, "brightness": _brightness,
               "saturation": _saturation, "contrast": _contrast, "crop": _crop, "cutout": _cutout}


def _public(name: str):
    fn = _TRANSFORMS[name]

    def rand(x: torch.Tensor, param) -> torch.Tensor:
        return _settled(param, lambda: fn(x, param))

    rand.__name__ = rand.__qualname__ = f"rand_{name}"
    rand.__doc__ = (f"The original ``rand_{name}(x, param)``: one draw set (Siamese per ``param.Siamese``, "
                    f"reseeded from ``param.latestseed``), applied.")
    return rand


rand_scale, rand_rotate, rand_flip, rand_brightness = (_public(n) for n in ("scale", "rotate", "flip", "brightness"))
rand_saturation, rand_contrast, rand_crop, rand_cutout = (_public(n) for n in ("saturation", "contrast", "crop", "cutout"))
AUGMENT_FNS = {g: [globals()[f"rand_{t}"] for t in ts] for g, ts in GROUPS.items()}


def DiffAugment(x: torch.Tensor, strategy: str = "", seed: int = -1, param=None) -> torch.Tensor:
    """The original ``DiffAugment``: ``strategy`` is groups joined by ``_`` (``color``, ``crop``,
    ``cutout``, ``flip``, ``scale``, ``rotate``; ``''``/``'none'``/``'None'``: ``x`` itself); ``seed``
    ``-1`` for fresh per-image draws, else the Siamese seed; ``param`` a :class:`ParamDiffAug`
    (or the original's)."""
    if strategy in ("", "none", "None"):
        return x
    if param is None:
        raise TypeError("param must be a ParamDiffAug (DiffAugment(x, strategy, seed, param=ParamDiffAug()))")
    groups = strategy.split("_")
    bad = [g for g in groups if g not in AUGMENT_FNS]
    if bad:
        raise ValueError(f"strategy {strategy!r}: unknown group(s) {bad}; expected groups of {sorted(AUGMENT_FNS)}")
    if param.aug_mode not in ("S", "M"):
        raise ValueError(f"param.aug_mode must be 'S' or 'M', got {param.aug_mode!r}")
    param.Siamese = param.batchmode = seed != -1
    param.latestseed = seed
    return _settled(param, lambda: _augment(x, groups, param))


def _augment(x: torch.Tensor, groups: list[str], param) -> torch.Tensor:
    if param.aug_mode == "S":
        pick = _draw(param, lambda: torch.randint(0, len(groups), size=(1,)), _CPU)
        groups = [groups[pick.item()]]
    for g in groups:
        for t in GROUPS[g]:
            x = _TRANSFORMS[t](x, param)
    # Plain NCHW strides: the original's .contiguous() keeps a 1-channel crop's channels_last-like
    # strides, current PyTorch's conv keeps them, and the original ConvNet's .view then raises.
    # (Only then: the two views would be two more autograd nodes.)
    x = x.contiguous()
    c, h, w = x.shape[1:]
    return x if x.stride() == (c * h * w, h * w, w, 1) else nchw(x)


__all__ = ["AUGMENT_FNS", "DiffAugment", "MTTParamDiffAug", "ParamDiffAug", "rand_brightness", "rand_contrast",
           "rand_crop", "rand_cutout", "rand_flip", "rand_rotate", "rand_saturation", "rand_scale",
           "set_seed_DiffAug"]
