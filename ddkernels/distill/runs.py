"""Run directories: distill with checkpoints and resume, save the synthetic set, evaluate it.

A run directory holds:

* ``config.json``        - the run's arguments and resolved hyperparameters (``--resume`` needs only
  ``--out``: the CLI takes the rest from here, :func:`saved_options`);
* ``checkpoint.pt``      - synthetic tensor, optimizer and generator state, history (written
  atomically every ``checkpoint_every`` iterations; ``--resume`` continues from it). A class-parallel
  run (torchrun, :mod:`ddkernels.distill.distributed`) writes one ``checkpoint-rank{r}.{slot}.pt`` per rank
  (its classes' rows, optimizer, random streams) and, once every rank has written, rank 0's
  ``checkpoint.pt`` naming the slot, the world size and the gathered synthetic tensors; the two slots
  alternate, so a run killed while writing resumes from the last complete set;
* ``checkpoint.prev.pt`` - the checkpoint before ``checkpoint.pt`` (moved there by each new one): when
  ``checkpoint.pt`` cannot be read, ``--resume`` continues from it with a warning;
* ``synthetic.pt``       - the stored synthetic parameters: ``{"method", "dataset", "ipc", "params",
  "stored", "labels", "factor", "space", "mean", "std", "storage", "images", "image_labels"}``:
  ``params`` maps each stored tensor's name to it (factorized methods store several; ``stored`` is
  ``params["syn"]`` for plain-image methods), ``space`` says how to read them (IDC: [0, 1] pixels;
  DC/DSA/DM: normalized), ``storage`` counts stored floats against the IPC budget, and
  ``images``/``image_labels`` are the decoded training set (``label_kind``: ``"hard"``, int64 class
  indices, or ``"soft"``, float ``(N, C)`` label distributions; ``labels`` stays the class of each
  stored row), ``eval_overrides`` the evaluation-protocol
  fields the set needs (MTT/HaBa: the learned lr; HaBa: ``choose``, one random hallucination per base
  and epoch), ``classes`` the class names by label;
* ``images_labels.pt``   - the training set they stand for, as the tuple ``(images, labels)``:
  float32 ``(N, C, H, W)`` normalized with the dataset's mean/std, int64 ``(N,)`` (the layout
  DC-BENCH-style loaders read: ``images, labels = torch.load(path)``), or for a soft-label set
  (RTP ``label_mode="soft"``) float32 ``(N, num_classes)`` label distributions, on which
  ``ddkernels evaluate`` trains (soft-target cross-entropy, :mod:`~ddkernels.distill.evaluate`);
* ``zca.pt``             - with hyperparameter ``zca``: the train-fitted :class:`~ddkernels.distill.data.zca.ZCA`
  (``ZCA.from_state_dict(torch.load(path))``); "normalized" above then means ZCA-whitened, and
  ``synthetic.pt`` holds the same state under ``"zca"``;
* ``synthetic.png``      - the stored images, one row per class labelled with its name, each enlarged to
  at least 64 px (``decoded.png`` too for IDC), shown un-normalized (un-whitened);
* ``metrics.json``       - method, dataset, ipc, backend, seconds, classes, accuracy and random_real
  ``{mean, std, n, accuracies}`` (final epoch), ``labels`` (``"hard"``/``"soft"``: what the
  synthetic set's networks trained on; the random-real baseline's ``labels`` is always ``"hard"``); with a protocol that tests several times (IDC)
  also ``accuracy_best`` and ``random_real.best`` (per network the best test accuracy); the protocol
  (``protocol``: quick/paper, ``eval_protocol``: every field); versions; the device and CPU threads;
* ``evaluations/NNN.json`` - one record per :func:`evaluate_dir` (``ddkernels evaluate``), numbered
  001, 002, …; ``metrics.json`` is never rewritten;
* ``log.txt``            - the log, starting with ``ddkernels.info``'s report.
"""
from __future__ import annotations

import json
import logging
import os
import platform
import shlex
import sys
import time

import torch

from .. import __version__
from ..dispatch import BACKENDS
from . import data
from ._args import check_choice, check_int, check_positive_number, check_settings
from ._files import atomic_save, write_json
from .device import describe as describe_device, dist_backend, resolve as resolve_device
from .distributed import DEFAULT_TIMEOUT_S, Shard, join, launched_world, leave
from .evaluate import SOFT_LOSS, evaluate, get_protocol
from .precision import check_precision
from ..nn.networks import get_network, network_name
from .data.imageio import labelled_grid, write_png
from .methods import METHODS, PRESET_NAMES, make_distiller, preset as preset_hp
from .data.zca import ZCA

CHECKPOINT = "checkpoint.pt"
PREV_CHECKPOINT = "checkpoint.prev.pt"
ZCA_FILE = "zca.pt"


def _logger(out: str) -> logging.Logger:
    log = logging.getLogger(f"ddkernels.run.{os.path.abspath(out)}")
    log.setLevel(logging.INFO)
    log.propagate = False
    if not log.handlers:
        fh = logging.FileHandler(os.path.join(out, "log.txt"))
        fh.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        log.addHandler(fh)
        sh = logging.StreamHandler()
        sh.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(sh)
    return log


def versions() -> dict:
    v = {"ddkernels": __version__, "torch": torch.__version__, "python": platform.python_version()}
    try:
        import triton
        v["triton"] = triton.__version__
    except ImportError:
        pass
    return v


