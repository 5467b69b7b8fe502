"""End-to-end: one outer iteration of every trainer, ``backend="reference"`` against the fused
backends (``"auto"``) in float32 and in mixed precision (``--half``: hp ``precision``, bf16 by
default, :mod:`ddkernels.distill.precision`), and a DC loop written like the original repository before and after
``ddkernels.compat.patch``.

For each trainer in :data:`ddkernels.distill.methods.METHODS` (new trainers join automatically; a trainer
that needs more than ``make_distiller`` gives it gets an entry in :data:`SETUP`) on Fashion-MNIST
with the ``quick`` preset, at the preset's network width and at the papers' width 128: the three
providers (reference, fused fp32, fused half) start from the same seed and, after a warm-up iteration
each, run their outer iterations interleaved (so a busy machine slows all alike). Reported: median
seconds per outer iteration, speedups, the largest relative difference between the runs' losses
(fused fp32 against reference; half against fused fp32), and, from one profiled
iteration each (torch.profiler), peak memory and the share of the iteration spent in the public ops
(forward inside a ``record_function("e2e_op::<op>")`` range the benchmark wraps around every call,
backward as the autograd nodes those calls created, matched by sequence number), the share of all
backward work, and the aten ops with the most self time: where the rest goes.

    OMP_NUM_THREADS=1 python -m benchmarks.bench_e2e --quick --threads 1   # IPC 1, IDC with 1 inner loop
    OMP_NUM_THREADS=1 python -m benchmarks.run --ops --e2e --threads 1     # full run = make bench-e2e

Rows are appended to ``results/results.csv`` (op ``e2e``, mode ``iteration``) and, with every
column, to ``results/e2e.csv``; the table of a full run goes to ``results/latest-e2e-cpu.md``, that
of a partial one (``--quick``, a subset of methods or widths) to ``results/latest-e2e-cpu-partial.md``.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import functools
import os
import statistics
import sys
import tempfile
import time
import types
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile, record_function

import ddkernels
import ddkernels.compat
from ddkernels import ops
from ddkernels.distill.data import Dataset, load_dataset
from ddkernels.distill.methods import METHODS, make_distiller

from . import harness

OPS = ops.names(public_only=True)
# match_loss: the original-style loop's own range around utils.match_loss (patched or not).
RANGES = OPS + ("match_loss",)
# the table's short names: initials (multi_formation -> mf)
SHORT = {**{op: "".join(w[0] for w in op.split("_")) for op in OPS}, "match_loss": "match_loss"}
FUSED = "auto"
HERE = os.path.dirname(os.path.abspath(__file__))


def _idc_setup(ds: Dataset, quick: bool, method: str, hp: dict) -> dict:
    # One inner loop (matching + network training) stands for the preset's 10 in --quick runs.
    return {"inner_loop": 1} if quick else {}


def _expert_setup(ds: Dataset, quick: bool, method: str, hp: dict) -> dict:
    """Throwaway experts (one, epochs of 256 images) at the run's width in a cache folder: an outer
    iteration's cost does not depend on how good the experts are."""
    from ddkernels.distill.experts import train_experts
    from ddkernels.distill.methods import preset

    full = {**preset(method, ds.name, 1, "quick"), **hp}
    out = os.path.join(tempfile.gettempdir(), f"ddkernels-e2e-experts-{ds.name}-w{full['width']}")
    train_experts(ds.name, out, num_experts=1, epochs=full["max_start_epoch"] + full["expert_epochs"],
                  width=full["width"], images_per_epoch=256, progress=False)
    return {"expert_dir": out}


#: method -> setup(dataset, quick, method, hp) returning ``make_distiller`` overrides (raise to skip
#: the method with the exception's message). Methods not listed get no overrides.
SETUP: dict[str, Callable[[Dataset, bool, str, dict], dict]] = {"idc": _idc_setup, "mtt": _expert_setup,
                                                              "haba": _expert_setup}


# --- profiling ---------------------------------------------------------------------------------
@contextlib.contextmanager
def op_ranges():
    """Wrap every binding of the public ops in loaded ``ddkernels``/``benchmarks`` modules in a
    ``record_function("e2e_op::<op>")`` range (trainers import the ops by name), then restore."""
    originals = {name: getattr(ddkernels, name) for name in OPS}

    def ranged(fn, tag):
        @functools.wraps(fn)
        def call(*args, **kwargs):
            with record_function(tag):
                return fn(*args, **kwargs)
        return call

    wrappers = {id(fn): ranged(fn, f"e2e_op::{name}") for name, fn in originals.items()}
    swapped = []
    for mod in list(sys.modules.values()):
        if not isinstance(mod, types.ModuleType) or not mod.__name__.startswith(("ddkernels", "benchmarks")):
            continue
        for attr, val in list(vars(mod).items()):
            if callable(val) and id(val) in wrappers:
                setattr(mod, attr, wrappers[id(val)])
                swapped.append((mod, attr, val))
    try:
        yield
    finally:
        for mod, attr, val in swapped:
            setattr(mod, attr, val)


@dataclass
class Profile:
    """One profiled outer iteration."""

    total_s: float
    op_s: dict[str, float]        # forward + backward seconds per op
    backward_s: float             # all autograd backward nodes
    peak_mb: float
    top: list[tuple[str, float]]  # (aten op, share of the iteration) by self time, largest first

    def share(self, op: str | None = None) -> float:
        return (self.op_s[op] if op else sum(self.op_s.values())) / self.total_s


