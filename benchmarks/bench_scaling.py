"""Class-parallel scaling: outer-iteration time of a trainer on 1 process vs N gloo processes.

    python -m benchmarks.bench_scaling [--methods dm idc] [--ipc 1 10] [--world 2] [--iterations 5]

Each configuration runs ``warmup + iterations`` outer iterations of the ``quick`` preset on
Fashion-MNIST; the 1-process run is a plain trainer, the N-process run spawns N gloo ranks on this
machine that split the classes (:mod:`ddkernels.distill.distributed`). Every rank runs with one torch thread,
so N processes can use N cores. An iteration's time is the median over the timed iterations (a rank's
iteration ends with the loss all-reduce, so it includes waiting for the slowest rank; the slowest
rank's median is reported). Rows go to ``results/results.csv`` (op ``scaling``, the harness's CSV
columns; ``median_ms``/``iqr_ms`` per iteration), the table to ``results/latest-scaling-<device>.md``
(a run with other methods, IPCs or world size than the defaults: ``latest-scaling-<device>-partial.md``).
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import tempfile

import torch
import torch.multiprocessing as mp

from . import harness

HERE = os.path.dirname(os.path.abspath(__file__))
DATASET = "fashion-mnist"


def _iteration_times(method: str, ipc: int, warmup: int, iterations: int, world: int, rank: int) -> list[float]:
    from ddkernels.distill import data
    from ddkernels.distill.distributed import Shard
    from ddkernels.distill.methods import make_distiller

    ds = data.load_dataset(DATASET)
    shard = Shard.of(ds.num_classes, world, rank) if world > 1 else None
    trainer = make_distiller(method, ds, ipc, "quick", seed=0, shard=shard)
    trainer.run(warmup + iterations, progress=False)
    seconds = [0.0] + [h["seconds"] for h in trainer.history]
    return [b - a for a, b in zip(seconds, seconds[1:])][warmup:]


def _rank(rank: int, world: int, port: int, args: tuple, out: str) -> None:
    from ddkernels.distill import distributed

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    distributed.join(world, rank, timeout_s=600)
    times = _iteration_times(*args, world=world, rank=rank)
    with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
        json.dump(times, f)
    distributed.leave()


def measure(method: str, ipc: int, world: int, warmup: int, iterations: int) -> list[float]:
    """Per-iteration seconds (of the slowest rank) on ``world`` processes."""
    if world == 1:
        torch.set_num_threads(1)
        return _iteration_times(method, ipc, warmup, iterations, 1, 0)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as out:
        mp.start_processes(_rank, args=(world, port, (method, ipc, warmup, iterations), out), nprocs=world,
                           start_method="spawn")
        ranks = [json.load(open(os.path.join(out, f"rank{r}.json"))) for r in range(world)]
    return max(ranks, key=statistics.median)


def _quartiles(xs: list[float]) -> tuple[float, float]:
    q = statistics.quantiles(xs, n=4) if len(xs) > 1 else [xs[0]] * 3
    return q[1], q[2] - q[0]


def markdown(rows: list[dict]) -> str:
    head = ["method", "IPC", "processes", "classes / rank", "ms / iteration", "ms / class", "speed-up",
            "efficiency"]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    base = {(r["method"], r["ipc"]): r["median_ms"] for r in rows if r["world"] == 1}
    for r in rows:
        speed = base[(r["method"], r["ipc"])] / r["median_ms"] if (r["method"], r["ipc"]) in base else float("nan")
        out.append(f"| {r['method'].upper()} | {r['ipc']} | {r['world']} | {r['classes_per_rank']} | "
                   f"{r['median_ms']:.0f} ± {r['iqr_ms']:.0f} | {r['median_ms'] / r['classes']:.1f} | "
                   f"{speed:.2f}× | {100 * speed / r['world']:.0f}% |")
    return "\n".join(out)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--methods", nargs="*", default=["dm", "idc"])
    ap.add_argument("--ipc", nargs="*", type=int, default=[1, 10])
    ap.add_argument("--world", type=int, default=2, help="processes of the parallel run")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--iterations", type=int, default=5, help="timed outer iterations")
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    args = ap.parse_args(argv)

    from ddkernels.distill import data

    classes = data.load_dataset(DATASET).num_classes
    rows = []
    for method in args.methods:
        for ipc in args.ipc:
            for world in (1, args.world):
                times = measure(method, ipc, world, args.warmup, args.iterations)
                median, iqr = _quartiles(times)
                per_rank = "/".join(sorted({str(classes // world), str(-(-classes // world))}))
                provider = f"{world} process" + ("es" if world > 1 else "")
                rows.append(dict(op="scaling", case=f"{method.upper()} FMNIST IPC {ipc} quick", provider=provider,
                                 mode="iteration", median_ms=1e3 * median, iqr_ms=1e3 * iqr, method=method, ipc=ipc,
                                 world=world, classes=classes, classes_per_rank=per_rank))
                print(f"{method} IPC {ipc}: {provider}: {1e3 * median:.0f} ms/iteration "
                      f"(IQR {1e3 * iqr:.0f} ms, {len(times)} iterations)", flush=True)
    os.makedirs(args.out, exist_ok=True)
    harness.append_csv(os.path.join(args.out, "results.csv"), rows, bandwidth_gbs=float("nan"))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    table = (f"Measured on {harness.hardware().rsplit(' (', 1)[0]} ({cores} logical CPUs visible, one torch thread per "
             f"process), torch {torch.__version__}, git {harness.git_sha()}; Fashion-MNIST, `quick` preset, "
             f"median (± IQR) of {args.iterations} outer iterations after {args.warmup} warm-up; ms / class = "
             f"ms / iteration ÷ {classes} classes; efficiency = speed-up ÷ processes.\n\n" + markdown(rows))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    complete = all(getattr(args, k) == ap.get_default(k) for k in ("methods", "ipc", "world"))
    path = harness.write_table(args.out, f"latest-scaling-{device}", table, complete)
    print("\n" + table + f"\nwritten to {path}")


if __name__ == "__main__":
    main()