def random_real(dataset: data.Dataset, ipc: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``ipc`` random real training images per class (normalized), the same-storage baseline."""
    # drawn on the host, so every device evaluates the same baseline images
    sampler = data.ClassSampler(dataset.train_y.cpu(), dataset.num_classes)
    idx = sampler.indices_all(ipc, torch.Generator(device="cpu").manual_seed(seed)).flatten().to(dataset.device)
    return dataset.normalize(dataset.train_x[idx]), dataset.train_y[idx]


def eval_protocol(hp: dict, preset: str, n_nets: int | None = None, **overrides):
    """The evaluation protocol a trainer's preset asks for (``overrides``: the trainer's
    :meth:`~ddkernels.distill.methods.Distiller.eval_overrides`, e.g. MTT's learned lr)."""
    return get_protocol(hp["eval"], preset, epochs=hp.get("eval_epochs"), aug=hp.get("eval_aug"),
                        dc_aug=hp.get("eval_dc_aug"), width=hp.get("eval_width"), n_nets=n_nets, **overrides)


#: The hyperparameters that choose a run's evaluation protocol (what ``--protocol`` takes from a preset).
EVAL_KEYS = ("eval", "eval_epochs", "eval_aug", "eval_dc_aug", "eval_width")
PROTOCOL_NAMES = PRESET_NAMES


def protocol_hp(method: str, dataset: str, ipc: int, hp: dict, run_preset: str, protocol: str | None) -> tuple[dict, str]:
    """``(hp, budget)`` for evaluating a run distilled with ``hp`` under ``run_preset`` with evaluation
    ``protocol`` (``quick``/``paper``; None: the run's own, as before ``--protocol`` existed). The run's
    own preset keeps the run's hyperparameters (``--set eval_epochs=…`` included); another one takes its
    evaluation keys (:data:`EVAL_KEYS`) from the method's preset of that name: ``paper`` is the
    method's own protocol (width 128, its epochs, schedule, augmentation, the full test set and its
    number of networks)."""
    if protocol is None or protocol == run_preset:
        return hp, run_preset if protocol is None else protocol
    check_choice("--protocol", protocol, PROTOCOL_NAMES)
    other = preset_hp(method, dataset, ipc, protocol)
    return {**hp, **{k: other[k] for k in EVAL_KEYS if k in other}}, protocol


def eval_archs(archs, dataset: data.Dataset | None = None) -> list[str]:
    """Evaluation networks as registry names: None → ``["ConvNet"]``; a comma-separated string or a
    list of get_network names (any case). ValueError naming ``--eval-arch``/``--arch`` otherwise,
    or, given ``dataset``, for a network its images are too small for (checked before any work)."""
    if archs is None:
        return ["ConvNet"]
    items = archs.split(",") if isinstance(archs, str) else list(archs)
    names = [a.strip() for a in items if isinstance(a, str) and a.strip()]
    if not names or len(names) != len(items):
        raise ValueError(f"--eval-arch/--arch: expected comma-separated network names, got {archs!r}")
    try:
        names = list(dict.fromkeys(network_name(a) for a in names))
        if dataset is not None:
            with torch.device("meta"):  # shapes only: no memory, no init
                for a in names:
                    get_network(a, dataset.channels, dataset.num_classes, dataset.im_size)
    except ValueError as err:
        raise ValueError(f"--eval-arch/--arch: {err}") from None
    return names


def distill(method: str, dataset: str, ipc: int, out: str, *, preset: str = "quick", iterations: int | None = None,
            backend: str = "auto", seed: int = 0, data_dir: str | None = None, resume: bool = False,
            checkpoint_every: int = 1, evaluate_after: bool = True, eval_nets: int | None = None,
            baseline: bool = True, overrides: dict | None = None, progress: bool = True,
            dist_timeout: float = DEFAULT_TIMEOUT_S, device: str | torch.device | None = "auto",
            eval_arch=None, eval_protocol: str | None = None) -> dict:
    """Distill ``dataset`` with ``method`` into run directory ``out``; returns the metrics dict.

    ``device``: where the run computes (``"auto"``: CUDA when visible, else the CPU; ``"cpu"``,
    ``"cuda"``, ``"cuda:N"``; under torchrun ``cuda`` is ``cuda:$LOCAL_RANK`` and the ranks talk over
    nccl, on CPUs over gloo). A run may be resumed on another device (see
    :mod:`ddkernels.distill.device`).

    Under ``torchrun`` (``WORLD_SIZE`` > 1) the classes are split over the ranks (see
    :mod:`ddkernels.distill.distributed`): every rank distills its classes, rank 0 gathers the synthetic set,
    writes the run directory in the single-process format and evaluates; other ranks return
    ``{"rank": r}``. ``dist_timeout`` bounds how long ranks wait for each other (joining and every
    collective).

    Every argument is checked before the data is loaded: a bad one raises ``ValueError`` naming it (as
    its command-line flag) and the values it allows; ``overrides`` must be keys of the preset with values
    of the preset's types. Also raises ``ValueError``/``FileNotFoundError`` for an IPC larger than a
    class, a missing data dir, an existing run without ``resume``, or a checkpoint that cannot be read
    (``checkpoint.pt`` and the previous one, ``checkpoint.prev.pt``; when only ``checkpoint.pt`` is bad
    the run resumes from ``checkpoint.prev.pt`` with a warning); under torchrun also for a method that does
    not split by class, fewer classes than ranks, or a resumed run distilled on another number of ranks;
    ``RuntimeError`` when not every rank joins in time. Ctrl-C raises :class:`Interrupted` (a
    ``KeyboardInterrupt``) naming the last checkpoint.

    ``eval_protocol`` (``--eval-protocol``): the evaluation's protocol, ``quick`` or ``paper`` (see
    :func:`protocol_hp`; default: the preset's own).
    """
    hp_overrides = check_arguments(method, dataset, ipc, preset=preset, iterations=iterations, backend=backend,
                                   seed=seed, checkpoint_every=checkpoint_every, eval_nets=eval_nets,
                                   overrides=overrides, dist_timeout=dist_timeout)
    if eval_protocol is not None:
        check_choice("--eval-protocol", eval_protocol, PROTOCOL_NAMES)
    dev = resolve_device(device, what="--device")
    check_precision(hp_overrides.get("precision", "fp32"), dev, what="--precision")
    archs = eval_archs(eval_arch)  # names now; whether they fit the images once the data is loaded
    world, rank = launched_world()
    if world > 1 and not METHODS[method].class_parallel:
        raise ValueError(f"--method {method} cannot run on {world} ranks (torchrun): "
                         f"{METHODS[method].not_class_parallel_because}; run it as one process")
    ckpt = _Checkpoints(out, world, rank)
    if ckpt.exists() and not resume:
        raise FileExistsError(f"--out {out!r} already holds a run; pass --resume to continue it or pick another --out")
    if resume and not ckpt.exists():
        raise FileNotFoundError(f"--resume: no {CHECKPOINT} in {out!r} to resume from")
    interrupted = False
    try:
        return _distill(method, dataset, ipc, out, ckpt, preset=preset, iterations=iterations, backend=backend,
                        seed=seed, data_dir=data_dir, resume=resume, checkpoint_every=checkpoint_every,
                        evaluate_after=evaluate_after, eval_nets=eval_nets, baseline=baseline,
                        overrides=hp_overrides, progress=progress, dist_timeout=dist_timeout, device=dev,
                        archs=archs, eval_protocol=eval_protocol)
    except KeyboardInterrupt:
        interrupted = True
    if interrupted:  # raised here, not in the handler: the trainer's frames (and its progress bar) close first
        raise Interrupted(out, ckpt.last, ckpt.iteration, world, rank)


def check_arguments(method: str, dataset: str, ipc: int, *, preset: str = "quick", iterations: int | None = None,
                    backend: str = "auto", seed: int = 0, checkpoint_every: int = 1, eval_nets: int | None = None,
                    overrides: dict | None = None, dist_timeout: float = DEFAULT_TIMEOUT_S) -> dict:
    """Check :func:`distill`'s arguments without loading anything; returns the checked ``overrides``
    (see :func:`~ddkernels.distill._args.check_settings`). Raises ``ValueError`` naming the bad one."""
    if method not in METHODS:
        raise ValueError(f"--method: unknown method {method!r}; expected one of {', '.join(METHODS)}")
    if dataset not in data.DATASETS:
        raise ValueError(f"--dataset: unknown dataset {dataset!r}; expected one of {', '.join(data.DATASETS)}")
    check_choice("--preset", preset, PRESET_NAMES)
    check_int("--ipc", ipc)
    check_int("--iterations", iterations, 0, optional=True, note=" (0 evaluates the initialization)")
    check_choice("--backend", backend, ("auto",) + BACKENDS)
    check_int("--seed", seed, None)
    check_int("--checkpoint-every", checkpoint_every)
    check_int("--eval-nets", eval_nets, optional=True)
    check_positive_number("--dist-timeout", dist_timeout)
    if overrides is not None and not isinstance(overrides, dict):
        raise ValueError(f"overrides must be a mapping of hyperparameters (got {type(overrides).__name__})")
    hp = preset_hp(method, dataset, ipc, preset)
    others = [preset_hp(method, dataset, ipc, p) for p in PRESET_NAMES if p != preset]
    checked = check_settings(hp, overrides or {}, f"{method} hyperparameter", others)
    check_int("--set iterations", checked.get("iterations", hp["iterations"]), 0)
    METHODS[method].check_hp({**hp, **checked})
    return checked


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during :func:`distill`. ``checkpoint``: the last checkpoint file (``None``: none written yet),
    ``iteration``: its iteration; ``str()`` is the one line the CLI prints (with the command that resumes)."""

    def __init__(self, out: str, checkpoint: str | None, iteration: int | None, world: int = 1, rank: int = 0):
        self.out, self.checkpoint, self.iteration, self.world, self.rank = out, checkpoint, iteration, world, rank
        super().__init__(self.message())

    def message(self) -> str:
        if self.checkpoint is None:
            return (f"interrupted before the first checkpoint; nothing to resume in {self.out}: "
                    f"run the same command again")
        launch = "ddkernels" if self.world == 1 else \
            f"torchrun <the same launch options, {self.world} ranks> -m ddkernels"
        return (f"interrupted; last checkpoint: {self.checkpoint} (iteration {self.iteration}). "
                f"Resume with: {launch} distill --out {shlex.quote(self.out)} --resume")


#: :func:`distill` arguments recorded in ``config.json`` besides the run's identity.
RUN_OPTIONS = ("checkpoint_every", "evaluate_after", "eval_nets", "baseline", "eval_protocol")


def saved_options(out: str) -> dict:
    """The :func:`distill` arguments the run in ``out`` was started with, from its ``config.json`` (so that
    resuming needs only ``--out``): method, dataset, ipc, preset, iterations, backend, seed, data_dir,
    ``overrides`` (the hyperparameters that differ from the preset) and, for runs written since they are
    recorded, checkpoint_every, evaluate_after, eval_nets and baseline."""
    path = os.path.join(out, "config.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--resume: {out!r} has no config.json to take the run's settings from; "
                                f"pass --method, --dataset and --ipc")
    try:
        with open(path) as f:
            config = json.load(f)
        opts = {k: config[k] for k in ("method", "dataset", "ipc", "preset", "iterations", "hp")}
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ValueError(f"--resume: {path} is not a run's config ({type(err).__name__}: {err}); "
                         f"pass --method, --dataset and --ipc") from None
    hp = opts.pop("hp")
    check_arguments(opts["method"], opts["dataset"], opts["ipc"], preset=opts["preset"])
    hp = {**METHODS[opts["method"]].HP_SINCE, **hp}
    base = preset_hp(opts["method"], opts["dataset"], opts["ipc"], opts["preset"])
    gone = sorted(set(hp) - set(base))
    if gone:
        raise ValueError(f"--resume: {path} has hyperparameter(s) {gone} that {opts['method']}'s "
                         f"{opts['preset']} preset no longer has (the run was written by another version)")
    opts["overrides"] = {k: v for k, v in hp.items() if base[k] != v}
    opts.update({k: config[k] for k in ("backend", "seed", "data_dir", *RUN_OPTIONS) if k in config})
    return opts


def _distill(method, dataset, ipc, out, ckpt, *, preset, iterations, backend, seed, data_dir, resume,
             checkpoint_every, evaluate_after, eval_nets, baseline, overrides, progress, dist_timeout, device,
             archs, eval_protocol=None) -> dict:
    world, rank = ckpt.world, ckpt.rank
    log = _logger(out) if rank == 0 and resume else None
    saved = state = None
    if resume:  # read before the data: a checkpoint that cannot be read fails at once
        saved, state = ckpt.load(warn=log.warning if log else None)
        for key in ("method", "dataset", "ipc", "preset", "seed", "backend"):
            value = {"method": method, "dataset": dataset, "ipc": ipc, "preset": preset, "seed": seed,
                     "backend": backend}[key]
            if saved.get(key) != value:
                raise ValueError(f"--resume: the run in {out!r} has {key}={saved.get(key)!r}, this call has {value!r}")
    if resume and isinstance(saved.get("hp"), dict):
        # A run written before a hyperparameter existed resumes with the value it had then.
        since = {k: v for k, v in METHODS[method].HP_SINCE.items() if k not in saved["hp"]}
        saved["hp"] = {**saved["hp"], **since}
        overrides = {**since, **(overrides or {})}
    ds = data.load_dataset(dataset, data_dir)
    eval_archs(archs, ds)
    shard = Shard.of(ds.num_classes, world, rank) if world > 1 else None  # fewer classes than ranks: fails here
    joined = shard is not None and not torch.distributed.is_initialized()
    if shard is not None:
        if device.type == "cuda":
            torch.cuda.set_device(device)  # nccl's collectives run on this rank's GPU
        join(world, rank, dist_timeout, backend=dist_backend(device))
    try:
        trainer = make_distiller(method, ds, ipc, preset, backend=backend, seed=seed, shard=shard, device=device,
                                 **overrides)
        total = iterations if iterations is not None else trainer.hp["iterations"]
        os.makedirs(out, exist_ok=True)
        log = _logger(out) if rank == 0 else None
        say = log.info if log else (lambda msg: None)
        config = {"method": method, "dataset": dataset, "ipc": ipc, "preset": preset, "iterations": total,
                  "backend": backend, "seed": seed, "data_dir": data_dir, "device": str(device), "hp": trainer.hp,
                  "checkpoint_every": checkpoint_every, "evaluate_after": evaluate_after, "eval_nets": eval_nets,
                  "baseline": baseline}
        if shard is not None:
            config["world_size"] = world
        if eval_protocol is not None:  # only when given: the config of a run without it stays as it was
            config["eval_protocol"] = eval_protocol
        ckpt.config, ckpt.shard = config, shard
        if resume:
            if saved.get("hp") != config["hp"]:  # (hyperparameters added since the run: filled in above)
                raise ValueError(f"--resume: the run in {out!r} has hp={saved.get('hp')!r}, this call has "
                                 f"{config['hp']!r}")
            trainer.load_state_dict(state)
            say(f"resumed {out} at iteration {trainer.iteration}/{total}")
        else:
            from ..info import report
            say(report())
            say(f"distill {json.dumps(config)}" + (f" on {world} ranks, classes {shard.blocks()}" if shard else ""))
        say(f"device {json.dumps(describe_device(device))}")
        if rank == 0:
            write_json(config, os.path.join(out, "config.json"))  # on resume: records the new iteration total

        def checkpoint(t):
            if t.iteration % checkpoint_every == 0 or t.iteration == total:
                ckpt.save(t)
                say(f"iteration {t.iteration}/{total} loss {t.history[-1]['loss']:.6g} "
                    f"({t.seconds:.1f} s) checkpoint written")

        trainer.run(total, callback=checkpoint, progress=progress and rank == 0)
        result = trainer.gathered()
    finally:
        if joined:
            leave()
    if rank != 0:
        return {"rank": rank}
    return finish(out, result, preset, evaluate_after=evaluate_after, eval_nets=eval_nets, baseline=baseline,
                  progress=progress, archs=archs, protocol=eval_protocol)


class _Checkpoints:
    """``checkpoint.pt`` of a single-process run; per-rank files in alternating slots plus rank 0's
    manifest for a class-parallel one (see the module docstring). Each new ``checkpoint.pt`` first moves
    the one before it to ``checkpoint.prev.pt``, which :meth:`load` falls back to when ``checkpoint.pt``
    cannot be read (a copy cut short, a full disk, a file from elsewhere)."""

    def __init__(self, out: str, world: int = 1, rank: int = 0):
        self.out, self.world, self.rank = out, world, rank
        self.path, self.prev_path = os.path.join(out, CHECKPOINT), os.path.join(out, PREV_CHECKPOINT)
        self.config, self.shard, self.slot = None, None, 1  # config and shard: set once the data is loaded
        self.last, self.iteration = None, None  # the checkpoint file last written or loaded, its iteration
        self.keep_previous = True  # False after falling back: keep the good previous one, overwrite the bad one

    def exists(self) -> bool:
        return os.path.exists(self.path) or os.path.exists(self.prev_path)

    def rank_path(self, rank: int, slot: int) -> str:
        return os.path.join(self.out, f"checkpoint-rank{rank}.{slot}.pt")

    def _save_manifest(self, obj: dict, iteration: int) -> None:
        def saved():  # with the renames: Ctrl-C during them names this file with its iteration
            self.last, self.iteration, self.keep_previous = self.path, iteration, True
        atomic_save(obj, self.path, keep_previous=self.prev_path if self.keep_previous else None, then=saved)

    def save(self, trainer) -> None:
        s = self.shard
        if s is None:
            self._save_manifest({"config": self.config, "trainer": trainer.state_dict()}, trainer.iteration)
            return
        self.slot = 1 - self.slot  # never overwrite the set the manifest names
        atomic_save({"config": self.config, "rank": s.rank, "world_size": s.world_size,
                     "trainer": trainer.state_dict()}, self.rank_path(s.rank, self.slot))
        # The gather completes only once every rank has called it, i.e. written its file.
        full = trainer.gathered()
        if s.rank == 0:
            params = {k: v.clone() for k, v in full.synthetic_params().items()}
            self._save_manifest({"config": self.config, "world_size": s.world_size, "classes": s.blocks(),
                                 "slot": self.slot, "iteration": trainer.iteration, "params": params},
                                trainer.iteration)
        else:
            self.last, self.iteration = self.path, trainer.iteration

    def load(self, warn=None) -> tuple[dict, dict]:
        """``(config, trainer state)`` of this process's part of the run in ``out``, from ``checkpoint.pt`` or,
        when that cannot be read, from ``checkpoint.prev.pt`` (``warn``: called with the one-line warning)."""
        problems = []
        for path in (self.path, self.prev_path):
            if not os.path.exists(path):
                problems.append(f"{path} is missing")
                continue
            try:
                manifest = torch.load(path, map_location="cpu", weights_only=False)
                if not isinstance(manifest, dict) or "config" not in manifest or \
                        ("trainer" not in manifest and "slot" not in manifest):
                    raise ValueError("not a ddkernels checkpoint")
            except Exception as err:  # truncated, empty or foreign files fail in many ways (EOFError, OSError, ...)
                why = str(err).split(". ")[0]  # torch's messages go on for several sentences
                problems.append(f"{path} cannot be read ({type(err).__name__}: {why})")
                continue
            config, state = self._state(manifest)
            self.last = path
            if problems and warn is not None:
                warn(f"warning: {problems[0]}; resuming from the previous checkpoint {path} "
                     f"(iteration {self.iteration})")
            self.keep_previous = not problems
            return config, state
        raise ValueError(f"--resume: no readable checkpoint in {self.out!r}: {'; '.join(problems)}. To start over, "
                         f"delete {CHECKPOINT} and {PREV_CHECKPOINT} there and run without --resume "
                         f"(or pick another --out)")

    def _state(self, manifest: dict) -> tuple[dict, dict]:
        saved = manifest.get("world_size", 1)
        if saved != self.world:
            how = "without torchrun" if saved == 1 else f"with torchrun, --nnodes × --nproc_per_node = {saved}"
            raise ValueError(f"--resume: the run in {self.out!r} was distilled on {saved} rank(s), this launch has "
                             f"{self.world}; resume it {how}: each rank's checkpoint holds its own classes' synthetic "
                             f"rows, optimizer state and random streams, which cannot be re-split exactly")
        if self.world == 1:
            self.iteration = manifest["trainer"]["iteration"]
            return manifest["config"], manifest["trainer"]
        self.slot = manifest["slot"]
        path = self.rank_path(self.rank, self.slot)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"--resume: {path!r} is missing: every rank's checkpoint file must be in --out "
                                    f"(on several nodes, a folder every node sees)")
        state = torch.load(path, map_location="cpu", weights_only=False)
        if state["trainer"]["iteration"] != manifest["iteration"]:
            raise ValueError(f"--resume: {path!r} is at iteration {state['trainer']['iteration']}, "
                             f"{CHECKPOINT} at {manifest['iteration']}")
        self.iteration = manifest["iteration"]
        return manifest["config"], state["trainer"]


def class_names(ds: data.Dataset) -> list[str]:
    """The dataset's class names (an image folder's folder names); the class indices where it has none."""
    return list(ds.classes) if ds.classes else [str(k) for k in range(ds.num_classes)]


def label_kind(labels: torch.Tensor) -> str:
    """``"soft"`` for ``(N, C)`` label distributions, ``"hard"`` for class indices."""
    return "soft" if labels.dim() == 2 else "hard"


def finish(out: str, trainer, preset: str, *, evaluate_after: bool = True, eval_nets: int | None = None,
           baseline: bool = True, progress: bool = True, archs: list[str] | None = None,
           protocol: str | None = None) -> dict:
    """Write the synthetic set, its images and (optionally) its evaluation into ``out``; ``protocol``:
    the evaluation's (see :func:`protocol_hp`)."""
    log = _logger(out)
    ds = trainer.ds
    names = class_names(ds)
    images, labels = (t.detach().cpu() for t in trainer.training_set())  # run outputs live on the host
    factor = getattr(trainer, "factor", 1)
    params = {k: v.detach().cpu().clone() for k, v in trainer.synthetic_params().items()}
    storage = trainer.storage()
    eval_overrides = trainer.eval_overrides()
    atomic_save({"method": trainer.method, "dataset": ds.name, "ipc": trainer.ipc, "params": params,
                 "stored": params.get("syn"), "labels": trainer.labels.cpu().clone(), "factor": factor,
                 "space": trainer.stored_space, "mean": ds.mean, "std": ds.std, "storage": storage,
                 "images": images.float(), "image_labels": labels, "label_kind": label_kind(labels),
                 "eval_overrides": eval_overrides,
                 "zca": _host_zca(ds), "classes": names}, os.path.join(out, "synthetic.pt"))
    if ds.zca is not None:
        atomic_save(_host_zca(ds), os.path.join(out, ZCA_FILE))
    atomic_save((images.float(), labels), os.path.join(out, "images_labels.pt"))
    write_png(os.path.join(out, "synthetic.png"),
              labelled_grid(trainer.pixel_images().detach().cpu(), trainer.labels.cpu(), ds.num_classes, names))
    if trainer.decodes:
        write_png(os.path.join(out, "decoded.png"),
                  labelled_grid(ds.denormalize(images.to(ds.device)).clamp(0, 1).cpu(), labels, ds.num_classes, names))
    log.info(f"storage: {storage['stored_floats']} stored floats, budget {storage['budget_floats']} "
             f"({trainer.ipc} images/class), ratio {storage['ratio']}")
    metrics = {"method": trainer.method, "dataset": ds.name, "ipc": trainer.ipc, "preset": preset,
               "backend": trainer.backend, "iterations": trainer.iteration, "seconds": round(trainer.seconds, 2),
               "train_images": len(labels), "storage": storage, "eval_overrides": eval_overrides,
               "train_labels": label_kind(labels),
               "precision": trainer.precision, "versions": versions(), "device": describe_device(trainer.device),
               "classes": names}
    if evaluate_after:
        hp, budget = protocol_hp(trainer.method, ds.name, trainer.ipc, trainer.hp, preset, protocol)
        metrics["protocol"] = budget
        metrics.update(evaluate_run(out, hp, budget, images, labels, ds, ipc=trainer.ipc, seed=trainer.seed,
                                    eval_nets=eval_nets, baseline=baseline, progress=progress,
                                    overrides=eval_overrides, backend=trainer.backend, device=trainer.device,
                                    archs=archs))
    write_json(metrics, os.path.join(out, "metrics.json"))
    log.info(f"metrics {json.dumps({k: v for k, v in metrics.items() if k != 'versions'})}")
    return metrics


