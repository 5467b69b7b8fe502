"""The benchmarks' plumbing (no timing): every public op has a benchmark, tables go to
benchmarks/results only, and the pytest-benchmark suite collects one benchmark per (op, case, provider)."""
import importlib
import os
import subprocess
import sys

import pytest

from benchmarks import harness, run
from benchmarks.test_ops import bench_id
from ddkernels import ops

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.parametrize("op", ops.names(public_only=True))
def test_every_public_op_has_a_benchmark(op):
    mod = importlib.import_module(f"benchmarks.bench_{op}")
    assert callable(mod.cases) and mod.FUSED and mod.EAGER
    assert op in run.OPS


def test_write_table_keeps_partial_runs_apart(tmp_path):
    full = harness.write_table(str(tmp_path), "latest-cpu", "| a |\n", complete=True)
    partial = harness.write_table(str(tmp_path), "latest-cpu", "| b |", complete=False)
    assert os.path.basename(full) == "latest-cpu.md" and os.path.basename(partial) == "latest-cpu-partial.md"
    assert open(full).read() == "| a |\n" and open(partial).read() == "| b |\n"
    assert sorted(os.listdir(tmp_path)) == ["latest-cpu-partial.md", "latest-cpu.md"]


def test_cpu_peak_memory_sees_allocations_inside_a_backward():
    """A backward's nested ``autograd.grad`` and temporaries count (the ops' self memory hid them)."""
    import torch

    mb = 2**20 // 4  # float32 elements per MiB

    class Held(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            ctx.held = torch.ones(40 * mb)  # held from the forward to the backward
            return x * 2

        @staticmethod
        def backward(ctx, g):
            tmp = torch.ones(20 * mb) * 3
            with torch.enable_grad():
                y = torch.ones(10 * mb, requires_grad=True)
                (gy,) = torch.autograd.grad((y * 2).sum(), y)
            assert float(tmp[0] + gy[0]) == 5
            ctx.held = None
            return g * 2

    x = torch.ones(4, requires_grad=True)
    peak = harness.peak_memory_mb(lambda: Held.apply(x).sum().backward(), torch.device("cpu"))
    # 40 held + 20 (ones) + 20 (× 3) + 10 (y) + 10 (y·2) + 10 (gy), at least the 40 + 20 + 10 alive at once
    assert 70 <= peak <= 110, peak


def test_pytest_benchmark_suite_collects_every_op():
    pytest.importorskip("pytest_benchmark")
    out = subprocess.run([sys.executable, "-m", "pytest", "benchmarks", "--collect-only", "-q", "-p", "no:cacheprovider"],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    ids = [line for line in out.stdout.splitlines() if line.startswith("benchmarks/test_ops.py::")]
    for op in ops.names(public_only=True):
        cases = importlib.import_module(f"benchmarks.bench_{op}").cases(quick=True)
        expected = {bench_id(op, c, p) for c in cases for p in c.providers}
        got = {line.split("[", 1)[1].rstrip("]") for line in ids if f"[{op}-" in line}
        assert got == expected, op


def test_half_ratios_pair_each_half_case_with_its_float32_case():
    rows = [dict(op="o", case="B=1", provider="cpu", mode="full", median_ms=2.0, dtype="fp32"),
            dict(op="o", case="B=1, bf16", provider="cpu", mode="full", median_ms=1.0, dtype="bf16"),
            dict(op="o", case="B=1, bf16", provider="reference", mode="full", median_ms=3.0, dtype="bf16")]
    lines = harness.half_ratios(rows, "cpu")
    assert lines == ["| o | B=1 | full | 2.000 | 1.000 | 2.00× |"]
    assert "fp32 / half" in harness.half_ratio_table(lines, "cpu") and harness.half_ratio_table([], "cpu") == ""


def test_default_allocator_flag_is_accepted(tmp_path, capsys):
    run.main(["--ops", run.DEFAULT_ALLOCATOR_FLAG, "--out", str(tmp_path)])  # no ops: parses, runs nothing
    assert "ddkernels" in capsys.readouterr().out
