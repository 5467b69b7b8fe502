"""Mixed precision (issue 21 item 2): hp ``precision`` in every trainer, ``Protocol.precision`` in the
evaluation, the experts' setting, the CLI's ``--precision``; stored tensors and optimizer state stay
float32; fp16 is refused off CUDA before any work."""
import dataclasses
import io
import json
import os

import pytest
import torch

from ddkernels.distill import cli, data, precision as amp
from ddkernels.distill.evaluate import evaluate, get_protocol
from ddkernels.distill.experts import train_experts
from ddkernels.distill.methods import METHODS, make_distiller, preset
from ddkernels.distill.runs import distill

from .methods.test_fingerprints import CASES

pytestmark = pytest.mark.usefixtures("single_thread")
HAS_CUDA = torch.cuda.is_available()


def test_check_precision():
    assert [amp.check_precision(p) for p in amp.PRECISIONS] == list(amp.PRECISIONS)
    with pytest.raises(ValueError, match=r"--precision must be one of fp32, bf16, fp16, got 'fp8'"):
        amp.check_precision("fp8", what="--precision")
    with pytest.raises(ValueError, match=r"precision='fp16' needs a CUDA device.*use 'bf16'"):
        amp.check_precision("fp16", "cpu")
    assert amp.grad_scaler("bf16", "cpu") is None and amp.grad_scaler("fp32", "cpu") is None


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_preset_has_precision_fp32(method):
    for name in METHODS[method].PRESETS:
        assert preset(method, "fashion-mnist", 1, name)["precision"] == "fp32"


@pytest.mark.skipif(HAS_CUDA, reason="checks the CPU's refusal")
def test_fp16_on_cpu_is_refused_before_work(digits, monkeypatch):
    from ddkernels.distill.methods import Distiller

    def no_work(*a, **k):
        raise AssertionError("work started")

    monkeypatch.setattr(Distiller, "init_synthetic", no_work)
    with pytest.raises(ValueError, match="precision='fp16' needs a CUDA device"):
        make_distiller("dm", digits, 1, "quick", device="cpu", precision="fp16")


def _state_dtypes(t) -> set:
    dtypes = {v.dtype for v in t.synthetic_params().values()}
    for st in t.opt.state.values():
        dtypes |= {v.dtype for v in st.values() if isinstance(v, torch.Tensor) and v.is_floating_point()}
    return dtypes


def _run(case, precision, seed=0):
    method, ipc, kw, *backend = CASES[case]
    t = make_distiller(method, data.load_dataset("digits"), ipc, "quick", seed=seed,
                       backend=backend[0] if backend else "auto", precision=precision, **kw)
    t.run(2, progress=False)
    return t


# one case per objective and parameterization (the fingerprint cases' settings)
@pytest.mark.parametrize("case", ["dc", "dm", "mtt", "idc", "haba", "haba-dm", "rtp", "kfs"])
def test_bf16_runs_every_objective_with_float32_state(case):
    t32, t16 = _run(case, "fp32"), _run(case, "bf16")
    assert t16.precision == "bf16" and t16.scaler is None
    assert _state_dtypes(t16) == {torch.float32}
    assert all(p.grad is None for p in t16.synthetic_params().values())
    images, _ = t16.training_set()
    assert images.dtype == torch.float32 and torch.isfinite(images).all()
    l32, l16 = [h["loss"] for h in t32.history], [h["loss"] for h in t16.history]
    assert all(map(lambda x: x == x and abs(x) < float("inf"), l16))
    # autocast was on (the networks ran in bfloat16), and the losses are still the same problem's
    assert l16 != l32
    assert l16[0] == pytest.approx(l32[0], rel=0.1, abs=1e-3)
    assert "scalers" not in t16.state_dict()


def test_bf16_checkpoint_round_trip(digits):
    a = make_distiller("dm", digits, 1, "quick", width=8, batch_real=8, precision="bf16")
    a.run(1, progress=False)
    b = make_distiller("dm", digits, 1, "quick", width=8, batch_real=8, precision="bf16")
    buf = io.BytesIO()  # through bytes, as a checkpoint file: no tensor shared with ``a``
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    b.load_state_dict(torch.load(buf, weights_only=False))
    a.run(2, progress=False)
    b.run(2, progress=False)
    assert torch.equal(a.syn, b.syn)


def test_evaluate_in_bf16(digits):
    x, y = digits.train_x[:20], digits.train_y[:20]
    proto = get_protocol("dsa", "quick", epochs=2, n_nets=1, width=8, test_limit=50, precision="bf16")
    res = evaluate(digits.normalize(x), y, digits, proto, progress=False)
    assert res["protocol"]["precision"] == "bf16" and 0 <= res["mean"] <= 100
    with pytest.raises(ValueError, match="precision must be one of"):
        get_protocol("dsa", "quick", precision="half")
    if not HAS_CUDA:
        with pytest.raises(ValueError, match="protocol.precision='fp16' needs a CUDA device"):
            evaluate(digits.normalize(x), y, digits, dataclasses.replace(proto, precision="fp16"), progress=False)


