"""Expert trajectories (format, resume) and the MTT trainer (loss against a direct unroll, resume)."""
import json
import os

import pytest
import torch
import torch.nn.functional as F

from ddkernels.distill import experts, runs
from ddkernels.distill.experts import ExpertBuffer, train_experts, unflatten
from ddkernels.distill.methods import make_distiller, trajectory_matching_loss
from ddkernels.nn.convnet import ConvNet

pytestmark = pytest.mark.usefixtures("single_thread")

EXPERT_KW = dict(width=8, images_per_epoch=128, batch=128)  # as conftest.expert_dir


def mtt(digits, expert_dir, **kw):
    kw = {"width": 8, "max_start_epoch": 1, "expert_dir": expert_dir, "syn_steps": 3, **kw}
    return make_distiller("mtt", digits, 2, "quick", seed=0, **kw)


def test_expert_files(expert_dir, digits):
    names = sorted(f for f in os.listdir(expert_dir) if not f.startswith("config"))
    assert names == ["expert_000.pt", "expert_001.pt"]  # no partial.pt left behind
    e = torch.load(os.path.join(expert_dir, "expert_000.pt"), weights_only=False)
    net = ConvNet(1, 10, width=8, im_size=(8, 8))
    assert e["names"] == [k for k, _ in net.named_parameters()]
    assert [tuple(s) for s in e["shapes"]] == [tuple(p.shape) for p in net.parameters()]
    traj = e["trajectory"]
    assert len(traj) == 4 and all(v.shape == (sum(p.numel() for p in net.parameters()),) for v in traj)
    assert all((a - b).abs().max() > 0 for a, b in zip(traj, traj[1:]))  # every epoch moved the weights
    # unflatten inverts the flat layout: the last vector reloads into a network that reproduces it.
    net.load_state_dict(unflatten(traj[-1], e["names"], e["shapes"]))
    assert torch.equal(experts.flatten(net), traj[-1])
    assert 0 <= e["test_accuracy"] <= 100
    with open(os.path.join(expert_dir, "config.json")) as f:
        assert json.load(f)["num_experts"] == 2


