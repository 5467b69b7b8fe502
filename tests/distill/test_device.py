"""The run's device: resolution, generator states across devices, and device discipline (every tensor
on the run's device) for the evaluation and the experts, checked on a CPU-only machine."""
import dataclasses
import os
import warnings

import pytest
import torch

from ddkernels.distill import data
from ddkernels.distill.device import (describe, dist_backend, generator, generator_state, load_generator_state,
                                      resolve)
from ddkernels.distill.evaluate import evaluate, get_protocol
from ddkernels.distill.experts import train_experts

from .device_guard import strict_device

pytestmark = pytest.mark.usefixtures("single_thread")
HAS_CUDA = torch.cuda.is_available()


def test_resolve_cpu_and_auto():
    assert resolve("cpu") == torch.device("cpu") and resolve(torch.device("cpu")) == torch.device("cpu")
    assert resolve("auto") == torch.device("cuda" if HAS_CUDA else "cpu", 0 if HAS_CUDA else None)
    assert resolve(None) == resolve("auto")


@pytest.mark.skipif(HAS_CUDA, reason="checks the error a machine without CUDA gives")
@pytest.mark.parametrize("name", ["cuda", "cuda:0", "cuda:3"])
def test_cuda_without_cuda_is_one_clear_error(name):
    with pytest.raises(ValueError, match=rf"--device '{name}': .*use --device cpu"):
        resolve(name, what="--device")


@pytest.mark.parametrize("bad", ["gpu", "tpu", "mps", "cuda:x", 3, ""])
def test_resolve_rejects_other_devices(bad):
    with pytest.raises(ValueError, match="device"):
        resolve(bad)


def test_generator_on_cpu_is_the_plain_generator():
    a, b = generator(torch.device("cpu"), 7), torch.Generator().manual_seed(7)
    assert torch.equal(torch.randperm(50, generator=a), torch.randperm(50, generator=b))


def test_generator_state_round_trip_and_other_device():
    g = generator(torch.device("cpu"), 3)
    torch.rand(5, generator=g)
    saved = generator_state(g)
    assert torch.equal(saved, g.get_state())  # the format checkpoints always had
    expect = torch.rand(4, generator=g)
    h = generator(torch.device("cpu"), 0)
    assert load_generator_state(h, saved, seed=3, iteration=1) is True
    assert torch.equal(torch.rand(4, generator=h), expect)
    # a state written on a GPU (Philox: seed and offset, 16 bytes): re-seeded from (seed, iteration),
    # deterministically, with a warning
    foreign = torch.zeros(16, dtype=torch.uint8)
    with pytest.warns(UserWarning, match="re-seeded"):
        assert load_generator_state(h, foreign, seed=3, iteration=5) is False
    first = torch.rand(4, generator=h)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        load_generator_state(h, foreign, seed=3, iteration=5)
    assert torch.equal(torch.rand(4, generator=h), first)


def test_describe_and_backend():
    info = describe(torch.device("cpu"))
    assert info["device"] == "cpu" and info["threads"] >= 1 and info["torch"] == torch.__version__
    assert dist_backend(torch.device("cpu")) == "gloo"
    assert dist_backend(torch.device("cuda", 0)) == "nccl"


def test_dataset_to(digits):
    assert digits.to("cpu") is digits and digits.device == torch.device("cpu")
    moved = digits.whitened(0.1).to(torch.device("cpu"))
    assert moved.zca is not None


def test_guard_catches_default_device_tensors(monkeypatch):
    from . import device_guard

    monkeypatch.setattr(device_guard, "PACKAGE", os.path.dirname(os.path.abspath(__file__)) + os.sep)
    with strict_device():  # explicit devices pass
        torch.randperm(4, generator=torch.Generator(device="cpu"), device="cpu")
        torch.zeros(2, device="cpu").new_zeros(3)
    with pytest.raises(AssertionError, match=r"(?s)2 place\(s\).*randperm.*torch.Generator\(\) without device"):
        with strict_device():
            torch.randperm(4, generator=torch.Generator(device="cpu"))
            torch.Generator()


def test_evaluation_keeps_to_the_run_device(digits):
    idx = data.ClassSampler(digits.train_y, 10).indices_all(3, torch.Generator().manual_seed(0)).flatten()
    x, y = digits.normalize(digits.train_x[idx]), digits.train_y[idx]
    for name in ("dsa", "idc", "rtp"):
        proto = get_protocol(name, "quick", epochs=2, width=8, n_nets=1, batch=16, test_limit=100)
        with strict_device():
            guarded = evaluate(x, y, digits, proto, progress=False, device="cpu")
        assert guarded["accuracies"] == evaluate(x, y, digits, proto, progress=False)["accuracies"]
    proto = dataclasses.replace(get_protocol("dsa", "quick", epochs=1, width=8, n_nets=1, batch=16), choose=3)
    with strict_device():
        evaluate(x, y, digits, proto, progress=False, device="cpu")


