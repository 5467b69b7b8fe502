"""Every public op's benchmark cases (``benchmarks/bench_<op>.py``, ops from :data:`ddkernels.ops.OPS`)
as a pytest-benchmark suite: one benchmark per (op, case, provider), timing forward + backward
(the harness's "full" mode) after the provider's warm-up (torch.compile compiles there).
Benchmarks of one case share a group, so the report puts the providers side by side.
"""
import functools
import importlib

import pytest
import torch

from ddkernels import ops

from . import harness

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@functools.lru_cache(maxsize=None)
def _cases(op: str, size: str) -> tuple[harness.Case, ...]:
    return tuple(importlib.import_module(f"benchmarks.bench_{op}").cases(quick=size == "quick", device=DEVICE))


def bench_id(op: str, case: harness.Case, provider: harness.Provider) -> str:
    """An id `-k` can select: scale_shift, "op, Hn=5, B=100, 3x30x30", cpu -> scale_shift-op-Hn5-B100-3x30x30-cpu."""
    return f"{op}-{case.name.replace(', ', '-').replace(' ', '_').replace('=', '')}-{provider.name}"


def pytest_generate_tests(metafunc):
    if "provider" not in metafunc.fixturenames:
        return
    size = metafunc.config.getoption("--bench-cases")
    params = [pytest.param(op, i, j, id=bench_id(op, case, p))
              for op in ops.names(public_only=True)
              for i, case in enumerate(_cases(op, size))
              for j, p in enumerate(case.providers)]
    metafunc.parametrize("op, case_index, provider", params)


def test_forward_backward(benchmark, request, op, case_index, provider):
    case = _cases(op, request.config.getoption("--bench-cases"))[case_index]
    p = case.providers[provider]
    harness.warm_up(p)
    step = harness.mode_callable(p, "full", case.upstream)
    device = p.inputs[0].device

    def run():
        step()
        harness.sync(device)

    benchmark.group = f"{op} | {case.name}"
    benchmark.extra_info.update(op=op, case=case.name, provider=p.name, device=str(device),
                                bytes=case.bytes["full"], **case.params)
    benchmark(run)
