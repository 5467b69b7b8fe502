"""Expert trajectories for MTT and HaBa (docs/spec.md §3 "Experts", MTT ``buffer.py``).

``num_experts`` ConvNet-3s are trained on the real training set with plain SGD (``lr_teacher``,
momentum 0, weight decay 0 by default), per-sample DSA on every batch; each expert's parameters are
recorded as one flat vector per epoch (epoch 0 = the initialization), so a trajectory has
``epochs + 1`` vectors. A run directory holds:

* ``config.json``        - the settings (an existing directory must have the same ones);
* ``expert_NNN.pt``      - one finished expert: ``{"trajectory": [P-vectors], "names", "shapes",
  "width", "dataset", "epochs", "test_accuracy", ...}`` (written atomically when it finishes);
* ``partial.pt``         - the expert in training (network, optimizer and generator state and its
  trajectory so far), rewritten atomically after every epoch, removed when the expert is saved.

A killed run continues from the last finished epoch of the last unfinished expert, and reaches the
same trajectories as an uninterrupted one (every expert draws from its own generator, seeded with
``seed + index``, saved in ``partial.pt``).

Layout of a flat vector: ``torch.cat([p.flatten() for p in net.parameters()])`` (the order of
``names``/``shapes``), which :func:`unflatten` inverts.
"""
from __future__ import annotations

import glob
import json
import os
import shlex

import torch
import torch.nn.functional as F
from tqdm import tqdm

from . import data
from . import precision as amp
from ._args import check_settings
from ._files import atomic_save as _atomic_save, write_json
from .data.augment import DiffAugment, strategy_for
from .device import generator as device_generator, generator_state, load_generator_state, resolve as resolve_device
from .evaluate import test_accuracy
from ..nn.convnet import ConvNet
from .data.zca import zca_reg

CONFIG = "config.json"
PARTIAL = "partial.pt"
DSA_STRATEGY = "color_crop_cutout_flip_scale_rotate"

#: ``paper``: MTT ``buffer.py`` (100 experts × 50 epochs, width 128, the whole training set per epoch).
#: ``quick``: sized for a 2-core CPU: width 32, 2 experts × 8 "epochs" of 10,240 random real images
#: (40 SGD steps); on Fashion-MNIST one such epoch is ~12 s on an idle core.
EXPERT_PRESETS = {
    "paper": dict(num_experts=100, epochs=50, width=128, lr_teacher=0.01, momentum=0.0, weight_decay=0.0,
                  batch=256, images_per_epoch=None, aug=DSA_STRATEGY, zca=False, precision="fp32"),
    "quick": dict(num_experts=2, epochs=8, width=32, lr_teacher=0.01, momentum=0.0, weight_decay=0.0,
                  batch=256, images_per_epoch=10240, aug=DSA_STRATEGY, zca=False, precision="fp32"),
}
#: settings added after expert directories were first written: what an older config.json meant
_SETTINGS_SINCE = {"precision": "fp32"}


def flatten(net: torch.nn.Module) -> torch.Tensor:
    """All parameters of ``net`` as one detached flat vector on the CPU, in ``net.parameters()`` order
    (a trajectory is checkpoint data)."""
    return torch.cat([p.detach().reshape(-1) for p in net.parameters()]).cpu().clone()


def unflatten(flat: torch.Tensor, names: list[str], shapes: list[tuple[int, ...]]) -> dict[str, torch.Tensor]:
    """Views of ``flat`` shaped like the named parameters (differentiable in ``flat``)."""
    sizes = [int(torch.Size(s).numel()) for s in shapes]
    if flat.dim() != 1 or flat.numel() != sum(sizes):
        raise ValueError(f"flat must be a 1-D vector of {sum(sizes)} parameters, got shape {tuple(flat.shape)}")
    return {n: t.view(s) for n, t, s in zip(names, flat.split(sizes), shapes)}


def _expert_path(out: str, i: int) -> str:
    return os.path.join(out, f"expert_{i:03d}.pt")