def evaluate_run(out, hp, preset, images, labels, ds, *, ipc, seed, eval_nets=None, baseline=True,
                 progress=True, overrides: dict | None = None, backend: str = "auto", device=None,
                 archs: list[str] | None = None, scores: dict | None = None,
                 precision: str | None = None) -> dict:
    """Evaluate ``(images, labels)`` and, with ``baseline``, ``ipc`` random real images per class,
    on each network of ``archs`` (get_network names; default ConvNet). The first one's results are
    the top-level keys, as with ConvNet alone; with other networks, ``"arch"`` names it and
    ``"architectures"`` holds every network's results by name. ``scores`` (``{"cache_dir", "full_epochs"}``):
    also DD-Ranking's LRS and ARS (:mod:`ddkernels.distill.scores`) under ``"scores"``. ``precision``: the
    evaluation networks' (:class:`~ddkernels.distill.evaluate.Protocol`; default fp32, whatever the distillation's)."""
    archs = eval_archs(archs, ds)
    results = {a: _evaluate_arch(out, hp, preset, images, labels, ds, ipc=ipc, seed=seed, eval_nets=eval_nets,
                                 baseline=baseline, progress=progress, overrides=overrides, backend=backend,
                                 device=device, arch=a, scores=scores, precision=precision)
               for a in archs}
    result = dict(results[archs[0]])
    if archs != ["ConvNet"]:
        result.update(arch=archs[0], architectures=results)
    return result


