"""``ddkernels`` / ``python -m ddkernels``: distill, evaluate, report, export, experts, info, bench.

    ddkernels distill --method idc --dataset fashion-mnist --ipc 1 --preset quick --out runs/idc1
    ddkernels evaluate runs/idc1                # a new record: runs/idc1/evaluations/001.json
    ddkernels evaluate runs/idc1 --protocol paper --arch convnet,resnet18 --scores
    ddkernels report runs/idc1 runs/dm1 --out runs/report    # runs/report.md and runs/report.png
    ddkernels export runs/idc1 --format ddranking             # or dcbench
    ddkernels experts --dataset fashion-mnist --preset quick --out runs/experts-fmnist
    ddkernels info
    ddkernels bench --quick                     # = python -m benchmarks.run --quick (source checkout)
    ddkernels distill --out runs/idc1 --resume  # after Ctrl-C: the rest comes from runs/idc1/config.json

Under torchrun the classes are split over the processes (see docs/scaling.md):

    torchrun --nproc_per_node=2 -m ddkernels distill --method dm --dataset fashion-mnist --ipc 10 --out runs/dm10

Options of ``distill`` may also come from a YAML or JSON file (``--config run.yaml``; ``.yaml``/``.yml``
is read as YAML, anything else as JSON): a mapping with keys named like the options, ``-`` or
``_`` (``data_dir``, ``no_baseline``, ``set`` as a list of ``KEY=VALUE``, or ``overrides`` as a
mapping of hyperparameters). Command-line options win; ``--set`` adds to the file's overrides.
Examples: ``configs/`` in a source checkout. With ``--resume``, what neither gives comes from the run's own
``config.json``: ``ddkernels distill --out RUN --resume`` is enough.

Every option is checked before any data is loaded; a bad one ends the command with one line on stderr
naming it and the values it allows (exit status 2). Ctrl-C ends ``distill`` with one line naming the last
checkpoint and the command that resumes it (exit status 130).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys

import torch

from . import data
from ._args import check_int
from .distributed import DEFAULT_TIMEOUT_S
from .methods import METHODS, PRESET_NAMES
from .precision import PRECISIONS


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad command line is one line on stderr like every other error (usage: ``--help``)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="ddkernels", description="Dataset distillation with fused kernels.")
    sub = ap.add_subparsers(dest="command", required=True)
    d = sub.add_parser("distill", help="distill a dataset into a run directory")
    d.add_argument("--config", help="YAML (.yaml/.yml) or JSON file with default values for these options")
    d.add_argument("--method", choices=sorted(METHODS))
    d.add_argument("--dataset", choices=data.DATASETS)
    d.add_argument("--ipc", type=int, help="stored images per class")
    d.add_argument("--preset", choices=PRESET_NAMES, default=None, help="hyperparameters (default quick)")
    d.add_argument("--iterations", type=int, help="outer iterations (overrides the preset)")
    d.add_argument("--backend", default=None, help="ddkernels op backend: auto, reference, cpu, triton")
    d.add_argument("--device", default=None, help="where to compute: auto (CUDA when visible, else CPU), cpu, cuda, cuda:N (default auto)")
    d.add_argument("--seed", type=int, default=None)
    d.add_argument("--precision", choices=PRECISIONS, default=None,
                   help="distill in fp32 (default), bf16 or fp16 (CUDA) under autocast; = --set precision=...")
    d.add_argument("--data-dir", help="folder with the dataset's files (see ddkernels.distill.data)")
    d.add_argument("--out", help="run directory")
    d.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its checkpoint (its other options come from --out/config.json)")
    d.add_argument("--checkpoint-every", type=int, default=None, help="iterations between checkpoints (default 1)")
    d.add_argument("--eval-nets", type=int, help="networks per evaluation (default: the protocol's)")
    d.add_argument("--no-eval", action="store_true", help="skip evaluation")
    d.add_argument("--no-baseline", action="store_true", help="skip the random-real baseline")
    d.add_argument("--eval-arch", help="comma-separated evaluation networks, get_network names in any case "
                                       "(default convnet), e.g. convnet,resnet18,vgg11")
    d.add_argument("--eval-protocol", help="evaluation protocol: quick or paper (the method's own: width 128, "
                                           "its epochs, schedule and augmentation, the full test set, its number "
                                           "of networks); default: the preset's")
    d.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override one hyperparameter (JSON value), e.g. --set lr_img=0.001")
    d.add_argument("--threads", type=int, help="torch CPU threads (1 is fastest on a busy machine)")
    d.add_argument("--dist-timeout", type=float, default=None,
                   help=f"under torchrun: seconds ranks wait for each other to join and in every collective "
                        f"(default {DEFAULT_TIMEOUT_S})")
    e = sub.add_parser("evaluate", help="evaluate a run directory's synthetic set")
    e.add_argument("run_dir")
    e.add_argument("--preset", choices=PRESET_NAMES,
                   help="budget table entry, keeping the run's hyperparameters (default: the run's preset)")
    e.add_argument("--protocol", help="quick or paper: the method's protocol of that preset (paper: width 128, "
                                      "its epochs, schedule and augmentation, the full test set, its number of "
                                      "networks); default: the run's")
    e.add_argument("--epochs", type=int, help="train every network for this many epochs instead of the "
                                              "protocol's (a reduced budget; recorded)")
    e.add_argument("--scores", action="store_true",
                   help="also DD-Ranking's label- and augmentation-robust scores (LRS, ARS)")
    e.add_argument("--cache-dir", help="folder of the cached full-data accuracies for --scores "
                                       "(default $DDKERNELS_CACHE, else ~/.cache/ddkernels)")
    e.add_argument("--full-epochs", type=int, help="--scores: epochs of the full-data network (default: the "
                                                   "protocol's; part of the cache key)")
    e.add_argument("--eval-nets", type=int)
    e.add_argument("--no-baseline", action="store_true")
    e.add_argument("--arch", help="comma-separated evaluation networks (default convnet), e.g. convnet,resnet18")
    e.add_argument("--device", default="auto", help="where to compute: auto (CUDA when visible, else CPU), cpu, cuda, cuda:N (default auto)")
    e.add_argument("--precision", choices=PRECISIONS, default="fp32",
                   help="train the evaluation networks in fp32 (default), bf16 or fp16 (CUDA) under autocast")
    e.add_argument("--threads", type=int)
    r = sub.add_parser("report", help="a Markdown table and a PNG plot of run directories' evaluations")
    r.add_argument("runs", nargs="+", metavar="RUN")
    r.add_argument("--out", default="report", help="writes OUT.md and OUT.png (default report)")
    xp = sub.add_parser("export", help="write a run's training set in another benchmark's format")
    xp.add_argument("run_dir")
    xp.add_argument("--format", required=True, help="ddranking (DD-Ranking) or dcbench (DC-BENCH)")
    xp.add_argument("--out", help="folder (default RUN/export/FORMAT)")
    x = sub.add_parser("experts", help="train expert trajectories for MTT/HaBa (resumable)")
    x.add_argument("--dataset", choices=data.DATASETS, required=True)
    x.add_argument("--out", required=True, help="run directory (an existing one is resumed)")
    x.add_argument("--preset", choices=PRESET_NAMES, default="quick", help="settings (default quick)")
    x.add_argument("--num-experts", type=int, help="experts to train (overrides the preset)")
    x.add_argument("--epochs", type=int, help="epochs per expert (overrides the preset)")
    x.add_argument("--seed", type=int, default=0)
    x.add_argument("--data-dir", help="folder with the dataset's files (see ddkernels.distill.data)")
    x.add_argument("--device", default="auto", help="where to compute: auto (CUDA when visible, else CPU), cpu, cuda, cuda:N (default auto)")
    x.add_argument("--precision", choices=PRECISIONS, default=None,
                   help="train the experts in fp32 (default), bf16 or fp16 (CUDA) under autocast")
    x.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override one setting (JSON value), e.g. --set width=64")
    x.add_argument("--threads", type=int)
    info = sub.add_parser("info", help="versions, build and available backends")
    info.add_argument("--ops", action="store_true", help="print the Markdown table of the registered ops only")
    sub.add_parser("bench", add_help=False,
                   help="run the kernel benchmarks: python -m benchmarks.run from a source checkout, every "
                        "further argument passed on (ddkernels bench --help lists them)")
    return ap


DISTILL_DEFAULTS = {"preset": "quick", "backend": "auto", "seed": 0, "checkpoint_every": 1,
                    "dist_timeout": DEFAULT_TIMEOUT_S, "device": "auto"}


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
    """The ``distill`` options: the command line over ``--config`` over (with ``--resume``) the run's own
    ``config.json`` over :data:`DISTILL_DEFAULTS`; ``overrides`` merges the three layers' hyperparameters."""
    from .runs import saved_options

    opts, overrides = {}, {}
    if args.config:
        cfg = load_config(args.config)
        unknown = sorted(set(cfg) - (set(vars(args)) - {"command", "config"}) - {"overrides"})
        if unknown:
            raise ValueError(f"--config {args.config!r}: unknown option(s) {unknown}")
        overrides = dict(cfg.pop("overrides", {}))
        opts.update(cfg)
    file_sets = list(opts.pop("set", []))
    # Flags left unset (None, or False for --resume/--no-eval/--no-baseline) keep the file's value.
    opts.update({k: v for k, v in vars(args).items()
                 if v is not None and v is not False and k not in ("command", "config", "set")})
    out = opts.get("out")
    if opts.get("resume") and out is not None and (
            os.path.isfile(os.path.join(out, "config.json")) or any(opts.get(k) is None for k in _REQUIRED)):
        saved = saved_options(out)
        overrides = {**saved.pop("overrides"), **overrides}
        saved["no_eval"] = not saved.pop("evaluate_after", True)
        saved["no_baseline"] = not saved.pop("baseline", True)
        for k, v in saved.items():
            opts.setdefault(k, v)
    for k, v in DISTILL_DEFAULTS.items():
        opts.setdefault(k, v)
    for key in _REQUIRED + ("out",):
        if opts.get(key) is None:
            raise ValueError(f"distill needs --{key} (on the command line or in --config)")
    check_int("--threads", opts.get("threads"), optional=True)
    opts["overrides"] = _parse_set(file_sets + list(args.set), overrides)
    precision = opts.pop("precision", None)
    if precision is not None:  # --precision is the hyperparameter precision
        opts["overrides"]["precision"] = precision
    return opts