def test_experts_in_bf16_store_float32_and_old_configs_resume(tmp_path):
    out = str(tmp_path / "e")
    kw = dict(num_experts=1, epochs=1, width=8, images_per_epoch=64, progress=False)
    (path,) = train_experts("digits", out, precision="bf16", **kw)
    e = torch.load(path, weights_only=False)
    assert e["precision"] == "bf16" and all(t.dtype == torch.float32 for t in e["trajectory"])
    assert json.load(open(os.path.join(out, "config.json")))["precision"] == "bf16"
    with pytest.raises(ValueError, match="precision"):
        train_experts("digits", out, **kw)  # fp32 into a bf16 directory: other settings
    # a directory written before the setting existed meant fp32
    old = str(tmp_path / "old")
    train_experts("digits", old, **kw)
    cfg = json.load(open(os.path.join(old, "config.json")))
    del cfg["precision"]
    json.dump(cfg, open(os.path.join(old, "config.json"), "w"))
    assert train_experts("digits", old, **kw)
    if not HAS_CUDA:
        with pytest.raises(ValueError, match="--precision='fp16' needs a CUDA device"):
            train_experts("digits", str(tmp_path / "never"), precision="fp16", **kw)
        assert not os.path.exists(tmp_path / "never")


def test_metrics_record_precision(tmp_path):
    out = str(tmp_path / "run")
    m = distill("dm", "digits", 1, out, iterations=1, evaluate_after=False, progress=False, device="cpu",
                overrides=dict(width=8, batch_real=8, precision="bf16"))
    assert m["precision"] == "bf16"
    assert json.load(open(os.path.join(out, "config.json")))["hp"]["precision"] == "bf16"


@pytest.mark.skipif(HAS_CUDA, reason="checks the CPU's refusal")
@pytest.mark.parametrize("argv", [
    ["distill", "--method", "dm", "--dataset", "digits", "--ipc", "1", "--precision", "fp16", "--device", "cpu"],
    ["distill", "--method", "dm", "--dataset", "digits", "--ipc", "1", "--set", "precision=\"fp16\"", "--device", "cpu"],
    ["experts", "--dataset", "digits", "--precision", "fp16", "--device", "cpu"],
])
def test_cli_refuses_fp16_on_cpu_before_work(tmp_path, capsys, argv):
    out = str(tmp_path / "out")
    assert cli.main(argv + ["--out", out]) == 2
    err = capsys.readouterr().err
    assert "--precision='fp16' needs a CUDA device" in err
    assert not os.path.exists(out)


@pytest.mark.skipif(HAS_CUDA, reason="checks the CPU's refusal")
def test_cli_evaluate_refuses_fp16_on_cpu(tmp_path, capsys):
    assert cli.main(["evaluate", str(tmp_path), "--precision", "fp16", "--device", "cpu"]) == 2
    assert "--precision='fp16' needs a CUDA device" in capsys.readouterr().err


def test_cli_precision_choices(capsys):
    with pytest.raises(SystemExit):
        cli.main(["distill", "--method", "dm", "--dataset", "digits", "--ipc", "1", "--precision", "fp8",
                  "--out", "x"])
    assert "--precision" in capsys.readouterr().err


def test_autocast_sees_weights_updated_inside_the_region():
    """DC/IDC train their network inside the outer iteration's autocast region: a weight updated in
    place must be re-cast (autocast's cast cache would keep the stale half copy)."""
    lin = torch.nn.Linear(4, 4)
    x = torch.randn(2, 4)
    with amp.autocast("bf16", "cpu"):
        a = lin(x)
        with torch.no_grad():
            lin.weight.add_(1.0)
        b = lin(x)
    assert a.dtype == torch.bfloat16 and not torch.equal(a, b)


@pytest.mark.parametrize("case", ["dc", "idc", "haba-dc", "mtt"])
def test_scaler_path_is_exact_without_overflow(case):
    """fp16's scaler path, run on the CPU in float32 (fp16 itself needs CUDA): scaling by a power of
    two and unscaling is exact, so with no overflow the run is bit for bit the plain one (a scaled
    gradient stepped without unscaling would not be); the scalers' step counts show which steps
    went through them (MTT trains no network)."""
    plain = _run(case, "fp32")
    method, ipc, kw, *backend = CASES[case]
    t = make_distiller(method, data.load_dataset("digits"), ipc, "quick", seed=0, **kw)
    t.scaler, t.net_scaler = (torch.amp.GradScaler("cpu", init_scale=2.0 ** 10) for _ in range(2))
    t.run(2, progress=False)
    for k, v in plain.synthetic_params().items():
        assert torch.equal(t.synthetic_params()[k], v), k
    assert t.scaler.get_scale() == 2.0 ** 10 and "scalers" in t.state_dict()
    steps = {k: v["_growth_tracker"] for k, v in t.state_dict()["scalers"].items()}
    assert steps["image"] > 0 and (steps["net"] > 0) == (case != "mtt"), steps