def _evaluate_arch(out, hp, preset, images, labels, ds, *, ipc, seed, eval_nets, baseline, progress, overrides,
                   backend, device, arch, scores=None, precision=None) -> dict:
    """One network's evaluation. ``overrides`` (the trainer's ``eval_overrides()``) change the
    protocol for the synthetic set only; the baseline keeps the preset's protocol. ``backend``: the
    evaluation networks'."""
    log = _logger(out)
    proto = eval_protocol(hp, preset, eval_nets, precision=precision, **(overrides or {}))
    t0 = time.perf_counter()
    res = evaluate(images, labels, ds, proto, seed=seed, desc=f"eval synthetic ({arch})", progress=progress,
                   backend=backend, arch=arch, device=device)
    # hard- and soft-label results kept apart (DD-Ranking): the set's kind beside its accuracy, the
    # random-real baseline always hard
    result = {"accuracy": _final(res), "labels": label_kind(labels), "eval_protocol": res["protocol"],
              "eval_seconds": round(time.perf_counter() - t0, 2)}
    if result["labels"] == "soft":
        result["eval_loss"] = SOFT_LOSS
    if "best" in res:
        result["accuracy_best"] = _best(res)
    log.info(f"{arch}: synthetic set ({result['labels']} labels): {res['mean']:.2f} ± {res['std']:.2f} % over "
             f"{res['n']} networks" + _best_text(res))
    if baseline:
        rx, ry = random_real(ds, ipc, seed)
        base = evaluate(rx, ry, ds, eval_protocol(hp, preset, eval_nets, precision=precision), seed=seed,
                        desc=f"eval random real ({arch})", progress=progress, backend=backend, arch=arch,
                        device=device)
        result["random_real"] = dict(_final(base), ipc=ipc, labels=label_kind(ry))
        if "best" in base:
            result["random_real"]["best"] = _best(base)
        log.info(f"{arch}: random real ({ipc}/class, same storage): {base['mean']:.2f} ± {base['std']:.2f} %"
                 + _best_text(base))
        if scores is not None:
            result["scores"] = _scores(log, proto, eval_protocol(hp, preset, eval_nets), res, base, images, labels,
                                       rx, ry, ds, seed=seed, progress=progress, backend=backend, device=device,
                                       arch=arch, **scores)
    return result