def train_experts(dataset: str, out: str, *, preset: str = "quick", num_experts: int | None = None,
                  epochs: int | None = None, seed: int = 0, data_dir: str | None = None, progress: bool = True,
                  device: str | torch.device | None = "auto", **overrides) -> list[str]:
    """Train experts into run directory ``out`` (resuming what is there); returns the expert files.

    Args:
        dataset: a :data:`ddkernels.distill.data.DATASETS` name.
        out: run directory.
        preset: ``"quick"`` or ``"paper"`` (see :data:`EXPERT_PRESETS`).
        num_experts, epochs: override the preset's. Raising ``num_experts`` on an existing run adds
            experts; changing anything else raises.
        seed: expert ``i`` uses seed ``seed + i`` (initialization, batches, augmentation).
        device: where the experts train (``"auto"``, ``"cpu"``, ``"cuda[:N]"``); the training set is
            put there once. Trajectories are saved on the CPU, so experts made on a GPU serve a CPU
            run and the reverse.
        overrides: any other :data:`EXPERT_PRESETS` key (``width``, ``lr_teacher``, ``batch``, ...;
            ``precision``: ``"fp32"``, ``"bf16"`` or, on CUDA, ``"fp16"``, see
            :mod:`ddkernels.distill.precision`; the trajectories are float32 either way).
    """
    if preset not in EXPERT_PRESETS:
        raise ValueError(f"--preset must be one of {sorted(EXPERT_PRESETS)}, got {preset!r}")
    dev = resolve_device(device, what="--device")
    hp = dict(EXPERT_PRESETS[preset])
    hp.update(check_settings(hp, overrides, "expert setting", EXPERT_PRESETS.values()))
    if num_experts is not None:
        hp["num_experts"] = num_experts
    if epochs is not None:
        hp["epochs"] = epochs
    for key in ("num_experts", "epochs", "width", "batch"):
        if isinstance(hp[key], bool) or not isinstance(hp[key], int) or hp[key] < 1:
            raise ValueError(f"--{key.replace('_', '-')} must be a positive int, got {hp[key]!r}")
    amp.check_precision(hp["precision"], dev, what="--precision")
    ds = data.load_dataset(dataset, data_dir).to(dev)
    reg = zca_reg(hp["zca"])
    if reg is not None:  # MTT's --zca: experts and the distillation must see the same whitened images
        ds = ds.whitened(reg, progress=progress)
    config = {"dataset": dataset, "data_dir": data_dir, "seed": seed, "preset": preset,
              **{k: v for k, v in hp.items() if k != "num_experts"}}
    os.makedirs(out, exist_ok=True)
    cpath = os.path.join(out, CONFIG)
    if os.path.exists(cpath):
        with open(cpath) as f:
            saved = {**_SETTINGS_SINCE, **json.load(f)}
        diff = {k: (saved.get(k), v) for k, v in config.items() if saved.get(k) != v}
        if diff:
            raise ValueError(f"--out {out!r} holds experts trained with other settings "
                             f"({', '.join(f'{k}: {a!r} there, {b!r} here' for k, (a, b) in diff.items())}); "
                             f"pick another --out")
    write_json({**config, "num_experts": hp["num_experts"]}, cpath)
    test_x, test_y = ds.normalize(ds.test_x), ds.test_y
    bar = tqdm(range(hp["num_experts"]), desc="experts", disable=not progress)
    for i in bar:
        if not os.path.exists(_expert_path(out, i)):
            _train_one(ds, out, i, hp, seed, test_x, test_y, progress, dev)
        bar.set_postfix(done=i + 1)
    return [_expert_path(out, i) for i in range(hp["num_experts"])]


