"""``make bench``: run every public op's benchmark (``benchmarks/bench_<op>.py``, ops from the
registry :data:`ddkernels.ops.OPS`) side by side, append to results/results.csv and write the table
to results/latest-<device>.md (a partial run: ``--quick``, a subset of ops, ``--upstream``, to
results/latest-<device>-partial.md). ``--e2e`` adds the end-to-end benchmark
(:mod:`benchmarks.bench_e2e`: one outer iteration of every trainer, reference vs fused, and the
original-style DC loop before/after ``ddkernels.compat.patch``), table in results/latest-e2e-cpu.md.
The same cases run as a pytest-benchmark suite: ``pytest benchmarks --benchmark-only``
(:mod:`benchmarks.test_ops`, ``make bench-pytest``).

    python -m benchmarks.run [--quick] [--ops multi_formation ...] [--min-run-time 0.5]
    python -m benchmarks.run --ops --e2e --threads 1     # only the end-to-end benchmark
    python -m benchmarks.run --ops scale_shift --quick --default-allocator   # as the trainers meet the ops
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

import torch

from ddkernels import ops

from . import harness

OPS = list(ops.names(public_only=True))  # each has benchmarks/bench_<op>.py (tests/benchmarks checks)
HERE = os.path.dirname(os.path.abspath(__file__))


# glibc returns allocations above its mmap threshold (at most 32 MB) to the kernel on free, so every
# call that makes a large output page-faults it in afresh; on our VM that costs ~4 µs per 4 KiB page
# and dominated every provider's time for outputs over 32 MB (e.g. 63 ms of a 69 ms forward). The
# benchmark keeps large blocks on the heap, for all providers alike, so the table measures the ops.
# Users with large decodes get the same effect from these variables (or THP_MEM_ALLOC_ENABLE=1).
ALLOCATOR_ENV = {"MALLOC_MMAP_THRESHOLD_": str(2**32), "MALLOC_TRIM_THRESHOLD_": str(2**32)}


def _reexec_with_allocator_env() -> None:
    if sys.platform.startswith("linux") and any(os.environ.get(k) != v for k, v in ALLOCATOR_ENV.items()):
        os.execve(sys.executable, [sys.executable, "-m", "benchmarks.run", *sys.argv[1:]], {**os.environ, **ALLOCATOR_ENV})


DEFAULT_ALLOCATOR_FLAG = "--default-allocator"


def main(argv=None) -> None:
    if argv is None and DEFAULT_ALLOCATOR_FLAG not in sys.argv[1:]:
        _reexec_with_allocator_env()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer shapes (a smoke run)")
    ap.add_argument("--ops", nargs="*", default=OPS, choices=OPS, help="ops to benchmark (none given: no op benchmarks)")
    ap.add_argument("--e2e", action="store_true", help="also run the end-to-end trainer benchmark (bench_e2e)")
    ap.add_argument("--min-run-time", type=float, default=0.5, help="seconds per measurement")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--upstream", choices=("randn", "ones"), default=None,
                    help="override every case's upstream gradient (default: each op's own; grad_distance uses ones)")
    ap.add_argument(DEFAULT_ALLOCATOR_FLAG, action="store_true",
                    help="keep glibc's default mmap threshold (no re-exec with ALLOCATOR_ENV): time the ops the "
                         "way the trainers meet them; the table goes to the -partial file")
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    args = ap.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    import ddkernels.info
    print(ddkernels.info.report(), "\n")
    os.makedirs(args.out, exist_ok=True)
    if args.ops:
        run_ops(args)
    if args.e2e:
        from . import bench_e2e
        bench_e2e.run(args.quick, None, threads=args.threads, out=args.out)


def run_ops(args) -> None:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    bw = harness.measure_bandwidth(device)
    print(f"measured copy bandwidth on {harness.hardware()}: {bw:.1f} GB/s (read + write bytes)")
    allocator = ", ".join(f"{k}={os.environ.get(k, 'unset')}" for k in ALLOCATOR_ENV)
    print(f"allocator: {allocator}\n")
    raised = all(os.environ.get(k) == v for k, v in ALLOCATOR_ENV.items())
    sections, ratios = [], []
    for op in args.ops:
        mod = importlib.import_module(f"benchmarks.bench_{op}")
        rows = []
        for case in mod.cases(quick=args.quick, device=device.type):
            case.upstream = args.upstream or case.upstream
            rows += harness.run_case(case, bw, args.min_run_time, progress=print)
        harness.append_csv(os.path.join(args.out, "results.csv"), rows, bw)
        fused = "triton" if device.type == "cuda" else mod.FUSED
        sections.append(harness.markdown(rows, fused, mod.EAGER))
        ratios += harness.half_ratios(rows, fused)
    alloc = ("glibc mmap threshold raised for every provider (see benchmarks/run.py)" if raised else
             "glibc's default mmap threshold (as the trainers run)")
    header = (f"Measured on {harness.hardware()}, torch {torch.__version__}, git {harness.git_sha()}; "
              f"copy bandwidth {bw:.1f} GB/s (read + write); {alloc}. Median ms; ratios are the fused kernel's "
              f"speed-up over the fastest of the eager providers; % roofline = bytes a perfect kernel moves / "
              f"time / copy bandwidth; rows marked bf16 run bfloat16 inputs.\n\n")
    table = header + "\n".join(sections) + "\n" + harness.half_ratio_table(ratios, fused)
    complete = not args.quick and not args.upstream and set(args.ops) == set(OPS) and raised
    path = harness.write_table(args.out, f"latest-{device.type}", table, complete)
    print("\n" + table + f"\nwritten to {path}")


if __name__ == "__main__":
    main()