def profile_step(step: Callable[[], float], top: int = 3, device: torch.device | None = None) -> tuple[float, Profile]:
    """On CUDA the op shares are host-side times (launches, not kernels) and the peak is
    ``torch.cuda.max_memory_allocated`` over the iteration."""
    cuda = device is not None and device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    with op_ranges(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        with record_function("e2e::step"):
            loss = float(step())
    events = prof.events()
    total = next(e for e in events if e.name == "e2e::step").cpu_time_total

    def outermost_range(e):
        # Ranges nest (match_loss around a patched grad_distance): count time once, in the outermost.
        found, parent = None, e.cpu_parent
        while parent is not None:
            if parent.name.startswith("e2e_op::"):
                found = parent
            parent = parent.cpu_parent
        return found

    op_s, seqs = {op: 0.0 for op in RANGES}, {}
    for e in events:
        if e.name.startswith("e2e_op::"):
            if outermost_range(e) is None:
                op_s[e.name.split("::", 1)[1]] += e.cpu_time_total
        elif e.sequence_nr >= 0 and not e.name.startswith("autograd::"):
            r = outermost_range(e)
            if r is not None:
                seqs[e.sequence_nr] = r.name.split("::", 1)[1]
    backward = 0.0
    for e in events:
        if e.name.startswith("autograd::engine::evaluate_function"):
            backward += e.cpu_time_total
            if e.sequence_nr in seqs:
                op_s[seqs[e.sequence_nr]] += e.cpu_time_total
    ranked = sorted(((k.key, k.self_cpu_time_total) for k in prof.key_averages()
                     if k.key.startswith("aten::")), key=lambda kv: -kv[1])[:top]
    prof_peak = torch.cuda.max_memory_allocated(device) / 2**20 if cuda else harness.peak_from_profile(prof)
    return loss, Profile(total / 1e6, {k: v / 1e6 for k, v in op_s.items()}, backward / 1e6, prof_peak,
                         [(k.replace("aten::", ""), v / total) for k, v in ranked])


# --- a DC loop written the way VICO-UoE/DatasetCondensation writes it ---------------------------
# utils.py's distance_wb, match_loss and get_network('ConvNet') with networks.py's ConvNet (the
# instancenorm/relu/avgpooling configuration) transcribed (docs/spec.md §0.1, §2a), run as a module of its
# own so that compat.patch meets them the way it meets a user's utils.
ORIGINAL_DC_UTILS = '''
import torch
import torch.nn as nn

class ConvNet(nn.Module):
    def __init__(self, channel, num_classes, net_width, net_depth, net_act, net_norm, net_pooling, im_size=(32, 32)):
        super(ConvNet, self).__init__()
        layers = []
        in_channels = channel
        if im_size[0] == 28:
            im_size = (32, 32)
        shape_feat = [in_channels, im_size[0], im_size[1]]
        for d in range(net_depth):
            layers += [nn.Conv2d(in_channels, net_width, kernel_size=3, padding=3 if channel == 1 and d == 0 else 1)]
            shape_feat[0] = net_width
            layers += [nn.GroupNorm(shape_feat[0], shape_feat[0], affine=True)]
            layers += [nn.ReLU(inplace=True)]
            in_channels = net_width
            layers += [nn.AvgPool2d(kernel_size=2, stride=2)]
            shape_feat[1] //= 2
            shape_feat[2] //= 2
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(shape_feat[0] * shape_feat[1] * shape_feat[2], num_classes)

    def forward(self, x):
        out = self.features(x)
        out = out.view(out.size(0), -1)
        out = self.classifier(out)
        return out

def get_network(model, channel, num_classes, im_size=(32, 32)):
    net_width, net_depth, net_act, net_norm, net_pooling = 128, 3, 'relu', 'instancenorm', 'avgpooling'
    if model == 'ConvNet':
        net = ConvNet(channel=channel, num_classes=num_classes, net_width=net_width, net_depth=net_depth,
                      net_act=net_act, net_norm=net_norm, net_pooling=net_pooling, im_size=im_size)
    else:
        exit('unknown model: %s' % model)
    return net

def distance_wb(gwr, gws):
    shape = gwr.shape
    if len(shape) == 4:  # conv: out x (in*h*w)
        gwr = gwr.reshape(shape[0], shape[1] * shape[2] * shape[3])
        gws = gws.reshape(shape[0], shape[1] * shape[2] * shape[3])
    elif len(shape) == 3:  # layernorm: C x (h*w)
        gwr = gwr.reshape(shape[0], shape[1] * shape[2])
        gws = gws.reshape(shape[0], shape[1] * shape[2])
    elif len(shape) == 2:  # linear: as is
        pass
    elif len(shape) == 1:  # bias, norm: a float32 zero
        return torch.tensor(0, dtype=torch.float, device=gwr.device)
    return torch.sum(1 - torch.sum(gwr * gws, dim=-1) / (torch.norm(gwr, dim=-1) * torch.norm(gws, dim=-1) + 0.000001))

def match_loss(gw_syn, gw_real, args):
    dis = torch.tensor(0.0).to(args.device)
    if args.dis_metric == 'ours':
        for ig in range(len(gw_real)):
            dis += distance_wb(gw_real[ig], gw_syn[ig])
    elif args.dis_metric in ('mse', 'cos'):
        gw_real_vec = torch.cat([g.reshape((-1)) for g in gw_real], dim=0)
        gw_syn_vec = torch.cat([g.reshape((-1)) for g in gw_syn], dim=0)
        if args.dis_metric == 'mse':
            dis = torch.sum((gw_syn_vec - gw_real_vec) ** 2)
        else:
            dis = 1 - torch.sum(gw_real_vec * gw_syn_vec, dim=-1) / (
                torch.norm(gw_real_vec, dim=-1) * torch.norm(gw_syn_vec, dim=-1) + 0.000001)
    else:
        exit('unknown distance function: %s' % args.dis_metric)
    return dis
'''


def original_dc_utils() -> types.ModuleType:
    utils = types.ModuleType("dc_original_utils")
    exec(compile(ORIGINAL_DC_UTILS, "<DatasetCondensation utils.py, transcribed>", "exec"), utils.__dict__)
    return utils


class OriginalDCLoop:
    """DC's outer iteration as main.py writes it: a fresh network from ``utils.get_network`` (width
    128), then for every class the real and synthetic gradients and ``utils.match_loss`` (a Python
    loop over classes and layers), summed, one SGD step on the images. Seeded, so two instances run
    the same iterations."""

    def __init__(self, utils: types.ModuleType, ds: Dataset, ipc: int, batch_real: int, seed: int,
                 dsa_strategy: str = ""):
        self.utils, self.ds, self.ipc = utils, ds, ipc
        # DSA (main.py's `if args.dsa:`): one ParamDiffAug made at start, a Siamese seed per class
        self.dsa_strategy = dsa_strategy
        self.dsa_param = utils.ParamDiffAug() if dsa_strategy else None
        self.gen = torch.Generator().manual_seed(seed)
        self.args = types.SimpleNamespace(dis_metric="ours", device="cpu")
        self.by_class = [torch.nonzero(ds.train_y == c).flatten() for c in range(ds.num_classes)]
        self.batch_real = batch_real
        init = torch.cat([self.real(c, ipc) for c in range(ds.num_classes)])
        self.image_syn = init.clone().requires_grad_(True)
        self.optimizer_img = torch.optim.SGD([self.image_syn], lr=0.1, momentum=0.5)

    def real(self, c: int, n: int) -> torch.Tensor:
        idx = self.by_class[c][torch.randperm(len(self.by_class[c]), generator=self.gen)[:n]]
        return self.ds.normalize(self.ds.train_x[idx])

    def step(self) -> float:
        with torch.random.fork_rng():
            torch.manual_seed(int(torch.randint(2 ** 62, (1,), generator=self.gen)))
            net = self.utils.get_network("ConvNet", self.ds.channels, self.ds.num_classes, self.ds.im_size)
        net_parameters = list(net.parameters())
        loss = torch.tensor(0.0)
        for c in range(self.ds.num_classes):
            img_real = self.real(c, self.batch_real)
            lab_real = torch.ones((img_real.shape[0],), dtype=torch.long) * c
            img_syn = self.image_syn[c * self.ipc:(c + 1) * self.ipc]
            lab_syn = torch.ones((self.ipc,), dtype=torch.long) * c
            if self.dsa_strategy:  # main.py draws the seed from the clock; seeded here so two loops agree
                seed = int(torch.randint(100000, (1,), generator=self.gen))
                img_real = self.utils.DiffAugment(img_real, self.dsa_strategy, seed=seed, param=self.dsa_param)
                img_syn = self.utils.DiffAugment(img_syn, self.dsa_strategy, seed=seed, param=self.dsa_param)
            gw_real = torch.autograd.grad(F.cross_entropy(net(img_real), lab_real), net_parameters)
            gw_real = list((_.detach().clone() for _ in gw_real))
            gw_syn = torch.autograd.grad(F.cross_entropy(net(img_syn), lab_syn), net_parameters, create_graph=True)
            with record_function("e2e_op::match_loss"):  # the benchmark's probe, not the original's
                loss += self.utils.match_loss(gw_syn, gw_real, self.args)
        self.optimizer_img.zero_grad()
        loss.backward()
        self.optimizer_img.step()
        return float(loss.detach())


# --- the DSA of VICO-UoE/DatasetCondensation utils.py, and its copy in mtt-distillation and
# DatasetFactorization (scale/rotate with align_corners=True, the flag named batchmode, an extra
# ratio_noise), transcribed in the originals' style (docs/spec.md §0.3): per-image Python lists for
# the affine matrices, index grids for crop and cutout, the Siamese draw copied over the batch in place.
# Two changes, without which the original fails on current PyTorch: that copy goes through .clone()
# (else it raises at batch 1, IPC 1), and the result gets plain NCHW strides (a 1-channel crop keeps
# channels_last-like ones through .contiguous(), conv propagates them and ConvNet's .view raises).
# @FLAG@, @AC@ and @EXTRA@ select the repository.
ORIGINAL_DSA = """
import math
import torch
import torch.nn.functional as F

class ParamDiffAug():
    def __init__(self):
        self.aug_mode = 'S'
        self.prob_flip, self.ratio_scale, self.ratio_rotate = 0.5, 1.2, 15.0
        self.ratio_crop_pad, self.ratio_cutout = 0.125, 0.5
        self.brightness, self.saturation, self.contrast = 1.0, 2.0, 0.5
        @EXTRA@

def set_seed_DiffAug(param):
    if param.latestseed != -1:
        torch.random.manual_seed(param.latestseed)
        param.latestseed += 1

def DiffAugment(x, strategy='', seed=-1, param=None):
    if strategy in ('', 'none', 'None'):
        return x
    param.@FLAG@ = seed != -1
    param.latestseed = seed
    groups = strategy.split('_')
    if param.aug_mode == 'S':
        set_seed_DiffAug(param)
        groups = [groups[torch.randint(0, len(groups), size=(1,)).item()]]
    for p in groups:
        for f in AUGMENT_FNS[p]:
            x = f(x, param)
    x = x.contiguous()
    return x.view(-1).view(x.shape)

def _siamese(t, param):
    if param.@FLAG@:
        t[:] = t[0].clone()

def _resample(x, theta, param):
    theta = torch.tensor(theta, dtype=torch.float)
    _siamese(theta, param)
    grid = F.affine_grid(theta, x.shape, align_corners=@AC@).to(x.device)
    return F.grid_sample(x, grid, align_corners=@AC@)

def rand_scale(x, param):
    r = param.ratio_scale
    set_seed_DiffAug(param)
    sx = torch.rand(x.shape[0]) * (r - 1.0 / r) + 1.0 / r
    set_seed_DiffAug(param)
    sy = torch.rand(x.shape[0]) * (r - 1.0 / r) + 1.0 / r
    return _resample(x, [[[sx[i], 0, 0], [0, sy[i], 0]] for i in range(x.shape[0])], param)

def rand_rotate(x, param):
    set_seed_DiffAug(param)
    a = (torch.rand(x.shape[0]) - 0.5) * 2 * param.ratio_rotate / 180 * math.pi
    return _resample(x, [[[torch.cos(a[i]), torch.sin(-a[i]), 0], [torch.sin(a[i]), torch.cos(a[i]), 0]]
                         for i in range(x.shape[0])], param)

def _u(x, param, dtype=None):
    set_seed_DiffAug(param)
    u = torch.rand(x.size(0), 1, 1, 1, dtype=dtype, device=x.device)
    _siamese(u, param)
    return u

def rand_flip(x, param):
    return torch.where(_u(x, param) < param.prob_flip, x.flip(3), x)

def rand_brightness(x, param):
    return x + (_u(x, param, x.dtype) - 0.5) * param.brightness

def rand_saturation(x, param):
    m = x.mean(dim=1, keepdim=True)
    return (x - m) * (_u(x, param, x.dtype) * param.saturation) + m

def rand_contrast(x, param):
    m = x.mean(dim=[1, 2, 3], keepdim=True)
    return (x - m) * (_u(x, param, x.dtype) + param.contrast) + m

def _offsets(x, param, lo, hi):
    out = []
    for a, b in zip(lo, hi):
        set_seed_DiffAug(param)
        out.append(torch.randint(a, b, size=[x.size(0), 1, 1], device=x.device))
    for t in out:
        _siamese(t, param)
    return out

def _grid(x, h, w):
    return torch.meshgrid(torch.arange(x.size(0), device=x.device), torch.arange(h, device=x.device),
                          torch.arange(w, device=x.device), indexing='ij')

def rand_crop(x, param):
    sh, sw = int(x.size(2) * param.ratio_crop_pad + 0.5), int(x.size(3) * param.ratio_crop_pad + 0.5)
    ty, tx = _offsets(x, param, (-sh, -sw), (sh + 1, sw + 1))
    b, gy, gx = _grid(x, x.size(2), x.size(3))
    gy = torch.clamp(gy + ty + 1, 0, x.size(2) + 1)
    gx = torch.clamp(gx + tx + 1, 0, x.size(3) + 1)
    return F.pad(x, [1, 1, 1, 1]).permute(0, 2, 3, 1).contiguous()[b, gy, gx].permute(0, 3, 1, 2)

def rand_cutout(x, param):
    ch, cw = int(x.size(2) * param.ratio_cutout + 0.5), int(x.size(3) * param.ratio_cutout + 0.5)
    oy, ox = _offsets(x, param, (0, 0), (x.size(2) + (1 - ch % 2), x.size(3) + (1 - cw % 2)))
    b, gy, gx = _grid(x, ch, cw)
    gy = torch.clamp(gy + oy - ch // 2, min=0, max=x.size(2) - 1)
    gx = torch.clamp(gx + ox - cw // 2, min=0, max=x.size(3) - 1)
    mask = torch.ones(x.size(0), x.size(2), x.size(3), dtype=x.dtype, device=x.device)
    mask[b, gy, gx] = 0
    return x * mask.unsqueeze(1)

AUGMENT_FNS = {'color': [rand_brightness, rand_saturation, rand_contrast], 'crop': [rand_crop],
               'cutout': [rand_cutout], 'flip': [rand_flip], 'scale': [rand_scale], 'rotate': [rand_rotate]}
"""
DSA_FLAVOURS = {"vico": {"@FLAG@": "Siamese", "@AC@": "False", "@EXTRA@": "pass"},
                "mtt": {"@FLAG@": "batchmode", "@AC@": "True", "@EXTRA@": "self.ratio_noise = 0.05"}}


def original_dsa_source(flavour: str) -> str:
    src = ORIGINAL_DSA
    for k, v in DSA_FLAVOURS[flavour].items():
        src = src.replace(k, v)
    return src


def original_dsa_utils() -> types.ModuleType:
    """VICO's utils.py as the DSA method uses it: the DC transcription plus the DSA section."""
    utils = original_dc_utils()
    exec(compile(original_dsa_source("vico"), "<DatasetCondensation utils.py DSA, transcribed>", "exec"), utils.__dict__)
    return utils


# --- HaBa (Huage001/DatasetFactorization): networks.py's ConvNet with only_feat and forward(x, feat),
# utils.py's get_network(..., dist, only_feat) and StyleTranslator, the DSA copy, and the idea of
# reparam_module.ReparamModule (the student's parameters as views of one flat vector), transcribed.
ORIGINAL_HABA_UTILS = """
import torch
import torch.nn as nn

class ConvNet(_DCConvNet):
    def __init__(self, channel, num_classes, net_width, net_depth, net_act, net_norm, net_pooling, im_size=(32, 32),
                 only_feat=False):
        super(ConvNet, self).__init__(channel, num_classes, net_width, net_depth, net_act, net_norm, net_pooling,
                                      im_size)
        if only_feat:
            del self.classifier

    def forward(self, x, feat=False):
        emb = self.features(x)
        emb = emb.view(emb.size(0), -1)
        out = self.classifier(emb)
        if feat:
            return out, emb
        return out

def get_network(model, channel, num_classes, im_size=(32, 32), dist=True, only_feat=False):
    net = ConvNet(channel=channel, num_classes=num_classes, net_width=128, net_depth=3, net_act='relu',
                  net_norm='instancenorm', net_pooling='avgpooling', im_size=im_size, only_feat=only_feat)
    return nn.DataParallel(net) if dist and torch.cuda.device_count() > 1 else net

class StyleTranslator(nn.Module):
    def __init__(self, in_channel=3, mid_channel=3, out_channel=3, image_size=32, kernel_size=1):
        super().__init__()
        self.enc = nn.Conv2d(in_channel, mid_channel, kernel_size)
        s = image_size - kernel_size + 1
        self.scale = nn.Parameter(1. + torch.zeros(1, mid_channel, s, s))
        self.shift = nn.Parameter(torch.zeros(1, mid_channel, s, s))
        self.dec = nn.ConvTranspose2d(mid_channel, out_channel, kernel_size)

    def forward(self, x):
        return self.dec(self.scale * self.enc(x) + self.shift)

class ReparamModule(nn.Module):
    def __init__(self, module):
        super().__init__()
        self.module = module
        self._infos = [(m, n, p.shape) for m in module.modules() for n, p in list(m.named_parameters(recurse=False))]
        self.flat_param = nn.Parameter(torch.cat([getattr(m, n).detach().reshape(-1) for m, n, _ in self._infos]))
        for m, n, _ in self._infos:
            delattr(m, n)

    def forward(self, *inputs, flat_param):
        for (m, n, s), v in zip(self._infos, flat_param.split([s.numel() for _, _, s in self._infos])):
            setattr(m, n, v.view(s))
        return self.module(*inputs)
"""


def original_haba_utils() -> types.ModuleType:
    utils = types.ModuleType("haba_original_utils")
    dc = original_dc_utils()
    utils._DCConvNet = dc.ConvNet  # DatasetFactorization's ConvNet builds DatasetCondensation's layers
    exec(compile(ORIGINAL_HABA_UTILS, "<DatasetFactorization utils.py / networks.py, transcribed>", "exec"),
         utils.__dict__)
    exec(compile(original_dsa_source("mtt"), "<DatasetFactorization utils.py DSA, transcribed>", "exec"), utils.__dict__)
    return utils


class OriginalHaBaLoop:
    """The student part of one distill_fac.py iteration: a fresh ``ReparamModule(get_network('ConvNet',
    ..., dist=False))`` (width 128), ``syn_steps`` unrolled SGD steps on the flat parameters, each on a
    batch of bases sent through a style chosen per sample (StyleTranslatorSharedDataset's rule; the
    student loop's per-batch choice is its special case) and DSA (per-image draws), then the
    normalized parameter-matching loss, backward to the bases, the translators and the learning rate,
    one SGD step each. A random perturbation of the start stands for the expert's target (the cost
    does not depend on it). Seeded, so two instances run the same iterations."""

    def __init__(self, utils: types.ModuleType, ds: Dataset, ipc: int, n_style: int, syn_steps: int, seed: int,
                 dsa_strategy: str = "color_crop_cutout_flip_scale_rotate"):
        self.utils, self.ds, self.ipc, self.n_style, self.syn_steps = utils, ds, ipc, n_style, syn_steps
        self.gen = torch.Generator().manual_seed(seed)
        self.dsa_strategy, self.dsa_param = dsa_strategy, utils.ParamDiffAug()
        c, h = ds.channels, ds.im_size[0]
        by_class = [torch.nonzero(ds.train_y == k).flatten() for k in range(ds.num_classes)]
        init = torch.stack([ds.normalize(ds.train_x[idx[torch.randperm(len(idx), generator=self.gen)[:ipc]]])
                            for idx in by_class])
        self.image_syn = init.clone().requires_grad_(True)  # (classes, ipc, C, H, W)
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            self.styles = torch.nn.ModuleList(utils.StyleTranslator(in_channel=c, mid_channel=c, out_channel=c,
                                                                    image_size=h, kernel_size=3)
                                              for _ in range(n_style))
        self.syn_lr = torch.tensor(0.01).requires_grad_(True)
        self.optimizer_img = torch.optim.SGD([self.image_syn], lr=100, momentum=0.95)
        self.optimizer_style = torch.optim.SGD(self.styles.parameters(), lr=100, momentum=0.95)
        self.optimizer_lr = torch.optim.SGD([self.syn_lr], lr=1e-5, momentum=0.9)

    def step(self) -> float:
        with torch.random.fork_rng():  # DSA's per-image draws use the global RNG: seed it per iteration
            torch.manual_seed(int(torch.randint(2 ** 62, (1,), generator=self.gen)))
            return self._step()

    def _step(self) -> float:
        utils, ds, n = self.utils, self.ds, self.ds.num_classes * self.ipc
        student_net = utils.ReparamModule(utils.get_network("ConvNet", ds.channels, ds.num_classes, ds.im_size,
                                                            dist=False))
        num_params = student_net.flat_param.numel()
        starting_params = student_net.flat_param.detach()
        target_params = starting_params + 0.01 * torch.randn(num_params, generator=self.gen)
        student_params = [starting_params.clone().requires_grad_(True)]
        for _ in range(self.syn_steps):
            these_indices = torch.randperm(n, generator=self.gen)
            label, base_idx = these_indices // self.ipc, these_indices % self.ipc
            base = self.image_syn[label, base_idx]
            style_idx = torch.randint(self.n_style, (n,), generator=self.gen)
            x = torch.cat([self.styles[int(k)](base[i:i + 1]) for i, k in enumerate(style_idx)])
            x = utils.DiffAugment(x, self.dsa_strategy, param=self.dsa_param)
            ce_loss = F.cross_entropy(student_net(x, flat_param=student_params[-1]), label)
            grad = torch.autograd.grad(ce_loss, student_params[-1], create_graph=True)[0]
            student_params.append(student_params[-1] - self.syn_lr * grad)
        param_loss = F.mse_loss(student_params[-1], target_params, reduction="sum") / num_params
        param_dist = F.mse_loss(starting_params, target_params, reduction="sum") / num_params
        grand_loss = param_loss / param_dist
        for o in (self.optimizer_img, self.optimizer_style, self.optimizer_lr):
            o.zero_grad()
        grand_loss.backward()
        for o in (self.optimizer_img, self.optimizer_style, self.optimizer_lr):
            o.step()
        self.syn_lr.data = self.syn_lr.data.clip(min=0.001)
        return float(grand_loss.detach())


class OriginalDSAOnly:
    """Only the augmentation of the DSA loop: per class, a real batch (drawn once, so the row times DSA,
    not data loading) and the synthetic images through ``utils.DiffAugment`` with one Siamese seed,
    forward and backward (the images' gradient)."""

    def __init__(self, utils: types.ModuleType, ds: Dataset, ipc: int, batch_real: int, seed: int,
                 dsa_strategy: str = "color_crop_cutout_flip_scale_rotate"):
        self.loop = OriginalDCLoop(utils, ds, ipc, batch_real, seed, dsa_strategy)
        self.reals = [self.loop.real(c, batch_real) for c in range(ds.num_classes)]

    def step(self) -> float:
        lp, total = self.loop, 0.0
        for c in range(lp.ds.num_classes):
            seed = int(torch.randint(100000, (1,), generator=lp.gen))
            img_real = self.reals[c]
            img_syn = lp.image_syn[c * lp.ipc:(c + 1) * lp.ipc]
            a = lp.utils.DiffAugment(img_real, lp.dsa_strategy, seed=seed, param=lp.dsa_param)
            b = lp.utils.DiffAugment(img_syn, lp.dsa_strategy, seed=seed, param=lp.dsa_param)
            loss = (b.mean() - a.mean()) ** 2
            loss.backward()
            total += float(loss.detach())
        return total


# --- runs -----------------------------------------------------------------------------------------
@dataclass
class Result:
    method: str
    case: str
    seconds: dict[str, list[float]] = field(default_factory=dict)   # provider -> per-iteration seconds
    losses: dict[str, list[float]] = field(default_factory=dict)
    profiles: dict[str, Profile] = field(default_factory=dict)
    skipped: str = ""

    def median(self, p: str) -> float:
        return statistics.median(self.seconds[p])

    def loss_diff(self, a: str | None = None, b: str | None = None) -> float:
        """Largest relative difference of provider ``b``'s losses from ``a``'s (default: the first two)."""
        names = list(self.losses)
        xs, ys = self.losses[a or names[0]], self.losses[b or names[1]]
        return max(abs(x - y) / max(abs(x), 1e-30) for x, y in zip(xs, ys))


def compare(method: str, case: str, steps: dict[str, Callable[[], float]], iterations: int,
            progress: Callable[[str], None], device: torch.device | None = None) -> Result:
    """Per provider: one warm-up iteration (one-time costs: first kernel calls, allocator growth),
    ``iterations`` timed ones, then one profiled one; providers interleaved. Every iteration's loss
    is kept for the comparison."""
    res = Result(method, case)
    for p, step in steps.items():
        res.losses[p], res.seconds[p] = [float(step())], []
    for i in range(iterations):
        for p, step in steps.items():
            t0 = time.perf_counter()
            res.losses[p].append(float(step()))
            res.seconds[p].append(time.perf_counter() - t0)
            progress(f"e2e | {method} | {case} | {p:<10} iteration {i + 1}: {res.seconds[p][-1]:.3f} s, "
                     f"loss {res.losses[p][-1]:.6g}")
    for p, step in steps.items():
        loss, res.profiles[p] = profile_step(step, device=device)
        res.losses[p].append(loss)
    return res


WIDTHS = {"preset": None, "128": 128}


def trainer_cases(ds: Dataset, quick: bool, widths=tuple(WIDTHS)) -> list[tuple[str, int, int | None, dict]]:
    out = []
    for ipc in ((1,) if quick else (1, 10)):
        for width in (WIDTHS[w] for w in widths):
            for method in METHODS:
                hp = {} if width is None else {"width": width}
                out.append((method, ipc, width, hp))
    return out


def providers(device: torch.device, half: str) -> dict[str, tuple[str, str]]:
    """Provider name -> (backend, precision): reference and fused in fp32, and fused in ``half``
    (``"none"``: no half column)."""
    fused = "triton" if device.type == "cuda" else FUSED
    out = {"reference": ("reference", "fp32"), fused: (fused, "fp32")}
    if half != "none":
        out[f"{fused} {half}"] = (fused, half)
    return out


def run_trainers(ds: Dataset, quick: bool, iterations: int, methods, progress, widths=tuple(WIDTHS),
                 device: torch.device = torch.device("cpu"), half: str = "bf16") -> list[Result]:
    results = []
    for method, ipc, width, hp in trainer_cases(ds, quick, widths):
        if methods is not None and method not in methods:
            continue
        steps, case = {}, ""
        try:
            extra = SETUP.get(method, lambda *a: {})(ds, quick, method, hp)
            for p, (backend, precision) in providers(device, half).items():
                d = make_distiller(method, ds, ipc, "quick", backend=backend, seed=0, device=device,
                                   **{**extra, **hp, "precision": precision})
                steps[p] = d.step
            tags = [f"width {d.hp['width']}" + (" (preset)" if width is None else " (paper)")]
            tags += [f"{k}={v}" for k, v in extra.items() if k != "expert_dir"]
            case = f"FMNIST IPC {ipc}, " + ", ".join(tags)
            results.append(compare(method, case, steps, iterations, progress, device))
        except Exception as e:  # a trainer this benchmark cannot set up yet: say so in the table
            results.append(Result(method, case or f"FMNIST IPC {ipc}", skipped=f"{type(e).__name__}: {e}"))
            progress(f"e2e | {method} | skipped: {results[-1].skipped}")
    return results


def run_original_dc(ds: Dataset, quick: bool, iterations: int, progress) -> list[Result]:
    results = []
    for ipc in ((1,) if quick else (1, 10)):
        utils = original_dc_utils()
        batch_real = 64 if quick else 256  # the quick preset's / the original's real images per class
        results.append(_before_after("DC, original-style loop",
                                     f"FMNIST IPC {ipc}, width 128, {batch_real} real/class, 'ours'", utils,
                                     lambda: OriginalDCLoop(utils, ds, ipc, batch_real, seed=0), iterations, progress))
    return results


def _before_after(name: str, case: str, utils: types.ModuleType, make: Callable[[], object], iterations: int,
                  progress) -> Result:
    """The original-style loop ``make()`` builds, unpatched against patched; each built under its own
    patch state (the objects a script makes at start, e.g. StyleTranslators, are then the patched ones)."""
    before = make()
    ddkernels.compat.patch(utils)
    after = make()
    ddkernels.compat.unpatch(utils)

    def unpatched():
        ddkernels.compat.unpatch(utils)
        return before.step()

    def patched():
        ddkernels.compat.patch(utils)
        return after.step()

    res = compare(name, case, {"reference": unpatched, "compat.patch": patched}, iterations, progress)
    ddkernels.compat.unpatch(utils)
    return res


DSA_STRATEGY = "color_crop_cutout_flip_scale_rotate"


def run_original_dsa_haba(ds: Dataset, quick: bool, iterations: int, progress) -> list[Result]:
    """DSA (VICO main.py with --method DSA) and HaBa's student (distill_fac.py), original-style, before
    and after ``ddkernels.compat.patch``; and the DSA calls alone."""
    results = []
    batch_real = 64 if quick else 256
    for ipc in ((1,) if quick else (1, 10)):
        utils = original_dsa_utils()
        results.append(_before_after(
            "DSA, original-style loop", f"FMNIST IPC {ipc}, width 128, {batch_real} real/class, {DSA_STRATEGY}", utils,
            lambda: OriginalDCLoop(utils, ds, ipc, batch_real, 0, DSA_STRATEGY), iterations, progress))
        results.append(_before_after(
            "DSA augmentation only", f"FMNIST IPC {ipc}, {batch_real} real/class, Siamese, fwd+bwd", utils,
            lambda: OriginalDSAOnly(utils, ds, ipc, batch_real, 0, DSA_STRATEGY), iterations, progress))
        haba = original_haba_utils()
        syn_steps, n_style = (10, 5) if quick else (20, 5)
        results.append(_before_after(
            "HaBa, original-style student", f"FMNIST IPC {ipc}, width 128, {n_style} styles (per sample), "
            f"{syn_steps} syn_steps, DSA", haba,
            lambda: OriginalHaBaLoop(haba, ds, ipc, n_style, syn_steps, 0, DSA_STRATEGY), iterations, progress))
    return results


# --- output ---------------------------------------------------------------------------------------
def _shares(p: Profile) -> str:
    parts = [f"{SHORT[op]} {100 * p.share(op):.1f}" for op in RANGES if p.op_s[op] > 0]
    return f"{100 * p.share():.1f}%" + (f" ({', '.join(parts)})" if parts else "")


def markdown(results: list[Result], half: str = "bf16") -> str:
    """The table; rows with a third provider (the fused trainers in ``half``) fill the half columns,
    the others (original-style loops, ``--half none``) leave them "—"."""
    head = ["trainer", "case", "reference s/it", "fused s/it", f"{half} s/it", "speedup",
            f"{half} vs fused", f"{half} vs reference", "ops share reference → fused",
            "backward share (fused)", "top self time (fused)", f"peak MB ref / fused / {half}",
            f"loss max rel diff (fused; {half})"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        if r.skipped:
            lines.append(f"| {r.method} | {r.case} | skipped: {r.skipped} |" + " |" * (len(head) - 3))
            continue
        ref, fus, *rest = list(r.seconds)
        pr, pf = r.profiles[ref], r.profiles[fus]
        top = ", ".join(f"{k} {100 * v:.0f}%" for k, v in pf.top)
        half_cols = ["—", "—", "—"]
        peaks, diffs = f"{pr.peak_mb:.0f} / {pf.peak_mb:.0f}", f"{r.loss_diff():.1e}"
        if rest:
            h = rest[0]
            half_cols = [f"{r.median(h):.3f}", f"{r.median(fus) / r.median(h):.2f}×", f"{r.median(ref) / r.median(h):.2f}×"]
            peaks += f" / {r.profiles[h].peak_mb:.0f}"
            diffs += f"; {r.loss_diff(fus, h):.1e}"
        lines.append("| " + " | ".join([
            r.method, r.case, f"{r.median(ref):.3f}", f"{r.median(fus):.3f}", half_cols[0],
            f"{r.median(ref) / r.median(fus):.2f}×", *half_cols[1:],
            f"{_shares(pr)} → {_shares(pf)}", f"{100 * pf.backward_s / pf.total_s:.0f}%", top,
            peaks, diffs]) + " |")
    return "\n".join(lines) + "\n"


E2E_FIELDS = ["date", "git_sha", "hardware", "torch", "method", "case", "provider", "median_s", "seconds",
              "losses", "ops_share", "op_seconds", "backward_share", "peak_mem_mb", "skipped"]


def write_csv(out: str, results: list[Result]) -> None:
    rows, detail = [], []
    meta = dict(date=time.strftime("%Y-%m-%dT%H:%M:%S"), git_sha=harness.git_sha(), hardware=harness.hardware(),
                torch=torch.__version__)
    for r in results:
        if r.skipped:
            detail.append({**meta, "method": r.method, "case": r.case, "skipped": r.skipped})
            continue
        for p, secs in r.seconds.items():
            prof = r.profiles[p]
            rows.append(dict(op="e2e", case=f"{r.method}: {r.case}", provider=p, mode="iteration",
                             median_ms=1e3 * r.median(p), iqr_ms=1e3 * (max(secs) - min(secs)),
                             peak_mem_mb=prof.peak_mb, bytes=0, gbps=0.0, roofline=0.0))
            detail.append({**meta, "method": r.method, "case": r.case, "provider": p, "median_s": round(r.median(p), 4),
                           "seconds": " ".join(f"{s:.4f}" for s in secs),
                           "losses": " ".join(f"{x:.9g}" for x in r.losses[p]), "ops_share": round(prof.share(), 4),
                           "op_seconds": " ".join(f"{op}={prof.op_s[op]:.4f}" for op in RANGES if prof.op_s[op]),
                           "backward_share": round(prof.backward_s / prof.total_s, 4),
                           "peak_mem_mb": round(prof.peak_mb, 1)})
    harness.append_csv(os.path.join(out, "results.csv"), rows, 0.0)
    path = os.path.join(out, "e2e.csv")
    new = not os.path.exists(path)
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=E2E_FIELDS)
        if new:
            w.writeheader()
        w.writerows(detail)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="IPC 1 only, IDC with 1 inner loop, 1 timed iteration")
    ap.add_argument("--iterations", type=int, default=None, help="timed iterations per provider (default 1 quick, 3 full)")
    ap.add_argument("--methods", nargs="*", default=None, help=f"subset of {', '.join(METHODS)} (default all; none given: only the original-style loop)")
    ap.add_argument("--widths", nargs="+", default=list(WIDTHS), choices=list(WIDTHS),
                    help="network widths: the preset's and/or the papers' 128 (default both)")
    ap.add_argument("--no-original", action="store_true", help="skip the original-style loops (DC, DSA, HaBa)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--device", default="cpu", help="where the trainers run: cpu (default), cuda, cuda:N; on CUDA "
                                                    "the fused provider is triton and the original-style loop is skipped")
    ap.add_argument("--half", default="bf16", choices=("bf16", "fp16", "none"),
                    help="the mixed-precision column: the fused trainers with hp precision=HALF (default bf16; "
                         "fp16 needs --device cuda; none: no such column)")
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    args = ap.parse_args(argv)
    run(args.quick, args.iterations, args.methods, not args.no_original, args.threads, args.out, args.widths,
        device=args.device, half=args.half)


