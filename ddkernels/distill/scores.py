"""DD-Ranking's scores of a distilled set: the label-robust score (LRS) and the augmentation-robust
score (ARS), as DD-Ranking defines them (Li et al., "DD-Ranking: Rethinking the Evaluation of Dataset
Distillation", arXiv 2505.13300; NUS-HPC-AI-Lab/DD-Ranking README.md "Label-Robust Score" and
"Augmentation-Robust Score", ddranking/metrics/hard_label.py and aug_robust.py):

* hard-label recovery ``HLR = Acc(real-hard) - Acc(syn-hard)`` (the full real training set vs the
  distilled set, both with hard labels), improvement over random ``IOR = Acc(syn) - Acc(rdm)`` (the
  distilled set vs a random real subset of the same storage, same evaluation);
  ``α = w·IOR - (1 - w)·HLR``, ``LRS = (e^α - e^-1) / (e - e^-1)``, w = 0.5 by default;
* ``β = γ·(Acc(syn-aug) - Acc(rdm-aug)) + (1 - γ)·(Acc(syn-naug) - Acc(rdm-naug))`` (with and
  without the evaluation's augmentation), ``ARS = (e^β - e^-1) / (e - e^-1)``, γ = 0.5.

Accuracies enter α and β as fractions in [0, 1], so that α, β ∈ [-1, 1] and the scores lie in
[0, 1] as the paper states ("normalized to [0, 1]"); DD-Ranking's code passes percentages, which
puts them outside that range, so its printed numbers are not comparable with these. Like
DD-Ranking, a score is computed per evaluation run (network i of the synthetic set against network
i of the random subset) and reported as mean and std over the runs; HLR uses one full-data accuracy.

The full-data accuracy per (dataset, network, protocol) is computed once and cached in
``full_data_accuracy.json`` under the cache folder (:func:`cache_dir`: ``$DDKERNELS_CACHE``, else
``$XDG_CACHE_HOME/ddkernels``, else ``~/.cache/ddkernels``), keyed by everything that changes it.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os

from ._files import write_json
from .evaluate import Protocol, evaluate

CACHE_FILE = "full_data_accuracy.json"


def _normalized(x: float) -> float:
    return (math.exp(x) - math.exp(-1)) / (math.exp(1) - math.exp(-1))


def _mean_std(v: list[float]) -> dict:
    m = sum(v) / len(v)
    return {"mean": m, "std": math.sqrt(sum((a - m) ** 2 for a in v) / len(v)), "values": v}


def _check(name: str, w: float) -> None:
    if not 0.0 <= w <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {w}")


def label_robust_score(syn: list[float], rdm: list[float], full: float, w: float = 0.5) -> dict:
    """LRS from per-network accuracies in % of the distilled set (``syn``) and the random subset
    (``rdm``, paired by index) and the full-data accuracy ``full`` (%). HLR and IOR are returned in
    percentage points, LRS in [0, 1]."""
    _check("w", w)
    if len(syn) != len(rdm) or not syn:
        raise ValueError(f"syn and rdm must be non-empty and paired, got {len(syn)} and {len(rdm)} accuracies")
    hlr = [full - s for s in syn]
    ior = [s - r for s, r in zip(syn, rdm)]
    lrs = [_normalized((w * i - (1 - w) * h) / 100.0) for h, i in zip(hlr, ior)]
    return {"hlr": _mean_std(hlr), "ior": _mean_std(ior), "lrs": _mean_std(lrs), "w": w, "full_data": full}


def augmentation_robust_score(syn_aug: list[float], rdm_aug: list[float], syn_naug: list[float],
                              rdm_naug: list[float], gamma: float = 0.5) -> dict:
    """ARS from per-network accuracies in % with (``*_aug``) and without (``*_naug``) augmentation,
    paired by index; the two improvements in percentage points, ARS in [0, 1]."""
    _check("gamma", gamma)
    if not syn_aug or len({len(syn_aug), len(rdm_aug), len(syn_naug), len(rdm_naug)}) != 1:
        raise ValueError("the four accuracy lists must be non-empty and of the same length")
    with_aug = [s - r for s, r in zip(syn_aug, rdm_aug)]
    without = [s - r for s, r in zip(syn_naug, rdm_naug)]
    ars = [_normalized((gamma * a + (1 - gamma) * b) / 100.0) for a, b in zip(with_aug, without)]
    return {"with_aug": _mean_std(with_aug), "without_aug": _mean_std(without), "ars": _mean_std(ars),
            "gamma": gamma}


def without_augmentation(protocol: Protocol) -> Protocol:
    """``protocol`` with every training augmentation off (DSA/DiffAug, VICO's dc_aug, CutMix): ARS's
    "naug" evaluation."""
    return dataclasses.replace(protocol, aug="", dc_aug="", cutmix_p=0.0)


def cache_dir() -> str:
    """Where cached full-data accuracies live: ``$DDKERNELS_CACHE``, else ``$XDG_CACHE_HOME/ddkernels``,
    else ``~/.cache/ddkernels``."""
    if os.environ.get("DDKERNELS_CACHE"):
        return os.environ["DDKERNELS_CACHE"]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "ddkernels")


def full_data_key(dataset: str, arch: str, protocol: Protocol, *, seed: int, backend: str, zca: bool) -> str:
    """The cache key: dataset, network, zca, seed, backend and a digest of every protocol field."""
    digest = hashlib.sha256(json.dumps(dataclasses.asdict(protocol), sort_keys=True).encode()).hexdigest()[:16]
    return f"{dataset}|{arch}|{protocol.name}|zca={int(zca)}|seed={seed}|backend={backend}|{digest}"


def full_data_accuracy(ds, arch: str, protocol: Protocol, *, seed: int = 0, backend: str = "auto", device=None,
                       folder: str | None = None, epochs: int | None = None, progress: bool = False,
                       log=None) -> dict:
    """Accuracy (%) of one network (``protocol`` with ``n_nets = 1``) trained on ``ds``'s whole training
    set with hard labels: DD-Ranking's ``Acc(real-hard)``. Read from the cache in ``folder`` (default
    :func:`cache_dir`) when there, else computed and added. ``epochs``: train for this many epochs
    instead of the protocol's (the full set is thousands of times the distilled one; part of the key).
    Returns ``{"mean", "key", "cached", "protocol", "file"}``."""
    proto = dataclasses.replace(protocol, n_nets=1, choose=1, **({"epochs": epochs} if epochs else {}))
    key = full_data_key(ds.name, arch, proto, seed=seed, backend=backend, zca=ds.zca is not None)
    folder = cache_dir() if folder is None else folder
    path = os.path.join(folder, CACHE_FILE)
    cache = _read_cache(path)
    if key in cache:
        return {**cache[key], "key": key, "cached": True, "file": path}
    if log is not None:
        log(f"{arch}: training on the full training set ({len(ds.train_y)} images) once for the scores' "
            f"full-data accuracy; cached in {path}")
    res = evaluate(ds.normalize(ds.train_x), ds.train_y, ds, proto, seed=seed, desc=f"full data ({arch})",
                   progress=progress, backend=backend, arch=arch, device=device)
    entry = {"mean": res["mean"], "protocol": res["protocol"], "dataset": ds.name, "arch": arch,
             "train_images": len(ds.train_y)}
    os.makedirs(folder, exist_ok=True)
    cache = _read_cache(path)  # another process may have added entries meanwhile
    cache[key] = entry
    write_json(cache, path)
    return {**entry, "key": key, "cached": False, "file": path}


def _read_cache(path: str) -> dict:
    if not os.path.isfile(path):
        return {}
    try:
        with open(path) as f:
            cache = json.load(f)
        return cache if isinstance(cache, dict) else {}
    except (OSError, ValueError):  # a damaged cache is recomputed, not fatal
        return {}


__all__ = ["augmentation_robust_score", "cache_dir", "full_data_accuracy", "full_data_key",
           "label_robust_score", "without_augmentation"]
