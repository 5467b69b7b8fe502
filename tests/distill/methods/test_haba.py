"""HaBa: decode against a naive per-hallucinator loop, storage accounting, SupCon, reference vs
fused backends, bases dm/dc, the evaluation's per-epoch sampling, resume."""
import pytest
import torch
import torch.nn.functional as F

from ddkernels.distill import runs
from ddkernels.distill.evaluate import get_protocol, train_network
from ddkernels.distill.experts import train_experts
from ddkernels.distill.methods import make_distiller, supcon_loss
from ddkernels.distill.methods.haba import bases_per_class
from ddkernels.nn.convnet import ConvNet
from tests.conftest import fused_backends

pytestmark = pytest.mark.usefixtures("single_thread")


def haba(digits, expert_dir, ipc=2, backend="auto", **kw):
    kw = {"width": 8, "max_start_epoch": 1, "expert_dir": expert_dir, "syn_steps": 2, "batch_real": 16, **kw}
    return make_distiller("haba", digits, ipc, "quick", backend=backend, seed=0, **kw)


def test_decode_equals_naive_loop(digits, expert_dir):
    d = haba(digits, expert_dir)
    with torch.no_grad():
        for p in d.bank.parameters():  # move off the identity-like init so every term matters
            p.add_(0.1 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
        x, y = d.decode_all()
        bank, hn, mid = d.bank, d.bank.num_hallucinators, d.bank.mid_channels
        up = F.interpolate(d.bases, scale_factor=2, mode="bilinear", align_corners=False)
        for b in range(len(d.bases)):
            for k in range(hn):
                enc = F.conv2d(up[b:b + 1], bank.enc_weight[k * mid:(k + 1) * mid], bank.enc_bias[k * mid:(k + 1) * mid])
                dec = F.conv_transpose2d(bank.scale[k] * enc + bank.shift[k], bank.dec_weight[k * mid:(k + 1) * mid],
                                         bank.dec_bias[k:k + 1])
                assert torch.allclose(x[b * hn + k], dec[0], atol=1e-5)
                assert y[b * hn + k] == d.labels[b] == b // d.n
        # HaBa's sampled mode (one hallucinator for a chunk) picks the same rows.
        idx = torch.tensor([3, 0, 7])
        assert torch.allclose(d.hallucinate(idx, 1), x[idx * hn + 1], atol=1e-5)
    images, labels = d.training_set()
    assert images.shape == (len(d.bases) * hn, 1, 8, 8) and torch.equal(labels, y)
    assert d.eval_overrides()["choose"] == hn


def test_storage_count(digits, expert_dir):
    # digits: 1×8×8 images, IPC 2 → 1,280 floats. Quick: 5 hallucinators with mid 1 on 6×6 features,
    # (9 + 1) + 2·36 + (9 + 1) = 92 floats each; bases at 4×4 (16 floats); one learned lr.
    d = haba(digits, expert_dir)
    hall = 5 * 92
    assert d.n == (1280 - hall - 1) // (10 * 16) == 5
    s = d.storage()
    assert s == {"stored_floats": 10 * 5 * 16 + hall + 1, "budget_floats": 1280, "ratio": round(1261 / 1280, 4)}
    assert s["stored_floats"] + 10 * 16 > 1280  # one more base per class would not fit
    params = d.synthetic_params()
    assert params["bases"].shape == (50, 1, 4, 4) and sum(p.numel() for p in params.values()) == s["stored_floats"]
    # The official accounting counts only the bases: IPC full-size bases per class.
    off = haba(digits, expert_dir, budget="bases", base_downsample=1, mid_channels=3)
    assert off.n == 2 and off.storage()["stored_floats"] == 10 * 2 * 64 + 5 * (30 + 2 * 108 + 28) + 1
    with pytest.raises(ValueError, match="not one 64-float base per class"):
        haba(digits, expert_dir, ipc=1, base_downsample=1, mid_channels=3)
    assert bases_per_class(dict(off.hp, bases_per_class=7), 10, 1, (1, 8, 8), 0) == 7


def test_supcon_equals_naive_loop():
    g = torch.Generator().manual_seed(0)
    feats = F.normalize(torch.randn(6, 2, 5, generator=g, dtype=torch.float64), dim=2)
    y = torch.tensor([0, 1, 0, 2, 1, 1])
    views = torch.cat([feats[:, 0], feats[:, 1]])
    labels = torch.cat([y, y])
    total = 0.0
    for a in range(12):
        others = [j for j in range(12) if j != a]
        denom = torch.logsumexp(torch.stack([views[a] @ views[j] / 0.07 for j in others]), 0)
        pos = [views[a] @ views[j] / 0.07 - denom for j in others if labels[j] == labels[a]]
        total = total - torch.stack(pos).mean()
    assert torch.allclose(supcon_loss(feats, y), total / 12)


@pytest.mark.parametrize("backend", fused_backends("scale_shift"))
@pytest.mark.parametrize("base", ["mtt", "dm"])
def test_reference_vs_fused(digits, expert_dir, base, backend):
    """Two iterations from one seed: the fused scale_shift reproduces the reference run."""
    runs_ = []
    for be in ("reference", backend):
        d = haba(digits, expert_dir, backend=be, base=base)
        d.run(2, progress=False)
        runs_.append(d)
    ref, fused = runs_
    assert torch.allclose(torch.tensor([h["loss"] for h in fused.history]),
                          torch.tensor([h["loss"] for h in ref.history]), rtol=1e-4)
    start = haba(digits, expert_dir, base=base).synthetic_params()
    for k, p in ref.synthetic_params().items():
        moved = (p - start[k]).abs().max()
        assert (fused.synthetic_params()[k] - p).abs().max() <= 1e-3 * max(float(moved.detach()), 1e-6), k
    assert (ref.bases - start["bases"]).abs().max() > 1e-4


def test_dc_base_and_product(digits, expert_dir):
    d = haba(digits, expert_dir, base="dc", product=True, outer_loop=2, inner_loop=1)
    before = {k: v.detach().clone() for k, v in d.synthetic_params().items()}
    d.run(1, progress=False)
    assert "syn_lr" not in before and d.eval_overrides() == {}
    assert all((d.synthetic_params()[k] - v).abs().max() > 0 for k, v in before.items())


def test_sampled_evaluation_draws_one_hallucination_per_base(digits, monkeypatch):
    # Rows 3b..3b+2 are three alternatives of example b; each epoch must see exactly one of them.
    seen = []
    net_forward = torch.nn.Module.__call__

    def spy(self, x):
        if isinstance(self, ConvNet):
            seen.append(x[:, 0, 0, 0].clone())
        return net_forward(self, x)

    x = torch.arange(12, dtype=torch.float32).view(12, 1, 1, 1).expand(12, 1, 8, 8).contiguous()
    proto = get_protocol("dsa", "quick", epochs=3, aug="", width=4, choose=3, batch=256)
    monkeypatch.setattr(torch.nn.Module, "__call__", spy)
    train_network(x, torch.arange(4).repeat_interleave(3), digits, proto, seed=0)
    monkeypatch.undo()
    for rows in seen:
        assert sorted((rows // 3).long().tolist()) == [0, 1, 2, 3]
    assert len({tuple(r.tolist()) for r in seen}) > 1  # the draw changes between epochs


def test_haba_run_resume_matches_uninterrupted(digits, expert_dir, tmp_path):
    kw = dict(overrides={"width": 8, "max_start_epoch": 1, "expert_dir": expert_dir, "syn_steps": 2, "batch_real": 16},
              evaluate_after=False, progress=False)
    runs.distill("haba", "digits", 2, str(tmp_path / "a"), iterations=3, **kw)
    runs.distill("haba", "digits", 2, str(tmp_path / "b"), iterations=2, **kw)
    runs.distill("haba", "digits", 2, str(tmp_path / "b"), iterations=3, resume=True, **kw)
    a, b = (torch.load(tmp_path / r / "synthetic.pt", weights_only=False) for r in "ab")
    assert {"bases", "hallucinator.scale", "syn_lr"} <= set(a["params"])
    for k in a["params"]:
        assert torch.equal(a["params"][k], b["params"][k]), k
    assert torch.equal(a["images"], b["images"]) and a["images"].shape[0] == 5 * len(a["params"]["bases"])
