"""``ddkernels`` / ``python -m ddkernels``: distill, evaluate, experts, info, bench.

    ddkernels distill --method idc --dataset fashion-mnist --ipc 1 --preset quick --out runs/idc1
    ddkernels evaluate runs/idc1
    ddkernels experts --dataset fashion-mnist --preset quick --out runs/experts-fmnist
    ddkernels info
    ddkernels bench

Under torchrun the classes are split over the processes (see docs/scaling.md):

    torchrun --nproc_per_node=2 -m ddkernels distill --method dm --dataset fashion-mnist --ipc 10 --out runs/dm10

Options of ``distill`` may also come from a YAML or JSON file (``--config run.yaml``; ``.yaml``/``.yml``
is read as YAML, anything else as JSON): a mapping with keys named like the options, ``-`` or
``_`` (``data_dir``, ``no_baseline``, ``set`` as a list of ``KEY=VALUE``, or ``overrides`` as a
mapping of hyperparameters). Command-line options win; ``--set`` adds to the file's overrides.
Examples: ``configs/`` in a source checkout.
"""
from __future__ import annotations

import argparse
import json
import sys

import torch

from . import data
from .distributed import DEFAULT_TIMEOUT_S
from .methods import METHODS, PRESET_NAMES


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="ddkernels", description="Dataset distillation with fused kernels.")
    sub = ap.add_subparsers(dest="command", required=True)
    d = sub.add_parser("distill", help="distill a dataset into a run directory")
    d.add_argument("--config", help="YAML (.yaml/.yml) or JSON file with default values for these options")
    d.add_argument("--method", choices=sorted(METHODS))
    d.add_argument("--dataset", choices=data.DATASETS)
    d.add_argument("--ipc", type=int, help="stored images per class")
    d.add_argument("--preset", choices=PRESET_NAMES, default=None, help="hyperparameters (default quick)")
    d.add_argument("--iterations", type=int, help="outer iterations (overrides the preset)")
    d.add_argument("--backend", default=None, help="ddkernels op backend: auto, reference, cpu, triton")
    d.add_argument("--seed", type=int, default=None)
    d.add_argument("--data-dir", help="folder with the dataset's files (see ddkernels.distill.data)")
    d.add_argument("--out", help="run directory")
    d.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    d.add_argument("--checkpoint-every", type=int, default=None, help="iterations between checkpoints (default 1)")
    d.add_argument("--eval-nets", type=int, help="networks per evaluation (default: the protocol's)")
    d.add_argument("--no-eval", action="store_true", help="skip evaluation")
    d.add_argument("--no-baseline", action="store_true", help="skip the random-real baseline")
    d.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override one hyperparameter (JSON value), e.g. --set lr_img=0.001")
    d.add_argument("--threads", type=int, help="torch CPU threads (1 is fastest on a busy machine)")
    d.add_argument("--dist-timeout", type=float, default=None,
                   help=f"under torchrun: seconds ranks wait for each other to join and in every collective "
                        f"(default {DEFAULT_TIMEOUT_S})")
    e = sub.add_parser("evaluate", help="evaluate a run directory's synthetic set")
    e.add_argument("run_dir")
    e.add_argument("--preset", choices=PRESET_NAMES, help="evaluation budget (default: the run's preset)")
    e.add_argument("--eval-nets", type=int)
    e.add_argument("--no-baseline", action="store_true")
    e.add_argument("--threads", type=int)
    x = sub.add_parser("experts", help="train expert trajectories for MTT/HaBa (resumable)")
    x.add_argument("--dataset", choices=data.DATASETS, required=True)
    x.add_argument("--out", required=True, help="run directory (an existing one is resumed)")
    x.add_argument("--preset", choices=PRESET_NAMES, default="quick", help="settings (default quick)")
    x.add_argument("--num-experts", type=int, help="experts to train (overrides the preset)")
    x.add_argument("--epochs", type=int, help="epochs per expert (overrides the preset)")
    x.add_argument("--seed", type=int, default=0)
    x.add_argument("--data-dir", help="folder with the dataset's files (see ddkernels.distill.data)")
    x.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override one setting (JSON value), e.g. --set width=64")
    x.add_argument("--threads", type=int)
    sub.add_parser("info", help="versions, build and available backends")
    sub.add_parser("bench", help="run the kernel benchmarks (benchmarks/ in a source checkout)")
    return ap


DISTILL_DEFAULTS = {"preset": "quick", "backend": "auto", "seed": 0, "checkpoint_every": 1,
                    "dist_timeout": DEFAULT_TIMEOUT_S}