_REQUIRED = ("method", "dataset", "ipc")


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
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["bench"]:  # every further argument is benchmarks.run's (--quick, --ops, ...)
        return _run("bench", lambda: _bench(argv[1:]))
    args = _parser().parse_args(argv)
    return _run(args.command, lambda: _command(args), args)


def _run(command: str, work, args=None) -> int:
    """Run ``work()``: a bad argument or a missing file is one line on stderr (exit 2), Ctrl-C one line saying
    what is kept and how to continue (exit 130)."""
    from .runs import Interrupted

    try:
        return work() or 0
    except (ValueError, FileNotFoundError, FileExistsError, RuntimeError) as err:
        print(f"ddkernels {command}: error: {err}", file=sys.stderr)
        return 2
    except Interrupted as err:
        if err.rank == 0:
            print(err.message(), file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print(_interrupted(command, args), file=sys.stderr)
        return 130
    except BrokenPipeError:
        # the reader went away (`ddkernels info | head`): stop quietly, as Unix tools do
        sys.stdout = open(os.devnull, "w")
        return 0


def _interrupted(command: str, args) -> str:
    if command == "experts":
        return (f"interrupted; the finished experts and the current one's last epoch are kept in {args.out}: "
                f"run the same command again to continue")
    if command == "evaluate":
        return f"interrupted; nothing was written to {args.run_dir} (its metrics.json and evaluations/ are unchanged)"
    if command == "distill":
        return "interrupted before distilling started; nothing was changed"
    return "interrupted"


def _command(args) -> None:
    check_int("--threads", getattr(args, "threads", None), optional=True)
    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)
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
                          overrides=o["overrides"], dist_timeout=o["dist_timeout"], device=o["device"],
                          eval_arch=o.get("eval_arch"), eval_protocol=o.get("eval_protocol"))
        _summary(metrics)
    elif args.command == "evaluate":
        from .runs import evaluate_dir

        record = evaluate_dir(args.run_dir, preset=args.preset, eval_nets=args.eval_nets,
                              baseline=not args.no_baseline, archs=args.arch, device=args.device,
                              protocol=args.protocol, scores=args.scores, cache_dir=args.cache_dir,
                              full_epochs=args.full_epochs, epochs=args.epochs,
                              precision=args.precision)
        _summary(record)
        print(f"evaluation record: {os.path.join(args.run_dir, record['record'])}")
    elif args.command == "report":
        from .report import report

        done = report(args.runs, args.out)
        print(done["markdown"], end="")
        print(f"wrote {args.out}.md and {done['png']}")
    elif args.command == "export":
        from .export import export_run

        done = export_run(args.run_dir, args.format, args.out)
        print(f"{args.format}: {', '.join(done['files'])} in {done['out']} ({done['images']} images); {done['usage']}")
    elif args.command == "experts":
        from .experts import train_experts

        settings = _parse_set(args.set, {})
        if args.precision is not None:
            settings["precision"] = args.precision
        files = train_experts(args.dataset, args.out, preset=args.preset, num_experts=args.num_experts,
                              epochs=args.epochs, seed=args.seed, data_dir=args.data_dir, device=args.device,
                              **settings)
        print(f"{len(files)} experts in {args.out}")
    elif args.command == "info":
        from ..info import main as info_main

        info_main(["--ops"] if args.ops else [])


