"""Every trainer, two outer iterations at a fixed seed on digits, against fingerprints written by the
code before its methods were recomposed into parameterization × objective (issue 14): the losses,
a float64 sum and a SHA-256 of every stored tensor, of the decoded training set and of every tensor
in the checkpoint, and the checkpoint's structure (keys, shapes). On the machine that wrote them they
must match bit for bit; on a CPU that rounds differently (another vector unit, another torch) the
structure and every non-float value must still match exactly and the float sums to 1e-4 relative.
The preset tables must give the same hyperparameters as before (a SHA-256 of each preset's JSON).

``python -m tests.distill.methods.test_fingerprints`` rewrites the fixture (only when a change of
results is intended)."""
import hashlib
import json
import os

import pytest
import torch

from ddkernels.distill import data
from ddkernels.distill.methods import make_distiller, preset

HERE = os.path.dirname(__file__)
FIXTURE = os.path.join(HERE, "fingerprints.json")
# The committed experts of the old-run fixture: fixed files, so MTT/HaBa do not depend on retraining.
EXPERTS = os.path.join(HERE, "..", "fixtures", "old_runs", "experts")

# unroll="autograd": the graph the fingerprints were written with (the reverse pass gives the same gradient
# to float rounding, tests/distill/methods/test_unroll.py, so its float32 results differ in the last bits).
MTT = dict(width=8, max_start_epoch=1, expert_dir=EXPERTS, syn_steps=2, batch_real=16, unroll="autograd")
# RTP's reverse pass with the double-backward product it was written with (the forward-mode product gives the
# same gradient to float rounding, test_unroll.py).
RTP = dict(unroll_product="backward")
CASES = {
    "dc": ("dc", 1, dict(width=8, batch_real=8, outer_loop=2, inner_loop=1)),
    "dc-noise": ("dc", 2, dict(width=8, batch_real=8, outer_loop=2, inner_loop=2, init="noise", batch_train=8)),
    "dsa": ("dsa", 1, dict(width=8, batch_real=8, outer_loop=2, inner_loop=1)),
    "dm": ("dm", 2, dict(width=8, batch_real=8)),
    "mtt": ("mtt", 2, dict(MTT, batch_syn=6)),
    "idc": ("idc", 1, dict(width=8, batch_real=8, inner_loop=2, n_data=16)),
    "idc-sequential": ("idc", 1, dict(width=8, batch_real=8, inner_loop=1, n_data=16, class_steps="sequential")),
    "idc-multi": ("idc", 2, dict(width=8, batch_real=8, inner_loop=1, n_data=16, decode_type="multi")),
    "idc-bound": ("idc", 2, dict(width=8, batch_real=8, inner_loop=1, n_data=16, decode_type="bound",
                                 batch_syn_max=5)),
    "haba": ("haba", 1, MTT),
    "haba-dm": ("haba", 2, dict(base="dm", width=8, batch_real=8, batch_con=4)),
    "haba-dc": ("haba", 2, dict(base="dc", width=8, batch_real=8, outer_loop=2, inner_loop=1, batch_con=4)),
    "rtp": ("rtp", 2, dict(RTP, num_bases=4, width=4, inner_steps=3, batch_syn=2, batch_real=4)),
    "rtp-reference": ("rtp", 2, dict(RTP, num_bases=4, width=4, inner_steps=3, batch_syn=2, batch_real=4,
                                     downsample=2, init="xavier"), "reference"),
    "kfs": ("kfs", 2, dict(width=8, batch_real=8, num_decoders=2, hidden_channels=4)),
    "kfs-div": ("kfs", 2, dict(width=8, batch_real=8, num_decoders=2, hidden_channels=4, div_weight=0.5)),
}
PRESET_GRID = dict(methods=("dc", "dsa", "dm", "idc", "kfs", "rtp", "mtt", "haba"),
                   datasets=("digits", "mnist", "fashion-mnist", "cifar10"), ipcs=(1, 2, 10, 50),
                   names=("paper", "quick"))


def machine() -> str:
    """What decides float rounding here: the CPU model and vector unit torch uses, and torch's version."""
    model = ""
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    return f"{model} / {torch.backends.cpu.get_cpu_capability()} / torch {torch.__version__}"