def test_experts_keep_to_the_run_device(tmp_path):
    with strict_device():
        files = train_experts("digits", str(tmp_path / "e"), num_experts=1, epochs=1, width=8, images_per_epoch=64,
                              batch=32, progress=False, device="cpu")
    e = torch.load(files[0], weights_only=False)
    assert len(e["trajectory"]) == 2 and e["trajectory"][0].device.type == "cpu"


@pytest.mark.parametrize("case", ["dc", "dm", "mtt", "mtt-reverse", "idc", "idc-multi", "haba", "haba-reverse",
                                  "haba-dm", "rtp", "kfs-div"])
def test_trainer_keeps_to_the_run_device(case, digits):
    from ddkernels.distill.methods import make_distiller

    from .methods.test_fingerprints import CASES

    method, ipc, kw, *backend = CASES[case.removesuffix("-reverse")]
    if case.endswith("-reverse"):  # the default unroll (the fingerprint cases pin "autograd")
        kw = dict(kw, unroll="reverse")
    with strict_device():
        t = make_distiller(method, digits, ipc, "quick", seed=0, backend=backend[0] if backend else "auto",
                           device="cpu", **kw)
        t.run(1, progress=False)
        t.training_set(), t.pixel_images(), t.state_dict()
    assert t.device == torch.device("cpu") and t.ds.device == torch.device("cpu")


def test_trainer_device_errors(digits):
    from ddkernels.distill.methods import make_distiller

    with pytest.raises(ValueError, match="device"):
        make_distiller("dm", digits, 1, device="tpu")


@pytest.mark.skipif(HAS_CUDA, reason="checks the error a machine without CUDA gives")
def test_cli_device_cuda_without_cuda_is_one_line(tmp_path, capsys):
    from ddkernels.distill import cli

    for args in (["distill", "--method", "dm", "--dataset", "digits", "--ipc", "1", "--out", str(tmp_path / "r"),
                  "--device", "cuda"],
                 ["experts", "--dataset", "digits", "--out", str(tmp_path / "e"), "--device", "cuda:1"],
                 ["distill", "--method", "dm", "--dataset", "digits", "--ipc", "1", "--out", str(tmp_path / "r"),
                  "--device", "gpu"]):
        assert cli.main(args) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "--device" in err, err
    assert not (tmp_path / "r").exists() and not (tmp_path / "e").exists()


def test_run_records_its_device(tmp_path):
    import json

    from ddkernels.distill import runs

    out = tmp_path / "dm"
    m = runs.distill("dm", "digits", 1, str(out), iterations=1, device="cpu", eval_nets=1, progress=False,
                     overrides=dict(width=8, batch_real=8, eval_epochs=1))
    assert m["device"]["device"] == "cpu" and m["device"]["threads"] >= 1
    assert json.loads((out / "config.json").read_text())["device"] == "cpu"
    assert "device {" in (out / "log.txt").read_text()
    e = runs.evaluate_dir(str(out), eval_nets=1, baseline=False, device="cpu", progress=False)
    assert e["eval_device"]["device"] == "cpu"


def test_checkpoint_from_another_device_resumes(digits):
    """A checkpoint's tensors load onto the run's device (map_location); a generator state written
    on a GPU (16-byte Philox state) re-seeds the stream with a warning and the run goes on."""
    import copy
    import io

    from ddkernels.distill.methods import make_distiller

    kw = dict(width=8, batch_real=8)
    t = make_distiller("dm", digits, 2, "quick", seed=0, device="cpu", **kw)
    t.run(1, progress=False)
    buf = io.BytesIO()
    torch.save(t.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, map_location="cpu", weights_only=False)
    resumed = make_distiller("dm", digits, 2, "quick", seed=0, device="cpu", **kw)
    resumed.load_state_dict(copy.deepcopy(state))
    t.run(2, progress=False)
    resumed.run(2, progress=False)
    assert torch.equal(t.syn, resumed.syn)  # same device kind: exact
    state["generator"] = torch.zeros(16, dtype=torch.uint8)  # as a CUDA generator writes it
    other = make_distiller("dm", digits, 2, "quick", seed=0, device="cpu", **kw)
    with pytest.warns(UserWarning, match="re-seeded"):
        other.load_state_dict(state)
    other.run(2, progress=False)
    assert other.iteration == 2 and torch.isfinite(other.syn).all()