def _bench(argv: list[str]):
    """``benchmarks.run``'s ``main(argv)`` from a source checkout: the current folder's ``benchmarks/``, else
    the one next to this (editable) package."""
    if importlib.util.find_spec("benchmarks") is None:
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        if not os.path.isfile(os.path.join(root, "benchmarks", "run.py")):
            raise RuntimeError("bench needs the benchmarks/ folder of a source checkout (run it from the "
                               "repository root)")
        sys.path.insert(0, root)
    try:
        from benchmarks.run import main as bench_main
    except ImportError as err:  # e.g. another project's "benchmarks" package
        raise RuntimeError(f"bench needs the benchmarks/ folder of a source checkout (run it from the "
                           f"repository root): {err}") from None

    prog, sys.argv[0] = sys.argv[0], "ddkernels bench"  # its argparse usage line names the command typed
    try:
        return bench_main(argv)
    finally:
        sys.argv[0] = prog


def _summary(m: dict) -> None:
    if "accuracy" not in m:
        return
    a = m["accuracy"]
    arch = f" {m['arch']}" if "arch" in m else ""
    print(f"\n{m.get('method', '?')} {m.get('dataset', '?')} IPC {m.get('ipc', '?')}{arch}: "
          f"synthetic{' (soft labels)' if m.get('labels') == 'soft' else ''} {a['mean']:.2f} ± {a['std']:.2f} % "
          f"(n={a['n']}){_best(m.get('accuracy_best'))}", end="")
    if "random_real" in m:
        r = m["random_real"]
        print(f"  |  random real, same storage: {r['mean']:.2f} ± {r['std']:.2f} % (n={r['n']}){_best(r.get('best'))}",
              end="")
    print(f"  |  distillation {m['seconds']:.0f} s" if "seconds" in m else "")
    for name, r in m.get("architectures", {}).items():
        a = r["accuracy"]
        line = f"  {name}: synthetic {a['mean']:.2f} ± {a['std']:.2f} % (n={a['n']}){_best(r.get('accuracy_best'))}"
        if "random_real" in r:
            b = r["random_real"]
            line += f"  |  random real {b['mean']:.2f} ± {b['std']:.2f} % (n={b['n']}){_best(b.get('best'))}"
        print(line)
    for name, r in ({m.get("arch", "ConvNet"): m} if "architectures" not in m else m["architectures"]).items():
        if "scores" in r:
            s = r["scores"]
            print(f"  {name}: LRS {s['lrs']['lrs']['mean']:.4f} ± {s['lrs']['lrs']['std']:.4f} (HLR "
                  f"{s['lrs']['hlr']['mean']:.2f}, IOR {s['lrs']['ior']['mean']:.2f} points)  |  ARS "
                  f"{s['ars']['ars']['mean']:.4f} ± {s['ars']['ars']['std']:.4f}")


def _best(b: dict | None) -> str:
    return f" [best of tests {b['mean']:.2f} ± {b['std']:.2f}]" if b else ""


if __name__ == "__main__":
    sys.exit(main())