def load_config(path: str) -> dict:
    """A ``distill`` config file as a dict with ``_`` keys: YAML for ``.yaml``/``.yml``, else JSON."""
    if path.lower().endswith((".yaml", ".yml")):
        try:
            import yaml
        except ImportError:
            raise ValueError(f"--config {path!r}: YAML configs need PyYAML (pip install pyyaml)") from None
        parse, errors, kind = yaml.safe_load, yaml.YAMLError, "YAML"
    else:
        parse, errors, kind = json.load, json.JSONDecodeError, "JSON"
    try:
        with open(path) as f:
            cfg = parse(f)
    except OSError as err:
        raise ValueError(f"--config {path!r}: {err}") from None
    except errors as err:
        raise ValueError(f"--config {path!r}: not valid {kind} ({err})") from None
    if cfg is None:
        cfg = {}
    if not isinstance(cfg, dict):
        raise ValueError(f"--config {path!r}: expected a mapping of options, got {type(cfg).__name__}")
    cfg = {str(k).replace("-", "_"): v for k, v in cfg.items()}
    if not isinstance(cfg.get("set", []), list) or not isinstance(cfg.get("overrides", {}), dict):
        raise ValueError(f"--config {path!r}: 'set' must be a list of KEY=VALUE strings and 'overrides' a mapping")
    return cfg


def _distill_options(args) -> dict:
    opts = dict(DISTILL_DEFAULTS)
    if args.config:
        cfg = load_config(args.config)
        unknown = sorted(set(cfg) - (set(vars(args)) - {"command", "config"}) - {"overrides"})
        if unknown:
            raise ValueError(f"--config {args.config!r}: unknown option(s) {unknown}")
        opts.update(cfg)
    file_sets = list(opts.get("set", []))
    # Flags left unset (None, or False for --resume/--no-eval/--no-baseline) keep the file's value.
    opts.update({k: v for k, v in vars(args).items()
                 if v is not None and v is not False and k not in ("command", "config", "set")})
    for key in ("method", "dataset", "ipc", "out"):
        if opts.get(key) is None:
            raise ValueError(f"distill needs --{key} (on the command line or in --config)")
    opts["overrides"] = _parse_set(file_sets + list(args.set), dict(opts.get("overrides", {})))
    return opts


def _parse_set(items, overrides: dict) -> dict:
    """``--set KEY=VALUE`` items (JSON values; anything else is a string) into ``overrides``."""
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
        try:
            overrides[key] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key] = value
    return overrides


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)
    try:
        if args.command == "distill":
            from .runs import distill

            o = _distill_options(args)
            if o.get("threads"):
                torch.set_num_threads(o["threads"])
            metrics = distill(o["method"], o["dataset"], o["ipc"], o["out"], preset=o["preset"],
                              iterations=o.get("iterations"), backend=o["backend"], seed=o["seed"],
                              data_dir=o.get("data_dir"), resume=o.get("resume", False),
                              checkpoint_every=o["checkpoint_every"], evaluate_after=not o.get("no_eval", False),
                              eval_nets=o.get("eval_nets"), baseline=not o.get("no_baseline", False),
                              overrides=o["overrides"], dist_timeout=o["dist_timeout"])
            _summary(metrics)
        elif args.command == "evaluate":
            from .runs import evaluate_dir

            _summary(evaluate_dir(args.run_dir, preset=args.preset, eval_nets=args.eval_nets,
                                  baseline=not args.no_baseline))
        elif args.command == "experts":
            from .experts import train_experts

            files = train_experts(args.dataset, args.out, preset=args.preset, num_experts=args.num_experts,
                                  epochs=args.epochs, seed=args.seed, data_dir=args.data_dir,
                                  **_parse_set(args.set, {}))
            print(f"{len(files)} experts in {args.out}")
        elif args.command == "info":
            from ..info import main as info_main

            info_main()
        elif args.command == "bench":
            try:
                from benchmarks.run import main as bench_main
            except ImportError:
                raise RuntimeError("bench needs the benchmarks/ folder of a source checkout on the path "
                                   "(run it from the repository root)") from None
            bench_main([])
    except (ValueError, FileNotFoundError, FileExistsError, RuntimeError) as err:
        print(f"ddkernels {args.command}: error: {err}", file=sys.stderr)
        return 2
    return 0


def _summary(m: dict) -> None:
    if "accuracy" not in m:
        return
    a = m["accuracy"]
    print(f"\n{m.get('method', '?')} {m.get('dataset', '?')} IPC {m.get('ipc', '?')}: "
          f"synthetic {a['mean']:.2f} ± {a['std']:.2f} % (n={a['n']}){_best(m.get('accuracy_best'))}", end="")
    if "random_real" in m:
        r = m["random_real"]
        print(f"  |  random real, same storage: {r['mean']:.2f} ± {r['std']:.2f} % (n={r['n']}){_best(r.get('best'))}",
              end="")
    print(f"  |  distillation {m.get('seconds', 0):.0f} s")


def _best(b: dict | None) -> str:
    return f" [best of tests {b['mean']:.2f} ± {b['std']:.2f}]" if b else ""


if __name__ == "__main__":
    sys.exit(main())