def test_experts_resume_after_kill(expert_dir, tmp_path, monkeypatch):
    out = str(tmp_path / "killed")
    saves = []
    real_save = experts._atomic_save

    def dying_save(obj, path):
        real_save(obj, path)
        saves.append(path)
        if len(saves) == 5:  # expert 0: 3 partials + its file; expert 1: one partial, then killed
            raise KeyboardInterrupt

    monkeypatch.setattr(experts, "_atomic_save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        train_experts("digits", out, num_experts=2, epochs=3, progress=False, **EXPERT_KW)
    monkeypatch.setattr(experts, "_atomic_save", real_save)
    assert os.path.exists(os.path.join(out, experts.PARTIAL))
    train_experts("digits", out, num_experts=2, epochs=3, progress=False, **EXPERT_KW)
    for i in range(2):
        a = torch.load(os.path.join(out, f"expert_00{i}.pt"), weights_only=False)["trajectory"]
        b = torch.load(os.path.join(expert_dir, f"expert_00{i}.pt"), weights_only=False)["trajectory"]
        assert all(torch.equal(x, y) for x, y in zip(a, b))
    with pytest.raises(ValueError, match="other settings.*width"):
        train_experts("digits", out, num_experts=2, epochs=3, progress=False, **dict(EXPERT_KW, width=16))


def test_expert_errors(digits, expert_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="holds no expert_"):
        ExpertBuffer(str(tmp_path), dataset="digits", width=8, min_epochs=1)
    with pytest.raises(FileNotFoundError, match="set hp expert_dir"):
        ExpertBuffer(None, dataset="digits", width=8, min_epochs=1)
    with pytest.raises(ValueError, match="needs width 16"):
        mtt(digits, expert_dir, width=16)
    with pytest.raises(ValueError, match="has 3 epochs; this run needs"):
        mtt(digits, expert_dir, max_start_epoch=3)
    with pytest.raises(ValueError, match="trained with zca=None, this run has zca=0.1"):
        mtt(digits, expert_dir, zca=True)


def test_mtt_with_zca_uses_whitened_experts(digits, tmp_path):
    from ddkernels.distill.experts import train_experts

    out = str(tmp_path / "zca-experts")
    train_experts("digits", out, num_experts=1, epochs=3, width=8, images_per_epoch=64, batch=64, zca=True,
                  progress=False)
    assert torch.load(os.path.join(out, "expert_000.pt"), weights_only=False)["zca"] == 0.1
    d = mtt(digits, out, zca=True)
    assert d.ds.zca is not None  # real and synthetic images live in the experts' whitened space
    d.run(1, progress=False)
    assert torch.isfinite(d.syn).all()


def _direct_unroll(d, start, lr, steps, gen):
    """The student unroll with an ordinary module: load θ, backward, θ ← θ − lr·∇θ (no graph)."""
    net = ConvNet(1, 10, width=8, im_size=(8, 8)).to(start.dtype)
    theta = start.clone()
    for _ in range(steps):
        idx = torch.randperm(len(d.syn), generator=gen)  # batch_syn null: one chunk of every image
        net.load_state_dict(unflatten(theta, d.experts.names, d.experts.shapes))
        net.zero_grad()
        F.cross_entropy(net(d.syn.detach()[idx]), d.labels[idx]).backward()
        theta = theta - lr * torch.cat([p.grad.reshape(-1) for p in net.parameters()])
    return theta


def test_mtt_loss_equals_direct_unroll(digits, expert_dir):
    d = mtt(digits, expert_dir, aug="", max_start_epoch=2, expert_epochs=1)
    state = d.gen.get_state()
    loss = d.trajectory_loss()
    gen = torch.Generator()
    gen.set_state(state)
    traj = d.experts.trajectories[int(torch.randint(2, (1,), generator=gen))]
    t = int(torch.randint(2, (1,), generator=gen))
    student = _direct_unroll(d, traj[t], float(d.syn_lr.detach()), 3, gen)
    want = ((student - traj[t + 1]) ** 2).sum() / ((traj[t] - traj[t + 1]) ** 2).sum()
    assert torch.allclose(loss, want, rtol=1e-5)
    assert torch.equal(trajectory_matching_loss(traj[2], traj[0], traj[1]),
                       ((traj[2] - traj[1]) ** 2).sum() / ((traj[0] - traj[1]) ** 2).sum())


def test_mtt_lr_gradient_matches_finite_difference(digits, expert_dir):
    # In float64 the meta-gradient through the create_graph unroll equals a central difference.
    d = mtt(digits, expert_dir, aug="", syn_steps=2)
    d.experts.trajectories = [t.double() for t in d.experts.trajectories]
    d.student.double()
    d.syn = d.syn.detach().double().requires_grad_(True)
    d.syn_lr = torch.tensor(0.05, dtype=torch.float64, requires_grad=True)
    state = d.gen.get_state()

    def loss_at(lr):
        d.gen.set_state(state)
        d.syn_lr = torch.tensor(lr, dtype=torch.float64, requires_grad=True)
        return d.trajectory_loss()

    loss = loss_at(0.05)
    g_lr, g_syn = torch.autograd.grad(loss, [d.syn_lr, d.syn])
    h = 1e-5
    fd = (loss_at(0.05 + h) - loss_at(0.05 - h)) / (2 * h)
    assert torch.allclose(g_lr, fd.detach(), rtol=1e-5)
    assert g_syn.abs().max() > 0


def test_mtt_run_resume_matches_uninterrupted(digits, expert_dir, tmp_path):
    kw = dict(overrides={"width": 8, "max_start_epoch": 1, "expert_dir": expert_dir, "syn_steps": 2},
              evaluate_after=False, progress=False)
    runs.distill("mtt", "digits", 2, str(tmp_path / "a"), iterations=3, **kw)
    runs.distill("mtt", "digits", 2, str(tmp_path / "b"), iterations=2, **kw)
    runs.distill("mtt", "digits", 2, str(tmp_path / "b"), iterations=3, resume=True, **kw)
    a, b = (torch.load(tmp_path / r / "synthetic.pt", weights_only=False) for r in "ab")
    assert set(a["params"]) == {"syn", "syn_lr"}
    for k in a["params"]:
        assert torch.equal(a["params"][k], b["params"][k])
    assert a["eval_overrides"] == {"lr": float(a["params"]["syn_lr"])}


def test_experts_cli(tmp_path, capsys):
    from ddkernels.distill.cli import main

    out = str(tmp_path / "e")
    args = ["experts", "--dataset", "digits", "--out", out, "--num-experts", "1", "--epochs", "1",
            "--set", "width=4", "--set", "images_per_epoch=64"]
    assert main(args) == 0
    assert os.path.isfile(os.path.join(out, "expert_000.pt"))
    assert main(args[:-2] + ["--set", "widht=4"]) == 2
    assert "unknown expert setting(s) ['widht']" in capsys.readouterr().err