def _train_one(ds: data.Dataset, out: str, i: int, hp: dict, seed: int, test_x, test_y, progress: bool,
               device: torch.device) -> None:
    ppath = os.path.join(out, PARTIAL)
    net = None
    if os.path.exists(ppath):
        state = torch.load(ppath, map_location=device, weights_only=False)
        if state["index"] == i:
            gen = device_generator(device, seed + i)
            load_generator_state(gen, state["generator"], seed=seed + i, iteration=len(state["trajectory"]) - 1,
                                 name=f"expert {i}")
            net = ConvNet(ds.channels, ds.num_classes, width=hp["width"], im_size=ds.im_size).to(device)
            net.load_state_dict(state["net"])
            trajectory = [t.cpu() for t in state["trajectory"]]
    if net is None:
        gen = device_generator(device, seed + i)
        with torch.random.fork_rng(devices=[]):
            # init on the CPU from the CPU's RNG: the same weights on every device
            torch.manual_seed(int(torch.randint(2 ** 62, (1,), generator=gen, device=device)))
            net = ConvNet(ds.channels, ds.num_classes, width=hp["width"], im_size=ds.im_size)
        net.to(device)
        trajectory = [flatten(net)]
    opt = torch.optim.SGD(net.parameters(), lr=hp["lr_teacher"], momentum=hp["momentum"],
                          weight_decay=hp["weight_decay"])
    scaler = amp.grad_scaler(hp["precision"], device)
    if len(trajectory) > 1:
        opt.load_state_dict(state["optimizer"])
        if scaler is not None:
            scaler.load_state_dict(state["scaler"])
    aug = DiffAugment(strategy_for(hp["aug"], ds.name)) if hp["aug"] else None
    n = len(ds.train_y)
    per_epoch = min(hp["images_per_epoch"] or n, n)
    for epoch in tqdm(range(len(trajectory) - 1, hp["epochs"]), desc=f"expert {i}", leave=False,
                      disable=not progress, initial=len(trajectory) - 1, total=hp["epochs"]):
        for idx in torch.randperm(n, generator=gen, device=device)[:per_epoch].split(hp["batch"]):
            x = ds.normalize(ds.train_x[idx])
            if aug is not None:
                x = aug(x, generator=gen)
            with amp.autocast(hp["precision"], device):
                loss = F.cross_entropy(net(x), ds.train_y[idx])
            opt.zero_grad(set_to_none=True)
            amp.scaled(loss, scaler).backward()
            amp.step(opt, scaler)
        trajectory.append(flatten(net))
        partial = {"index": i, "net": net.state_dict(), "optimizer": opt.state_dict(),
                   "generator": generator_state(gen), "trajectory": trajectory}
        if scaler is not None:
            partial["scaler"] = scaler.state_dict()
        _atomic_save(partial, ppath)
    names = [k for k, _ in net.named_parameters()]
    shapes = [tuple(p.shape) for p in net.parameters()]
    acc = test_accuracy(net, test_x, test_y, precision=hp["precision"])
    _atomic_save({"trajectory": trajectory, "names": names, "shapes": shapes, "width": hp["width"],
                  "dataset": ds.name, "epochs": hp["epochs"], "lr_teacher": hp["lr_teacher"],
                  "zca": zca_reg(hp["zca"]), "precision": hp["precision"],
                  "test_accuracy": acc}, _expert_path(out, i))
    if os.path.exists(ppath):
        os.remove(ppath)


class ExpertBuffer:
    """The finished experts of a run directory, loaded once (each a ``(epochs + 1, P)`` tensor).

    Raises ``FileNotFoundError`` when ``expert_dir`` holds no experts (with the command that makes
    them, from ``data_dir``: the folder the run reads the dataset from) and ``ValueError`` when they do
    not fit the network (dataset, width) or are too short.
    """

    def __init__(self, expert_dir: str | None, *, dataset: str, width: int, min_epochs: int,
                 zca: float | None = None, data_dir: str | None = None):
        make = f"ddkernels experts --dataset {dataset}" + (f" --data-dir {shlex.quote(data_dir)}" if data_dir else "")
        if not expert_dir:
            raise FileNotFoundError(
                f"MTT/HaBa need expert trajectories: set hp expert_dir (--set expert_dir=DIR) to a directory "
                f"made by `{make} --out DIR`")
        files = sorted(glob.glob(os.path.join(expert_dir, "expert_*.pt")))
        if not files:
            raise FileNotFoundError(f"expert_dir {expert_dir!r} holds no expert_*.pt files; make them with "
                                    f"`{make} --out {shlex.quote(expert_dir)}`")
        self.trajectories = []
        for path in files:
            e = torch.load(path, map_location="cpu", weights_only=False)
            if e["dataset"] != dataset or e["width"] != width:
                raise ValueError(f"expert {path!r} is a width-{e['width']} ConvNet on {e['dataset']!r}; this run "
                                 f"needs width {width} on {dataset!r} (set hp width or pick another expert_dir)")
            if e.get("zca") != zca:
                raise ValueError(f"expert {path!r} was trained with zca={e.get('zca')!r}, this run has zca={zca!r} "
                                 f"(regularization; None = off): train experts with the same --set zca=…")
            if len(e["trajectory"]) - 1 < min_epochs:
                raise ValueError(f"expert {path!r} has {len(e['trajectory']) - 1} epochs; this run needs "
                                 f"max_start_epoch + expert_epochs = {min_epochs}")
            self.trajectories.append(torch.stack(e["trajectory"]))
        self.names, self.shapes = e["names"], [tuple(s) for s in e["shapes"]]
        self.files = files

    def __len__(self) -> int:
        return len(self.trajectories)


__all__ = ["EXPERT_PRESETS", "ExpertBuffer", "flatten", "train_experts", "unflatten"]
