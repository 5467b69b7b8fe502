"""``ddkernels export RUN --format ddranking|dcbench``: a run's training set in the files other
benchmarks load.

* ``ddranking`` (NUS-HPC-AI-Lab/DD-Ranking, ``demo_hard.py``: ``torch.load("images.pt")`` passed as
  ``image_tensor`` to ``LabelRobustScoreHard``/``AugmentationRobustScore.compute_metrics``, which wrap
  it in a ``TensorDataset`` without transforms): ``images.pt``, the float32 ``(N, C, H, W)`` set
  normalized with the dataset's mean/std, sorted by class; ``labels.pt``, its int64 hard labels (pass
  them as ``hard_labels``: DD-Ranking's default, ``ipc`` labels per class in order, fits only
  sets of exactly IPC images per class); ``soft_labels.pt``, a soft-label set's ``(N, C)`` label
  distributions (``labels.pt`` then holds the rows' classes); ``lr.pt``, the learned evaluation lr (``syn_lr``) when
  the method learns one (MTT, HaBa).
* ``dcbench`` (justincui03/dc_benchmark, ``data_loader/dc_data_loader.py``): the VICO result file
  ``<METHOD>/<Dataset>/IPC<ipc>/res_<METHOD>_<Dataset>_ConvNet_<ipc>ipc.pt`` holding
  ``{"data": [(images, labels)]}`` (the loader takes ``data[-1]``), images normalized as above, under
  DC-BENCH's ``distilled_results/`` layout (copy the ``<METHOD>`` folder there; a method DC-BENCH does
  not know needs its loader registered in ``evaluator_utils.get_data_loader`` as DC's).

Both folders also get ``export.json``: method, dataset, IPC, class names, mean/std, image count, what
each file is.
"""
from __future__ import annotations

import os

import torch

from ._args import check_choice
from ._files import atomic_save, write_json

FORMATS = ("ddranking", "dcbench")
_DCBENCH_NAMES = {"cifar10": "CIFAR10", "cifar100": "CIFAR100", "mnist": "MNIST", "fashion-mnist": "FashionMNIST"}


def export_run(run: str, fmt: str, out: str | None = None) -> dict:
    """Write run directory ``run``'s training set in format ``fmt`` into ``out`` (default
    ``run/export/<fmt>``); returns the manifest written beside the files (``export.json``)."""
    check_choice("--format", fmt, FORMATS)
    spath = os.path.join(run, "synthetic.pt")
    if not os.path.isfile(spath):
        raise FileNotFoundError(f"RUN_DIR {run!r} has no synthetic.pt; run `ddkernels distill` into it first")
    syn = torch.load(spath, map_location="cpu", weights_only=False)
    images, labels = syn["images"].float(), syn["image_labels"]
    soft = None
    if labels.dim() == 2:  # a soft-label set (RTP label_mode="soft"): hard labels are the rows' classes
        soft, labels = labels.float(), syn["labels"]
    labels = labels.long()
    order = torch.sort(labels, stable=True).indices  # class-sorted, as both tools' loaders expect
    images, labels = images[order].contiguous(), labels[order].contiguous()
    soft = None if soft is None else soft[order].contiguous()
    method, dataset, ipc = syn["method"], syn["dataset"], syn["ipc"]
    out = os.path.join(run, "export", fmt) if out is None else out
    os.makedirs(out, exist_ok=True)
    lr = (syn.get("eval_overrides") or {}).get("lr")
    manifest = {"format": fmt, "run": os.path.abspath(run), "method": method, "dataset": dataset, "ipc": ipc,
                "images": len(labels), "per_class": torch.bincount(labels).tolist(),
                "classes": syn.get("classes") or [], "mean": list(syn["mean"]), "std": list(syn["std"]),
                "normalized": "with mean/std" + (" and ZCA-whitened (the run's zca.pt)" if syn.get("zca") else ""),
                # protocol fields the set needs (HaBa's choose: rows come in groups of alternatives)
                "eval_overrides": syn.get("eval_overrides") or {}, "files": {}}
    if fmt == "ddranking":
        atomic_save(images, os.path.join(out, "images.pt"))
        atomic_save(labels, os.path.join(out, "labels.pt"))
        manifest["files"] = {"images.pt": "image_tensor (N, C, H, W), class-sorted",
                             "labels.pt": "hard_labels (N,) int64"}
        if soft is not None:
            atomic_save(soft, os.path.join(out, "soft_labels.pt"))
            manifest["files"]["soft_labels.pt"] = ("soft_labels (N, C) float32: the learned label distributions "
                                                   "the set was evaluated with (DD-Ranking's soft-label metrics)")
        if lr is not None:
            atomic_save(torch.tensor(float(lr)), os.path.join(out, "lr.pt"))
            manifest["files"]["lr.pt"] = "syn_lr: the learned evaluation learning rate"
        manifest["usage"] = ("metric.compute_metrics(image_tensor=torch.load('images.pt'), "
                             "hard_labels=torch.load('labels.pt')" + (", syn_lr=torch.load('lr.pt').item()" if lr is
                                                                       not None else "") + ")")
    else:
        name = _DCBENCH_NAMES.get(dataset, dataset)
        rel = os.path.join(method.upper(), name, f"IPC{ipc}", f"res_{method.upper()}_{name}_ConvNet_{ipc}ipc.pt")
        os.makedirs(os.path.dirname(os.path.join(out, rel)), exist_ok=True)
        atomic_save({"data": [(images, labels)]}, os.path.join(out, rel))
        manifest["files"] = {rel: "{'data': [(images, labels)]}: DC-BENCH's DCDataLoader reads data[-1]"
                                  + (" (hard labels: the rows' classes; DC-BENCH has no soft labels)" if soft is not None
                                     else "")}
        manifest["usage"] = (f"copy {method.upper()}/ into dc_benchmark/distilled_results/ and run "
                             f"scripts/eval.sh --dataset {name} --ipc {ipc} --method {method}")
    write_json(manifest, os.path.join(out, "export.json"))
    return {**manifest, "out": out}


__all__ = ["FORMATS", "export_run"]