def _digest(t: torch.Tensor) -> list:
    t = t.detach().contiguous()
    return [str(t.dtype), list(t.shape), repr(float(t.double().sum())),
            hashlib.sha256(t.numpy().tobytes()).hexdigest()[:16]]


def _walk(obj, path=""):
    """``path -> digest`` for every tensor and ``path -> value`` for other leaves of a nested state."""
    out = {}
    if isinstance(obj, torch.Tensor):
        out[path] = _digest(obj)
    elif isinstance(obj, dict):
        for k, v in obj.items():
            out.update(_walk(v, f"{path}/{k}"))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            out.update(_walk(v, f"{path}[{i}]"))
    else:
        out[path] = obj if isinstance(obj, (int, str, bool, type(None))) else repr(obj)
    return out


def fingerprint(case: str) -> dict:
    method, ipc, kw, *backend = CASES[case]
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        t = make_distiller(method, data.load_dataset("digits"), ipc, "quick", seed=0,
                           backend=backend[0] if backend else "auto", **kw)
        t.run(2, progress=False)
        state = t.state_dict()
        state.pop("seconds")
        state["history"] = [{k: v for k, v in h.items() if k != "seconds"} for h in state["history"]]
        images, labels = t.training_set()
        return {"losses": [repr(h["loss"]) for h in t.history],
                "stored": {k: _digest(v) for k, v in t.synthetic_params().items()},
                "training_set": [_digest(images), _digest(labels)], "pixels": _digest(t.pixel_images()),
                "labels": _digest(t.labels), "storage": t.storage(), "eval_overrides": t.eval_overrides(),
                "state": _walk(state)}
    finally:
        torch.set_num_threads(n)


def presets() -> dict:
    g = PRESET_GRID
    return {f"{m}/{d}/{i}/{p}": preset(m, d, i, p)
            for m in g["methods"] for d in g["datasets"] for i in g["ipcs"] for p in g["names"]}


def _preset_digest(hp: dict) -> str:
    return hashlib.sha256(json.dumps(hp, sort_keys=True).encode()).hexdigest()[:16]


def _json(obj):
    return json.loads(json.dumps(obj))


@pytest.fixture(scope="module")
def golden():
    with open(FIXTURE) as f:
        return json.load(f)


def _approx(got, want, where: str) -> None:
    """``got == want`` except float values and tensor sums (to 1e-4 relative) and tensor hashes."""
    if isinstance(want, dict):
        assert sorted(got) == sorted(want), where
        for k in want:
            _approx(got[k], want[k], f"{where}/{k}")
    elif isinstance(want, list) and len(want) == 4 and isinstance(want[0], str) and want[0].startswith("torch."):
        assert got[:2] == want[:2], where  # dtype, shape
        assert float(got[2]) == pytest.approx(float(want[2]), rel=1e-4, abs=1e-6), where
    elif isinstance(want, list):
        assert len(got) == len(want), where
        for i, (g, w) in enumerate(zip(got, want)):
            _approx(g, w, f"{where}[{i}]")
    elif isinstance(want, float) or (isinstance(want, str) and _is_float(want)):
        assert float(got) == pytest.approx(float(want), rel=1e-4, abs=1e-6), where
    else:
        assert got == want, where


def _is_float(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return "." in s or "e" in s


@pytest.mark.parametrize("case", sorted(CASES))
def test_two_iterations_match_the_fingerprint(golden, case):
    got, want = _json(fingerprint(case)), golden["runs"][case]
    assert sorted(got["state"]) == sorted(want["state"])  # checkpoint keys
    if golden["machine"] != machine():
        _approx(got, want, case)
        return
    assert got["losses"] == want["losses"]
    assert got["stored"] == want["stored"]
    for k in want["state"]:
        assert got["state"][k] == want["state"][k], k
    assert got == want


def test_presets_unchanged(golden):
    got = presets()
    assert sorted(got) == sorted(golden["presets"])
    for k, v in golden["presets"].items():
        assert _preset_digest(got[k]) == v, f"{k}: {got[k]}"


if __name__ == "__main__":
    os.environ.setdefault("TRITON_INTERPRET", "1")
    out = {"runs": {c: fingerprint(c) for c in CASES}, "presets": {k: _preset_digest(v) for k, v in presets().items()},
           "machine": machine()}
    with open(FIXTURE, "w") as f:
        json.dump(out, f, indent=0, sort_keys=True)
    print(f"wrote {FIXTURE}")
