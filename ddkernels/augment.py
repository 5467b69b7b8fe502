"""Differentiable Siamese augmentation (DSA) with explicit parameters, and IDC's DiffAug order.

docs/spec.md §0.3 (VICO ``DiffAugment``) and §1a (IDC ``DiffAug``). Pure torch, so the kernel
library (:mod:`ddkernels.compat`'s drop-in ``DiffAugment``) and the framework
(:mod:`ddkernels.distill.data.augment`, which re-exports these names) share one implementation. The original
code makes real and synthetic batches share parameters by reseeding the RNG before every draw; here
parameters are sampled once as tensors and applied to any number of batches::

    aug = DiffAugment("color_crop_cutout_flip_scale_rotate")
    p = aug.sample(1, (h, w))                           # one parameter set (Siamese)
    real_a, syn_a = aug.apply(real, p), aug.apply(syn, p)
    x_a = aug(x)                                        # fresh per-sample parameters

A parameter tensor has a leading dim of 1 (broadcast to every image: Siamese) or of the batch size
(per sample). Every transform is differentiable in the images; none is differentiable in its
parameters (they are integers or sampled constants).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

Params = list[tuple[str, dict[str, torch.Tensor]]]

TRANSFORMS = ("flip", "brightness", "saturation", "contrast", "scale", "rotate", "crop", "cutout")
GROUPS = {"color": ("brightness", "saturation", "contrast"), "flip": ("flip",), "scale": ("scale",),
          "rotate": ("rotate",), "crop": ("crop",), "cutout": ("cutout",)}
MODES = ("single", "idc")


@dataclass(frozen=True)
class DSAConfig:
    """ParamDiffAug constants of the original code (docs/spec.md §0.3)."""

    prob_flip: float = 0.5
    ratio_scale: float = 1.2
    ratio_rotate: float = 15.0
    ratio_crop_pad: float = 0.125
    ratio_cutout: float = 0.5
    brightness: float = 1.0
    saturation: float = 2.0
    contrast: float = 0.5


def _device_of(gen: torch.Generator | None):
    # A scalar draw lands on its generator's device (a CUDA generator cannot fill a CPU tensor).
    return gen.device if gen is not None else None


def _rand(n, gen, device):
    return torch.rand(n, generator=gen, device=device)


def sample_transform(name: str, n: int, size: tuple[int, int], *, config: DSAConfig = DSAConfig(),
                     generator: torch.Generator | None = None, device="cpu") -> dict[str, torch.Tensor]:
    """Draw ``n`` parameter sets of one transform (``n = 1``: shared by a whole batch)."""
    h, w = size
    cfg, g = config, generator
    if name == "flip":
        return {"flip": _rand(n, g, device) < cfg.prob_flip}
    if name == "brightness":
        return {"shift": (_rand(n, g, device) - 0.5) * cfg.brightness}
    if name == "saturation":
        return {"factor": _rand(n, g, device) * cfg.saturation}
    if name == "contrast":
        return {"factor": _rand(n, g, device) + cfg.contrast}
    if name == "scale":
        lo, hi = 1.0 / cfg.ratio_scale, cfg.ratio_scale
        sx, sy = _rand(n, g, device) * (hi - lo) + lo, _rand(n, g, device) * (hi - lo) + lo
        zero = torch.zeros_like(sx)
        return {"theta": torch.stack([torch.stack([sx, zero, zero], 1), torch.stack([zero, sy, zero], 1)], 1)}
    if name == "rotate":
        phi = (_rand(n, g, device) - 0.5) * 2 * cfg.ratio_rotate * math.pi / 180
        cos, sin, zero = phi.cos(), phi.sin(), torch.zeros_like(phi)
        return {"theta": torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)}
    if name == "crop":
        sh, sw = int(h * cfg.ratio_crop_pad + 0.5), int(w * cfg.ratio_crop_pad + 0.5)
        return {"dy": torch.randint(-sh, sh + 1, (n,), generator=g, device=device),
                "dx": torch.randint(-sw, sw + 1, (n,), generator=g, device=device)}
    if name == "cutout":
        ch, cw = int(h * cfg.ratio_cutout + 0.5), int(w * cfg.ratio_cutout + 0.5)
        return {"oy": torch.randint(0, h + 1 - ch % 2, (n,), generator=g, device=device),
                "ox": torch.randint(0, w + 1 - cw % 2, (n,), generator=g, device=device),
                "size": torch.tensor([ch, cw], device=device)}
    raise ValueError(f"unknown transform {name!r}; expected one of {TRANSFORMS}")


def _per_image(t: torch.Tensor) -> torch.Tensor:
    return t.view(-1, 1, 1, 1)


def _affine(x: torch.Tensor, theta: torch.Tensor, align_corners: bool) -> torch.Tensor:
    # Bilinear resample with zero padding; VICO uses PyTorch's default align_corners=False
    # (docs/spec.md §0.3), mtt-distillation's and DatasetFactorization's copies pass True.
    theta = theta.to(x.dtype).expand(x.shape[0], 2, 3)
    grid = F.affine_grid(theta, list(x.shape), align_corners=align_corners)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=align_corners)


def _crop(x: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor) -> torch.Tensor:
    # "crop" is a translation: pad by one zero pixel and read clamped source indices, so pixels
    # shifted out of the frame read the zero border (VICO rand_crop), as two gathers on NCHW (the
    # original's advanced indexing through a channels_last permute is ~1.5-8x slower, forward and
    # backward). One shift for the whole batch (Siamese) on CPU is the same zero-filled translation
    # as a pad and a slice (int() of a GPU tensor would wait for the device; there the gathers run).
    n, c, h, w = x.shape
    if dy.numel() == 1 and dx.numel() == 1 and x.device.type == "cpu":
        sy, sx = int(dy), int(dx)
        py, px = abs(sy), abs(sx)
        return F.pad(x, (px, px, py, py))[:, :, py + sy:py + sy + h, px + sx:px + sx + w]
    xp = F.pad(x, (1, 1, 1, 1))
    rows = (torch.arange(h, device=x.device) + dy.view(-1, 1) + 1).clamp(0, h + 1).expand(n, h)
    cols = (torch.arange(w, device=x.device) + dx.view(-1, 1) + 1).clamp(0, w + 1).expand(n, w)
    xr = xp.gather(2, rows.view(n, 1, h, 1).expand(n, c, h, w + 2))
    return xr.gather(3, cols.view(n, 1, 1, w).expand(n, c, h, w))


def _cutout_mask(oy, ox, size, h, w, dtype) -> torch.Tensor:
    ch, cw = int(size[0]), int(size[1])
    r = torch.arange(h, device=oy.device).view(1, h) - (oy.view(-1, 1) - ch // 2)
    c = torch.arange(w, device=ox.device).view(1, w) - (ox.view(-1, 1) - cw // 2)
    inside = ((r >= 0) & (r < ch))[:, :, None] & ((c >= 0) & (c < cw))[:, None, :]
    return (~inside).to(dtype).unsqueeze(1)


def apply_transform(name: str, x: torch.Tensor, p: dict[str, torch.Tensor], *,
                    align_corners: bool = False) -> torch.Tensor:
    """Apply one transform with explicit parameters (leading dim 1 or ``x.shape[0]``);
    ``align_corners`` is for ``scale``/``rotate`` only."""
    if name == "flip":
        return torch.where(_per_image(p["flip"]), x.flip(3), x)
    if name == "brightness":
        return x + _per_image(p["shift"]).to(x.dtype)
    if name == "saturation":
        m = x.mean(dim=1, keepdim=True)
        return (x - m) * _per_image(p["factor"]).to(x.dtype) + m
    if name == "contrast":
        m = x.mean(dim=(1, 2, 3), keepdim=True)
        return (x - m) * _per_image(p["factor"]).to(x.dtype) + m
    if name in ("scale", "rotate"):
        return _affine(x, p["theta"], align_corners)
    if name == "crop":
        return _crop(x, p["dy"], p["dx"])
    if name == "cutout":
        return x * _cutout_mask(p["oy"], p["ox"], p["size"], x.shape[2], x.shape[3], x.dtype)
    raise ValueError(f"unknown transform {name!r}; expected one of {TRANSFORMS}")


class DiffAugment:
    """A DSA strategy (e.g. ``"color_crop_cutout_flip_scale_rotate"``) with explicit parameters.

    Args:
        strategy: groups joined by ``_``: ``color`` (brightness, saturation, contrast), ``flip``,
            ``scale``, ``rotate``, ``crop``, ``cutout``. ``""`` or ``"none"`` is the identity.
        mode: ``"single"`` (VICO's ``aug_mode='S'``: one group drawn per call) or ``"idc"`` (IDC's
            DiffAug: flip, then colour, then one of crop/scale/rotate, then cutout; listed flip,
            colour and cutout always apply).
        config: the transform constants.
    """

    def __init__(self, strategy: str = "color_crop_cutout_flip_scale_rotate", mode: str = "single",
                 config: DSAConfig = DSAConfig()):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        groups = [] if strategy.lower() in ("", "none") else strategy.lower().split("_")
        for gname in groups:
            if gname not in GROUPS:
                raise ValueError(f"strategy {strategy!r}: unknown group {gname!r}; expected groups of {sorted(GROUPS)}")
        self.strategy, self.mode, self.config, self.groups = strategy, mode, config, groups

    def _choose(self, gen) -> list[str]:
        """The transforms one call applies, in order (the group draw is shared by the batch)."""
        def pick(options):
            return options[int(torch.randint(len(options), (1,), generator=gen, device=_device_of(gen)))]
        if not self.groups:
            return []
        if self.mode == "single":
            return list(GROUPS[pick(self.groups)])
        ops = ["flip"] if "flip" in self.groups else []
        ops += list(GROUPS["color"]) if "color" in self.groups else []
        geometric = [g for g in self.groups if g in ("crop", "scale", "rotate")]
        ops += [pick(geometric)] if geometric else []
        return ops + (["cutout"] if "cutout" in self.groups else [])

    def sample(self, n: int, size: tuple[int, int], *, generator: torch.Generator | None = None,
               device="cpu") -> Params:
        """Draw the transforms and their parameters: ``n = 1`` for a Siamese set shared by every batch it
        is applied to, ``n = batch`` for per-sample parameters."""
        return [(name, sample_transform(name, n, size, config=self.config, generator=generator, device=device))
                for name in self._choose(generator)]

    @staticmethod
    def apply(x: torch.Tensor, params: Params) -> torch.Tensor:
        """Apply sampled parameters to ``x`` ``(B, C, H, W)``."""
        for name, p in params:
            x = apply_transform(name, x, p)
        return x

    def __call__(self, x: torch.Tensor, *, generator: torch.Generator | None = None, siamese: bool = False):
        """Augment ``x`` with fresh parameters, per sample (default) or one set for the batch."""
        n = 1 if siamese else x.shape[0]
        return self.apply(x, self.sample(n, tuple(x.shape[2:]), generator=generator, device=x.device))

    def __repr__(self) -> str:
        return f"DiffAugment({self.strategy!r}, mode={self.mode!r})"


def strategy_for(strategy: str, dataset: str) -> str:
    """The originals drop ``flip`` for digit datasets, whose classes are not mirror-symmetric."""
    if dataset in ("mnist", "digits", "svhn"):
        return "_".join(g for g in strategy.split("_") if g != "flip")
    return strategy


__all__ = ["DSAConfig", "DiffAugment", "GROUPS", "MODES", "Params", "TRANSFORMS", "apply_transform",
           "sample_transform", "strategy_for"]
