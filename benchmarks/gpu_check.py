"""``make gpu-check``: everything a machine with one CUDA GPU can prove about ddkernels, in one run of
at most ~8 minutes. On a machine without one it says so and exits 0.

1. The op tests on CUDA tensors with the compiled Triton kernels (``DDKERNELS_TEST_DEVICE=cuda``:
   tests/conftest.py makes CUDA the default device, so the interpreter is not used).
2. The op benchmark, ``--quick`` (reference, eager, torch.compile, triton side by side).
3. One outer iteration of every trainer with ``--device cuda``, reference vs fused
   (:mod:`benchmarks.bench_e2e`).

Writes ``benchmarks/results/latest-gpu.md`` (ops), ``latest-gpu-e2e.md`` (trainers) and
``gpu-check.log`` (every command's output), each headed by the GPU's name. Exit status: 0 when every
step passed, 1 otherwise (the log says which).

    python -m benchmarks.gpu_check [--budget 480] [--out benchmarks/results]
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

# (name, seconds of the budget it may use, argv after the interpreter, extra environment)
STEPS = (
    ("op tests (CUDA tensors, compiled Triton)", 0.40,
     ["-m", "pytest", "tests/ops", "-q", "-x", "-p", "no:cacheprovider"], {"DDKERNELS_TEST_DEVICE": "cuda"}),
    ("op benchmark --quick", 0.30, ["-m", "benchmarks.run", "--quick", "--out", "{tmp}"], {}),
    ("trainers, one outer iteration, --device cuda", 0.30,
     ["-m", "benchmarks.bench_e2e", "--quick", "--device", "cuda", "--no-original", "--out", "{tmp}"], {}),
)


def gpu_header() -> str:
    p = torch.cuda.get_device_properties(0)
    try:
        import triton
        tv = triton.__version__
    except ImportError:
        tv = "not installed"
    return (f"GPU: {p.name} ({p.total_memory / 2**30:.0f} GiB, sm_{p.major}{p.minor}), torch {torch.__version__}, "
            f"CUDA {torch.version.cuda}, Triton {tv}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budget", type=float, default=480.0, help="seconds for all steps together (default 480)")
    ap.add_argument("--out", default=os.path.join(HERE, "results"), help="where the tables and the log go")
    args = ap.parse_args(argv)
    if not args.budget > 0:
        ap.error(f"--budget must be > 0 seconds, got {args.budget}")
    if not torch.cuda.is_available():
        why = "torch is a CPU-only build" if torch.version.cuda is None else "no CUDA GPU is visible"
        print(f"gpu-check: nothing to check on this machine ({why}); run `make gpu-check` where a GPU is.")
        return 0
    os.makedirs(args.out, exist_ok=True)
    header = gpu_header()
    print(header)
    log_path = os.path.join(args.out, "gpu-check.log")
    failed = []
    with open(log_path, "w") as log, tempfile.TemporaryDirectory() as tmp:
        log.write(header + "\n")
        for name, share, cmd, env in STEPS:
            argv_ = [sys.executable] + [a.format(tmp=tmp) for a in cmd]
            limit = share * args.budget
            start = time.time()
            log.write(f"\n=== {name}: {' '.join(argv_)} (limit {limit:.0f} s)\n")
            log.flush()
            try:
                rc = subprocess.run(argv_, cwd=ROOT, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT,
                                    timeout=limit).returncode
                status = "passed" if rc == 0 else f"failed (exit {rc})"
            except subprocess.TimeoutExpired:
                rc, status = 124, f"stopped at its {limit:.0f} s limit"
            line = f"{name}: {status} in {time.time() - start:.0f} s"
            log.write(f"=== {line}\n")
            print(line)
            if rc:
                failed.append(name)
        # --quick runs write the "-partial" tables (a smoke run never replaces a full table)
        for src, dst in (("latest-cuda-partial.md", "latest-gpu.md"), ("latest-e2e-cuda-partial.md", "latest-gpu-e2e.md")):
            if os.path.exists(os.path.join(tmp, src)):
                with open(os.path.join(tmp, src)) as f, open(os.path.join(args.out, dst), "w") as g:
                    g.write(f"{header}\n\n{f.read()}")
                print(f"wrote {os.path.join(args.out, dst)}")
        for csv in ("results.csv", "e2e.csv"):  # every run is kept: append this one's rows
            src = os.path.join(tmp, csv)
            if os.path.exists(src):
                _append_csv(src, os.path.join(args.out, csv))
    print(f"log: {log_path}" + (f"; failed: {', '.join(failed)}" if failed else "; every step passed"))
    return 1 if failed else 0


def _append_csv(src: str, dst: str) -> None:
    if not os.path.exists(dst):
        shutil.copyfile(src, dst)
        return
    with open(src) as f:
        lines = f.readlines()[1:]  # same columns: drop the header
    with open(dst, "a") as g:
        g.writelines(lines)


if __name__ == "__main__":
    sys.exit(main())
