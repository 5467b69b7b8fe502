"""Evaluation protocol: train fresh ConvNets (or another network of :func:`ddkernels.nn.get_network`,
``arch``) on a (synthetic) training set, report test accuracy.

Three protocols from the papers (docs/spec.md §0.5, §1b and §5b), each with a ``paper`` budget and a ``quick``
budget for a CPU:

* ``"dsa"`` (DC/DSA/DM, VICO ``evaluate_synset``): SGD(0.01, momentum 0.9, wd 5e-4), batch 256,
  E+1 epochs, lr ×0.1 and a fresh optimizer at epoch E//2+1, per-sample DSA on every batch (DC
  without DSA: none, except VICO's per-image crop/scale/rotate on MNIST, ``dc_aug``); tested once,
  at the end.
* ``"idc"`` (IDC ``train.py``/``test.py``): SGD(0.01, 0.9, 5e-4), batch 64, MultiStepLR(2/3, 5/6 of
  E, γ 0.2), per-sample DiffAug (flip, colour, one of crop/scale/rotate) and CutMix p 0.5; tested
  every E//4 epochs, reporting the last and the best of these tests.
* ``"rtp"`` (RTP ``tools/evaluator.py``, docs/spec.md §5b): SGD(0.01, 0.9, no weight decay), batch 640, E
  epochs at a constant lr, no augmentation; tested once, at the end.

Labels are hard (int64 class indices, loss cross-entropy) or soft (float ``(N, C)`` label
distributions ``q``, e.g. RTP's ``label_mode="soft"``): a soft set trains with the soft-target
cross-entropy ``−Σ_c q_c log softmax(z)_c`` (``F.cross_entropy`` with probability targets; it is
``KL(q‖p) + H(q)``, so the same gradient as the KL divergence), CutMix mixing the two targets alike.
:func:`evaluate` records which in ``"labels"`` (``"hard"``/``"soft"``), as DD-Ranking asks, so the two
kinds of result are never mixed up; the test set's labels are always hard.

Accuracies are reported as mean ± std (population std, as numpy's default in the originals) over
``n_nets`` networks, each initialised from its own seed: ``mean``/``std``/``accuracies`` are the
final accuracies; with ``test_checkpoints > 1`` also ``best`` (per network, the best test accuracy
over the checkpoint epochs, as IDC's "best").
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm import tqdm

from .data.augment import DiffAugment, cutmix, cutmix_loss, dc_augment, strategy_for
from . import precision as amp
from .data import Dataset
from .device import generator as device_generator, resolve as resolve_device
from ..nn.networks import NETWORKS, get_network, network_name


@dataclass(frozen=True)
class Protocol:
    """How one evaluation network is trained and tested."""

    name: str
    epochs: int
    batch: int
    schedule: str  # "half" (VICO), "multistep" (IDC) or "constant" (RTP)
    aug: str  # DSA strategy; "" for none
    aug_mode: str = "single"
    dc_aug: str = ""  # VICO's non-DSA per-image augmentation (ddkernels.distill.data.augment.dc_augment); only without aug
    cutmix_p: float = 0.0
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    width: int = 128  # of the ConvNet entries whose name leaves it open (ConvNet, ConvNetD2, ...)
    n_nets: int = 5
    test_limit: int | None = None  # evaluate on the first N test images (a fixed, shuffled subset)
    test_checkpoints: int = 1  # test every epochs//k epochs (IDC test.py: k = 4) and at the end; 1: end only
    # Rows come in consecutive groups of `choose` alternatives of one training example; each epoch
    # trains on one random row per group (HaBa's official evaluation: a random hallucinator per base).
    choose: int = 1
    # "fp32", "bf16" or "fp16" (CUDA): the networks' forward/backward under autocast, their parameters
    # and optimizer state in float32 (ddkernels.distill.precision); fp16 adds a gradient scaler.
    precision: str = "fp32"


PROTOCOLS = {
    ("dsa", "paper"): Protocol("dsa", epochs=1000, batch=256, schedule="half",
                               aug="color_crop_cutout_flip_scale_rotate", n_nets=20),
    ("dsa", "quick"): Protocol("dsa", epochs=300, batch=256, schedule="half",
                               aug="color_crop_cutout_flip_scale_rotate", width=64, n_nets=3, test_limit=2000),
    ("idc", "paper"): Protocol("idc", epochs=1000, batch=64, schedule="multistep", aug="color_crop_flip_scale_rotate",
                               aug_mode="idc", cutmix_p=0.5, n_nets=3, test_checkpoints=4),
    ("idc", "quick"): Protocol("idc", epochs=300, batch=64, schedule="multistep", aug="color_crop_flip_scale_rotate",
                               aug_mode="idc", cutmix_p=0.5, width=64, n_nets=3, test_limit=2000, test_checkpoints=4),
    ("rtp", "paper"): Protocol("rtp", epochs=300, batch=640, schedule="constant", aug="", weight_decay=0.0, n_nets=10),
    ("rtp", "quick"): Protocol("rtp", epochs=300, batch=640, schedule="constant", aug="", weight_decay=0.0, width=64,
                               n_nets=3, test_limit=2000),
}


def get_protocol(name: str, preset: str, **overrides) -> Protocol:
    """A protocol by name (``"dsa"``, ``"idc"`` or ``"rtp"``) and budget (``"paper"`` or ``"quick"``)."""
    if (name, preset) not in PROTOCOLS:
        raise ValueError(f"unknown evaluation protocol {name!r}/{preset!r}; expected one of {sorted(PROTOCOLS)}")
    proto = dataclasses.replace(PROTOCOLS[(name, preset)], **{k: v for k, v in overrides.items() if v is not None})
    if proto.dc_aug and proto.aug:
        raise ValueError(f"dc_aug={proto.dc_aug!r} applies only without DSA (aug=''), got aug={proto.aug!r}")
    amp.check_precision(proto.precision, what="precision")
    if proto.test_checkpoints < 1:
        raise ValueError(f"test_checkpoints must be >= 1, got {proto.test_checkpoints}")
    return proto


def checkpoint_epochs(epochs: int, k: int) -> list[int]:
    """Epochs (1-based) after which a network is tested: every ``max(1, epochs // k)`` epochs (IDC
    ``test_data``: ``epoch_print_freq = epochs // num_val``, ``num_val = 4``), plus the last epoch
    when that interval does not divide ``epochs``, so the final accuracy is always measured."""
    every = max(1, epochs // k)
    ticks = list(range(every, epochs + 1, every))
    return ticks if ticks and ticks[-1] == epochs else ticks + [epochs]


@torch.no_grad()
def test_accuracy(net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 1000,
                  precision: str = "fp32") -> float:
    """Top-1 accuracy (%) of ``net`` on normalized images ``x`` (forward under ``precision``'s autocast)."""
    net.eval()
    with amp.autocast(precision, x.device):
        correct = sum(int((net(xb).argmax(1) == yb).sum()) for xb, yb in zip(x.split(batch), y.split(batch)))
    net.train()
    return 100.0 * correct / max(len(y), 1)


def train_network(images: torch.Tensor, labels: torch.Tensor, dataset: Dataset, protocol: Protocol,
                  seed: int, progress: bool = False, on_epoch=None, backend: str = "auto",
                  arch: str = "convnet") -> torch.nn.Module:
    """Train one fresh network on normalized ``images`` with ``protocol``; returns the network.

    The network, its batches and its random draws live on ``images.device``. ``on_epoch(epoch,
    net)``, if given, runs after every epoch (1-based; the "half" schedule runs ``epochs + 1`` of
    them). ``protocol.precision``: see :class:`Protocol`. ``backend`` is the network's (its fused layers). ``arch``: a
    :func:`ddkernels.nn.get_network` name (any case), ``protocol.width`` wide where the name leaves
    the width open."""
    arch = network_name(arch)
    device = images.device
    gen = device_generator(device, seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # network init uses the CPU's global RNG (same weights on every device)
        width = protocol.width if NETWORKS[arch].width is not None else None
        net = get_network(arch, dataset.channels, dataset.num_classes, dataset.im_size, width=width, backend=backend)
    net.to(device)
    aug = DiffAugment(strategy_for(protocol.aug, dataset.name), mode=protocol.aug_mode)

    def make_opt(lr):
        return torch.optim.SGD(net.parameters(), lr=lr, momentum=protocol.momentum, weight_decay=protocol.weight_decay)

    opt = make_opt(protocol.lr)
    scaler = amp.grad_scaler(protocol.precision, device)
    e = protocol.epochs
    sched = None
    if protocol.schedule == "multistep":
        sched = torch.optim.lr_scheduler.MultiStepLR(opt, [2 * e // 3, 5 * e // 6], gamma=0.2)
    n = len(images)
    epochs = range(e + 1 if protocol.schedule == "half" else e)
    for ep in tqdm(epochs, desc="eval net", leave=False, disable=not progress, mininterval=1.0):
        if protocol.schedule == "half" and ep == e // 2 + 1:
            opt = make_opt(protocol.lr * 0.1)  # VICO re-creates the optimizer: momentum resets
        if protocol.choose > 1:
            groups = n // protocol.choose
            rows = (torch.arange(groups, device=device) * protocol.choose
                    + torch.randint(protocol.choose, (groups,), generator=gen, device=device))
            perm = rows[torch.randperm(groups, generator=gen, device=device)]
        else:
            perm = torch.randperm(n, generator=gen, device=device)
        for idx in perm.split(protocol.batch):
            x, y = aug(images[idx], generator=gen), labels[idx]
            if protocol.dc_aug:
                x = dc_augment(x, protocol.dc_aug, generator=gen)
            x, y, y_b, ratio = cutmix(x, y, prob=protocol.cutmix_p, generator=gen) if protocol.cutmix_p else (x, y, y, 1.0)
            with amp.autocast(protocol.precision, device):
                loss = cutmix_loss(net(x), y, y_b, ratio)
            opt.zero_grad(set_to_none=True)
            amp.scaled(loss, scaler).backward()
            amp.step(opt, scaler)
        if sched is not None:
            sched.step()
        if on_epoch is not None:
            on_epoch(ep + 1, net)
    return net


#: how a soft-label set is trained (recorded with its result)
SOFT_LOSS = "soft-target cross-entropy -sum_c q_c log softmax(z)_c (= KL(q||p) + H(q), the KL's gradient)"


def check_labels(labels: torch.Tensor, n: int, num_classes: int) -> str:
    """``"hard"`` for int64 ``(n,)`` class indices, ``"soft"`` for float ``(n, num_classes)`` label
    distributions (non-negative rows summing to 1); anything else raises ``ValueError`` naming ``labels``."""
    if labels.dim() == 1:
        if labels.shape != (n,) or labels.dtype != torch.int64:
            raise ValueError(f"labels must be int64 ({n},) class indices or float ({n}, {num_classes}) label "
                             f"distributions, got {labels.dtype} {tuple(labels.shape)}")
        return "hard"
    if labels.shape != (n, num_classes) or not labels.is_floating_point():
        raise ValueError(f"labels must be int64 ({n},) class indices or float ({n}, {num_classes}) label distributions, "
                         f"got {labels.dtype} {tuple(labels.shape)}")
    sums = labels.detach().double().sum(1)
    if bool((labels < 0).any()) or not torch.allclose(sums, torch.ones_like(sums), atol=1e-4):
        raise ValueError("labels: soft labels must be distributions (non-negative rows summing to 1)")
    return "soft"


def _mean_std(accs: list[float]) -> tuple[float, float]:
    mean = sum(accs) / len(accs)
    return mean, math.sqrt(sum((a - mean) ** 2 for a in accs) / len(accs))


def evaluate(images: torch.Tensor, labels: torch.Tensor, dataset: Dataset, protocol: Protocol, *,
             seed: int = 0, desc: str = "evaluate", progress: bool = True, backend: str = "auto",
             arch: str = "convnet", device: str | torch.device | None = None) -> dict:
    """Train ``protocol.n_nets`` fresh networks on ``(images, labels)`` and test each.

    Args:
        images: normalized training images ``(N, C, H, W)``.
        labels: int64 ``(N,)``, or float ``(N, C)`` label distributions (soft labels; see the module doc).
        dataset: gives the test split (normalized here) and the network's shape.
        protocol: see :data:`PROTOCOLS`.
        seed: network ``i`` uses seed ``seed + i``.
        backend: the networks' backend (see :class:`ddkernels.nn.convnet.ConvNet`).
        arch: the networks, by a :func:`ddkernels.nn.get_network` name (any case; default ConvNet-3).
        device: where the networks train and test (``"auto"``, ``"cpu"``, ``"cuda[:N]"``; default: the
            device ``images`` are on). The images and the test split are moved there once.

    Returns:
        ``{"mean", "std", "n", "accuracies", "protocol", "labels"}`` with the final accuracies in %
        (``labels``: ``"hard"`` or ``"soft"``; a soft set also names its ``"loss"``); with
        ``protocol.test_checkpoints > 1`` also ``"best": {"mean", "std", "accuracies", "epochs"}``
        (per network the best accuracy over the test ``epochs``) and ``"curves"`` (each network's
        accuracy at those epochs).
    """
    if images.dim() != 4 or images.shape[1:] != dataset.train_x.shape[1:]:
        raise ValueError(f"images must be (N, {', '.join(map(str, dataset.train_x.shape[1:]))}) for {dataset.name}, "
                         f"got {tuple(images.shape)}")
    kind = check_labels(labels, len(images), dataset.num_classes)
    network_name(arch)  # an unknown name fails before any work
    if len(images) % protocol.choose:
        raise ValueError(f"protocol.choose={protocol.choose} must divide the number of images, got {len(images)}")
    device = images.device if device is None else resolve_device(device)
    amp.check_precision(protocol.precision, device, what="protocol.precision")
    test_x, test_y = dataset.test_x, dataset.test_y
    if protocol.test_limit is not None and protocol.test_limit < len(test_y):
        # a fixed subset, drawn on the CPU so every device tests on the same images
        pick = torch.randperm(len(test_y), generator=torch.Generator(device="cpu").manual_seed(1234), device="cpu")
        pick = pick[: protocol.test_limit].to(test_x.device)
        test_x, test_y = test_x[pick], test_y[pick]
    test_x, test_y = dataset.normalize(test_x.to(device)), test_y.to(device)
    images, labels = images.detach().to(device), labels.detach().to(device)
    total = protocol.epochs + 1 if protocol.schedule == "half" else protocol.epochs
    ticks = checkpoint_epochs(total, protocol.test_checkpoints)
    curves = []
    bar = tqdm(range(protocol.n_nets), desc=desc, disable=not progress, mininterval=1.0)
    for i in bar:
        curve = []

        def test_at(epoch, net, curve=curve):
            if epoch in ticks:
                curve.append(test_accuracy(net, test_x, test_y, precision=protocol.precision))

        train_network(images, labels, dataset, protocol, seed + i, on_epoch=test_at, backend=backend, arch=arch)
        curves.append(curve)
        bar.set_postfix(acc=f"{sum(c[-1] for c in curves) / len(curves):.2f}")
    accs = [c[-1] for c in curves]
    mean, std = _mean_std(accs)
    out = {"mean": mean, "std": std, "n": len(accs), "accuracies": accs, "protocol": dataclasses.asdict(protocol),
           "labels": kind}
    if kind == "soft":
        out["loss"] = SOFT_LOSS
    if len(ticks) > 1:
        best = [max(c) for c in curves]
        b_mean, b_std = _mean_std(best)
        out.update(best={"mean": b_mean, "std": b_std, "accuracies": best, "epochs": ticks}, curves=curves)
    return out


__all__ = ["PROTOCOLS", "Protocol", "SOFT_LOSS", "check_labels", "checkpoint_epochs", "evaluate", "get_protocol", "test_accuracy", "train_network"]
