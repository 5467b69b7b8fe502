"""The dispatch point: auto choice, env override, explicit backends and their reasons."""
from pathlib import Path

import pytest
import torch

import ddkernels
from ddkernels import dispatch, ops


def test_every_op_declares_every_backend():
    for op, backends in dispatch.OpBackends.registry.items():
        assert set(backends.backends) == set(dispatch.BACKENDS), op


def test_op_registry_is_the_list_of_ops():
    """ddkernels.ops.OPS names every op sub-package, every dispatch declaration, and exactly the
    public ops ddkernels exports; the lists elsewhere derive from it."""
    on_disk = {p.parent.name for p in Path(ops.__file__).parent.glob("*/function.py")}
    assert set(ops.names()) == on_disk
    for op in ops.names():
        assert ops.backends(op) is dispatch.OpBackends.registry[op]
    assert set(dispatch.OpBackends.registry) == set(ops.names())
    public = set(ops.names(public_only=True))
    assert public and public <= set(ops.names())
    assert {op for op in ops.names() if op in ddkernels.__all__} == public
    for op in ops.names():
        assert ops.has_triton(op) == Path(ops.__file__).parent.joinpath(op, "triton.py").exists(), op


def test_cuda_is_no_backend_gpus_run_triton(monkeypatch):
    mf = dispatch.OpBackends.registry["multi_formation"]
    with pytest.raises(ValueError, match=r"^backend must be one of 'auto', 'reference', 'cpu', 'triton' "
                                         r"\(GPUs run 'triton'; there is no 'cuda' backend\); got 'cuda'$"):
        ddkernels.multi_formation(torch.rand(1, 1, 4, 4), 2, backend="cuda")
    monkeypatch.setenv("DDKERNELS_BACKEND", "cuda")
    with pytest.raises(ValueError, match="^DDKERNELS_BACKEND must be one of .*got 'cuda'$"):
        mf.select("auto", torch.device("cpu"), torch.float32)
    monkeypatch.delenv("DDKERNELS_BACKEND")
    # auto on CUDA tensors: the Triton kernel when triton is installed, else the reference
    expected = "triton" if mf.reasons("triton", torch.device("cuda"), torch.float32) == [] else "reference"
    assert dispatch.AUTO_ORDER["cuda"] == ("triton", "reference")
    assert mf.select("auto", torch.device("cuda"), torch.float32) == expected


def test_compat_backend_rejects_cuda():
    from ddkernels import compat
    with pytest.raises(ValueError, match="backend must be one of .*GPUs run 'triton'.*got 'cuda'"):
        compat.set_backend("cuda")


def test_auto_prefers_cpu_kernel_for_cpu_float32():
    mf = dispatch.OpBackends.registry["multi_formation"]
    assert mf.select("auto", torch.device("cpu"), torch.float32) == "cpu"
    assert mf.select("auto", torch.device("cpu"), torch.float16) == "cpu"  # half kernels, float32 math
    sc = dispatch.OpBackends.registry["small_conv"]
    assert sc.select("auto", torch.device("cpu"), torch.bfloat16) == "cpu"
    ac = dispatch.OpBackends.registry["affine_crop"]  # half kernels too: no op's cpu kernel refuses half
    assert ac.select("auto", torch.device("cpu"), torch.float16) == "cpu"
    assert ac.select("auto", torch.device("cpu"), torch.bfloat16) == "cpu"


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


def test_info_ops_prints_the_op_table(capsys):
    from ddkernels.info import main
    main(["--ops"])
    rows = capsys.readouterr().out.strip().splitlines()
    assert rows[0] == "| op | fuses | backends | used by |"
    assert len(rows) == 2 + len(ops.OPS)
    for op, row in zip(ops.OPS, rows[2:]):
        # an op whose cpu kernel were float32/float64 only would list the dtypes (none is now)
        cpu = "cpu" if set(ops.backends(op.name).backends["cpu"].dtypes) == set(dispatch.FLOATS) else "cpu (float32, float64)"
        assert row.startswith(f"| `{op.name}`") and op.fuses in row and cpu in row.split(" | ")[2].split("; ")
        assert ("triton" in row.split(" | ")[2].split("; ")) == ops.has_triton(op.name)