def _scores(log, proto, base_proto, res, base, images, labels, rx, ry, ds, *, seed, progress, backend, device, arch,
            cache_dir=None, full_epochs=None) -> dict:
    """LRS and ARS (DD-Ranking, :mod:`.scores`) from this evaluation (with augmentation), the same two sets
    evaluated again without it, and the cached full-data accuracy."""
    from . import scores as dd

    kw = dict(seed=seed, progress=progress, backend=backend, arch=arch, device=device)
    syn_naug = evaluate(images, labels, ds, dd.without_augmentation(proto), desc=f"eval synthetic, no aug ({arch})",
                        **kw)
    rdm_naug = evaluate(rx, ry, ds, dd.without_augmentation(base_proto), desc=f"eval random real, no aug ({arch})",
                        **kw)
    full = dd.full_data_accuracy(ds, arch, base_proto, seed=seed, backend=backend, device=device, folder=cache_dir,
                                 epochs=full_epochs, progress=progress, log=log.info)
    lrs = dd.label_robust_score(res["accuracies"], base["accuracies"], full["mean"])
    ars = dd.augmentation_robust_score(res["accuracies"], base["accuracies"], syn_naug["accuracies"],
                                       rdm_naug["accuracies"])
    log.info(f"{arch}: LRS {lrs['lrs']['mean']:.4f} ± {lrs['lrs']['std']:.4f} (HLR {lrs['hlr']['mean']:.2f}, IOR "
             f"{lrs['ior']['mean']:.2f} points; full data {full['mean']:.2f} %), ARS {ars['ars']['mean']:.4f} ± "
             f"{ars['ars']['std']:.4f}")
    return {"lrs": lrs, "ars": ars, "synthetic_no_aug": _final(syn_naug), "random_real_no_aug": _final(rdm_naug),
            "full_data": {k: full[k] for k in ("mean", "key", "cached", "file", "train_images")},
            "definition": "DD-Ranking (arXiv 2505.13300): accuracies as fractions, w = gamma = 0.5"}


