"""pytest-benchmark suite of the per-op benchmarks (:mod:`benchmarks.test_ops`); not part of ``make test``
(which runs ``pytest tests``). See ``make bench-pytest``.

    pytest benchmarks --benchmark-only                         # quick cases, every provider
    pytest benchmarks --benchmark-only --bench-cases full      # the cases of `make bench`
    pytest benchmarks --benchmark-only -k "scale_shift and cpu" --benchmark-autosave
    pytest benchmarks --benchmark-only --benchmark-compare     # against the last autosaved run
"""
import os

import pytest

from . import harness
from .run import ALLOCATOR_ENV


def pytest_addoption(parser):
    parser.addoption("--bench-cases", choices=("quick", "full"), default="quick",
                     help="the bench_<op>.py cases to time: quick (as `benchmarks.run --quick`) or full")


@pytest.hookimpl(optionalhook=True)  # a pytest-benchmark hook
def pytest_benchmark_update_machine_info(config, machine_info):
    # Saved with every run, so --benchmark-compare shows what differed between two machines or runs.
    import torch

    machine_info["ddkernels"] = {
        "hardware": harness.hardware(), "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
        "allocator": {k: os.environ.get(k, "unset") for k in ALLOCATOR_ENV},
    }


def pytest_configure(config):
    if config.pluginmanager.hasplugin("benchmark"):
        return
    raise pytest.UsageError("the benchmark suite needs pytest-benchmark (pip install pytest-benchmark)")