def run(quick: bool, iterations: int | None, methods=None, original: bool = True, threads: int | None = None,
        out: str = os.path.join(HERE, "results"), widths=tuple(WIDTHS), device="cpu", half: str = "bf16") -> str:
    from ddkernels.distill.device import resolve
    from ddkernels.distill.precision import check_precision

    device = resolve(device, what="--device")
    if half != "none":
        check_precision(half, device, what="--half")
    original = original and device.type == "cpu"  # the transcribed original loop is CPU code
    if threads:
        torch.set_num_threads(threads)
    iterations = iterations or (1 if quick else 3)
    ds = load_dataset("fashion-mnist")
    t0 = time.perf_counter()
    progress = functools.partial(print, flush=True)
    results = run_trainers(ds, quick, iterations, methods, progress, widths, device, half)
    if original:
        results += run_original_dc(ds, quick, iterations, progress)
        results += run_original_dsa_haba(ds, quick, iterations, progress)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else harness.hardware()
    header = (f"Measured on {where}, torch {torch.__version__}, git {harness.git_sha()}, "
              f"{'--quick' if quick else 'full'} run (per provider: a warm-up iteration, {iterations} timed "
              f"(median), one profiled; {time.perf_counter() - t0:.0f} s in all). "
              f"Fused = backend \"{'triton' if device.type == 'cuda' else FUSED}\""
              + (f"; {half} = the fused trainers with hp precision={half} (autocast). " if half != "none" else ". ")
              + f"Shares are of one profiled iteration ({', '.join(f'{SHORT[op]} {op}' for op in OPS)}; "
              f"forward + their backward nodes).\n\n")
    table = header + markdown(results, half)
    os.makedirs(out, exist_ok=True)
    write_csv(out, results)
    complete = not quick and methods is None and original and set(widths) == set(WIDTHS)
    path = harness.write_table(out, f"latest-e2e-{device.type}", table, complete)
    print("\n" + table + f"\nwritten to {path}")
    return table


if __name__ == "__main__":
    main()