def _host_zca(ds) -> dict | None:
    return None if ds.zca is None else {k: v.cpu() if isinstance(v, torch.Tensor) else v
                                        for k, v in ds.zca.state_dict().items()}


def _final(res: dict) -> dict:
    return {"mean": res["mean"], "std": res["std"], "n": res["n"], "accuracies": res["accuracies"],
            "at": "final epoch"}


def _best(res: dict) -> dict:
    b = res["best"]
    return {"mean": b["mean"], "std": b["std"], "n": res["n"], "accuracies": b["accuracies"],
            "at": f"per network, the best test accuracy over epochs {b['epochs']} (IDC test.py 'best')",
            "curves": res["curves"]}


def _best_text(res: dict) -> str:
    return f" (best of {len(res['best']['epochs'])} tests: {res['best']['mean']:.2f} ± {res['best']['std']:.2f} %)" \
        if "best" in res else ""


EVALUATIONS = "evaluations"


def evaluate_dir(out: str, *, preset: str | None = None, eval_nets: int | None = None, baseline: bool = True,
                 progress: bool = True, device: str | torch.device | None = "auto", archs=None,
                 protocol: str | None = None, scores: bool = False, cache_dir: str | None = None,
                 full_epochs: int | None = None, epochs: int | None = None, precision: str = "fp32") -> dict:
    """Re-evaluate a finished run directory (its ``images_labels.pt``) on ``device``; returns the new
    evaluation record, written to ``out/evaluations/NNN.json`` (001, 002, …: the distillation's own
    ``metrics.json`` is never changed). The record holds only what this evaluation measured (no
    baseline with ``baseline=False``), the protocol by name and in full, the class names, the device
    and thread count, the time and the command line.

    ``protocol``: ``quick`` or ``paper`` (:func:`protocol_hp`); ``preset`` (the older option) keeps the
    run's hyperparameters and takes only the budget table's entry; not both. ``scores``: also DD-Ranking's
    LRS and ARS (needs the baseline), the full-data accuracy cached in ``cache_dir`` (default
    :func:`ddkernels.distill.scores.cache_dir`) and trained for ``full_epochs`` (default the protocol's).
    ``epochs``: train every network for this many epochs instead of the protocol's (a reduced budget for
    large networks on a CPU; recorded in ``eval_protocol``). ``precision``: the evaluation networks'
    (``fp32``, ``bf16``; ``fp16`` on CUDA), recorded in ``eval_protocol``."""
    if preset is not None:
        check_choice("--preset", preset, PRESET_NAMES)
    if protocol is not None:
        check_choice("--protocol", protocol, PROTOCOL_NAMES)
        if preset is not None:
            raise ValueError("--preset and --protocol: give one (--protocol paper is the method's own protocol; "
                             "--preset only switches the budget table's entry)")
    if scores and not baseline:
        raise ValueError("--scores compares with the random-real baseline: drop --no-baseline")
    check_int("--eval-nets", eval_nets, optional=True)
    check_int("--full-epochs", full_epochs, optional=True)
    check_int("--epochs", epochs, optional=True)
    dev = resolve_device(device, what="--device")
    check_precision(precision, dev, what="--precision")
    archs = eval_archs(archs)
    paths = [os.path.join(out, f) for f in ("config.json", "images_labels.pt")]
    for p in paths:
        if not os.path.isfile(p):
            raise FileNotFoundError(f"RUN_DIR {out!r} has no {os.path.basename(p)}; run `ddkernels distill` into it first")
    with open(paths[0]) as f:
        config = json.load(f)
    images, labels = torch.load(paths[1], map_location="cpu", weights_only=True)
    ds = data.load_dataset(config["dataset"], config.get("data_dir"))  # evaluate() moves what it needs to dev
    zca_path = os.path.join(out, ZCA_FILE)
    if os.path.isfile(zca_path):  # the synthetic set lives in whitened space: whiten the test set alike
        ds = ds.whitened(ZCA.from_state_dict(torch.load(zca_path, map_location="cpu", weights_only=True)))
    elif config["hp"].get("zca"):
        raise FileNotFoundError(f"RUN_DIR {out!r} was distilled with zca but has no {ZCA_FILE}")
    overrides = {}
    spath = os.path.join(out, "synthetic.pt")
    if os.path.isfile(spath):  # written before the first evaluation, so it survives a killed one
        overrides = torch.load(spath, map_location="cpu", weights_only=False).get("eval_overrides", {})
    if protocol is None and preset is not None:
        hp, budget = config["hp"], preset
    else:
        hp, budget = protocol_hp(config["method"], config["dataset"], config["ipc"], config["hp"], config["preset"],
                                 protocol)
    if epochs is not None:
        hp = {**hp, "eval_epochs": epochs}
    record = {"method": config["method"], "dataset": config["dataset"], "ipc": config["ipc"],
              "preset": config["preset"], "protocol": budget, "classes": class_names(ds),
              "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "command": sys.argv,
              "eval_overrides": overrides}
    record.update(evaluate_run(out, hp, budget, images, labels, ds, ipc=config["ipc"], seed=config["seed"],
                               eval_nets=eval_nets, baseline=baseline, progress=progress, overrides=overrides,
                               backend=config.get("backend", "auto"), device=dev, archs=archs,
                               scores={"cache_dir": cache_dir, "full_epochs": full_epochs} if scores else None,
                               precision=precision))
    record["eval_device"] = describe_device(dev)  # the key metrics.json used for it
    record["versions"] = versions()
    record["record"] = _write_record(out, record)
    _logger(out).info(f"evaluation record {record['record']}")
    return record


