"""The dispatch point: auto choice, env override, explicit backends and their reasons."""
import pytest
import torch

import ddkernels
from ddkernels import dispatch


def test_every_op_declares_every_backend():
    for op, backends in dispatch.OpBackends.registry.items():
        assert set(backends.backends) == set(dispatch.BACKENDS), op


def test_auto_prefers_cpu_kernel_for_cpu_float32():
    mf = dispatch.OpBackends.registry["multi_formation"]
    assert mf.select("auto", torch.device("cpu"), torch.float32) == "cpu"
    assert mf.select("auto", torch.device("cpu"), torch.float16) == "reference"


def test_env_var_replaces_auto(monkeypatch):
    mf = dispatch.OpBackends.registry["multi_formation"]
    monkeypatch.setenv("DDKERNELS_BACKEND", "reference")
    assert mf.select("auto", torch.device("cpu"), torch.float32) == "reference"
    assert mf.select("cpu", torch.device("cpu"), torch.float32) == "cpu"  # explicit wins


def test_triton_on_cpu_needs_the_interpreter(monkeypatch):
    mf = dispatch.OpBackends.registry["multi_formation"]
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    why = mf.reasons("triton", torch.device("cpu"), torch.float32)
    assert any("interpreter" in r for r in why)


def test_extra_reasons_block_a_backend():
    mf = dispatch.OpBackends.registry["multi_formation"]
    extra = {"cpu": ["shape too large"]}
    assert mf.select("auto", torch.device("cpu"), torch.float32, extra) == "reference"
    with pytest.raises(dispatch.BackendUnavailable, match="shape too large"):
        mf.select("cpu", torch.device("cpu"), torch.float32, extra)


def test_backend_must_be_a_string():
    with pytest.raises(TypeError, match="backend must be a string"):
        ddkernels.multi_formation(torch.rand(1, 1, 4, 4), 2, backend=None)


def test_info_reports_every_op():
    from ddkernels.info import report
    text = report()
    for op in dispatch.OpBackends.registry:
        assert f"{op}:" in text
    assert "extension ddkernels._C" in text