def _write_record(out: str, record: dict) -> str:
    """Write ``record`` as the next free ``out/evaluations/NNN.json`` (claimed with O_EXCL, so two
    evaluations finishing at once never share a number); returns its path relative to ``out``."""
    folder = os.path.join(out, EVALUATIONS)
    os.makedirs(folder, exist_ok=True)
    n = 1 + max((int(f[:-5]) for f in os.listdir(folder) if f.endswith(".json") and f[:-5].isdigit()), default=0)
    while True:
        path = os.path.join(folder, f"{n:03d}.json")
        try:
            os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            break
        except FileExistsError:
            n += 1
    write_json(record, path)
    return os.path.relpath(path, out)


def evaluation_records(out: str) -> list[dict]:
    """The evaluation records of run directory ``out``, oldest first (each with its ``"record"`` path)."""
    folder = os.path.join(out, EVALUATIONS)
    if not os.path.isdir(folder):
        return []
    names = sorted((f for f in os.listdir(folder) if f.endswith(".json") and f[:-5].isdigit()), key=lambda f: int(f[:-5]))
    records = []
    for f in names:
        with open(os.path.join(folder, f)) as fh:
            records.append({**json.load(fh), "record": os.path.join(EVALUATIONS, f)})
    return records

__all__ = ["EVAL_KEYS", "Interrupted", "PROTOCOL_NAMES", "atomic_save", "check_arguments", "class_names", "distill",
           "eval_archs", "evaluate_dir", "evaluation_records", "finish", "protocol_hp", "random_real", "saved_options",
           "versions"]
