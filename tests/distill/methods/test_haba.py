"""HaBa: decode against a naive per-hallucinator loop, storage accounting, SupCon, reference vs
fused backends, bases dm/dc, the evaluation's per-epoch sampling, resume; the base kinds (low-resolution,
latent and multi-formation bases: naive decode, storage, errors, float64 gradcheck, every objective,
resume)."""
import pytest
import torch
import torch.nn.functional as F

from ddkernels.distill import runs
from ddkernels.distill.evaluate import get_protocol, train_network
from ddkernels.distill.experts import train_experts
from ddkernels.distill.methods import make_distiller, supcon_loss
from ddkernels.distill import data
from ddkernels.distill.methods import haba as haba_mod
from ddkernels.distill.methods.haba import bases_per_class
from ddkernels.nn.convnet import ConvNet
from tests.conftest import fused_backends
from tests.distill.methods.test_kfs import _naive as naive_decode

pytestmark = pytest.mark.usefixtures("single_thread")


def haba(digits, expert_dir, ipc=2, backend="auto", **kw):
    kw = {"width": 8, "max_start_epoch": 1, "expert_dir": expert_dir, "syn_steps": 2, "batch_real": 16, **kw}
    return make_distiller("haba", digits, ipc, "quick", backend=backend, seed=0, **kw)


def perturb(*modules):
    """Move every parameter off its init (identity-like hallucinators, small residual decoder) so every term matters."""
    with torch.no_grad():
        for m in modules:
            for p in m.parameters():
                p.add_(0.1 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel()), dtype=p.dtype))


def naive_hallucination(bank, base, k):
    """Hallucinator ``k`` on one full-size ``base`` (C, H, W), written out (channel 1 only)."""
    mid = bank.mid_channels
    enc = F.conv2d(base[None], bank.enc_weight[k * mid:(k + 1) * mid], bank.enc_bias[k * mid:(k + 1) * mid])
    return F.conv_transpose2d(bank.scale[k] * enc + bank.shift[k], bank.dec_weight[k * mid:(k + 1) * mid],
                              bank.dec_bias[k:k + 1])[0]


def test_decode_equals_naive_loop(digits, expert_dir):
    d = haba(digits, expert_dir)
    with torch.no_grad():
        perturb(d.bank)
        x, y = d.decode_all()
        bank, hn = d.bank, d.bank.num_hallucinators
        up = F.interpolate(d.bases, scale_factor=2, mode="bilinear", align_corners=False)
        for b in range(len(d.bases)):
            for k in range(hn):
                assert torch.allclose(x[b * hn + k], naive_hallucination(bank, up[b], k), atol=1e-5)
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


@pytest.mark.parametrize("kind", [{}, {"base_kind": "latent"}, {"base_kind": "multi_formation"}], ids=str)
def test_haba_run_resume_matches_uninterrupted(digits, expert_dir, tmp_path, kind):
    kw = dict(overrides={"width": 8, "max_start_epoch": 1, "expert_dir": expert_dir, "syn_steps": 2, "batch_real": 16,
                         **kind}, evaluate_after=False, progress=False)
    runs.distill("haba", "digits", 2, str(tmp_path / "a"), iterations=3, **kw)
    runs.distill("haba", "digits", 2, str(tmp_path / "b"), iterations=2, **kw)
    runs.distill("haba", "digits", 2, str(tmp_path / "b"), iterations=3, resume=True, **kw)
    a, b = (torch.load(tmp_path / r / "synthetic.pt", weights_only=False) for r in "ab")
    assert {"bases", "hallucinator.scale", "syn_lr"} <= set(a["params"])
    assert ("decoder.up_weight" in a["params"]) == (kind.get("base_kind") == "latent")
    for k in a["params"]:
        assert torch.equal(a["params"][k], b["params"][k]), k
    per_row = 4 if kind.get("base_kind") == "multi_formation" else 1  # the quick factor 2: 4 tiles a stored image
    assert torch.equal(a["images"], b["images"]) and a["images"].shape[0] == 5 * per_row * len(a["params"]["bases"])


# -- base kinds (issue 20) -------------------------------------------------------------------------
KINDS = {  # digits (1×8×8), IPC 2 under MTT quick: 1,280 floats, 5 hallucinators (460 floats), 1 learned lr
    "quarter": dict(base_downsample=4),
    "latent": dict(base_kind="latent"),
    "latent-full": dict(base_kind="latent", base_downsample=1),
    "mf": dict(base_kind="multi_formation", base_downsample=1),
    "mf-half": dict(base_kind="multi_formation"),
    "mf-4": dict(base_kind="multi_formation", base_downsample=1, factor=4),
}


def naive_base(d, b):
    """Base ``b`` at the image size, written out per kind from the stored tensors."""
    kind, s, size = d.hp["base_kind"], d.hp["base_downsample"], d.ds.im_size
    if kind == "images":
        return F.interpolate(d.bases[b:b + 1], scale_factor=s, mode="bilinear", align_corners=False)[0]
    if kind == "latent":  # KFS's decoder written out (test_kfs), its one decoder on code b
        return naive_decode(d.decoder, d.bases[b:b + 1])[0]
    f = d.hp["factor"]
    r, k = divmod(b, f * f)  # stored image r, tile k in row-major tile order
    i, j = divmod(k, f)
    th, tw = d.bases.shape[2] // f, d.bases.shape[3] // f
    tile = d.bases[r:r + 1, :, i * th:(i + 1) * th, j * tw:(j + 1) * tw]
    return F.interpolate(tile, size=size, mode="bilinear", align_corners=False)[0]


@pytest.mark.parametrize("kind", KINDS)
def test_base_kinds_decode_equal_naive_loop(digits, expert_dir, kind):
    d = haba(digits, expert_dir, **KINDS[kind])
    hn = d.bank.num_hallucinators
    with torch.no_grad():
        perturb(d.bank, *([d.decoder] if d.decoder is not None else []))
        x, y = d.decode_all()
        assert len(x) == d.num_bases() * hn == 10 * d.n * hn
        for b in range(d.num_bases()):  # per base, per hallucinator
            base = naive_base(d, b)
            for k in range(hn):
                assert torch.allclose(x[b * hn + k], naive_hallucination(d.bank, base, k), atol=1e-5)
                assert y[b * hn + k] == b // d.n
        # The sampled mode decodes only the bases it is given (for multi-formation: any tiles of any rows).
        idx = torch.tensor([d.num_bases() - 1, 0, 5, 3, 2 * d.n + 1])
        assert torch.allclose(d.hallucinate(idx, 1), x[idx * hn + 1], atol=1e-5)
    assert torch.equal(d.labels, torch.arange(10).repeat_interleave(d.rows_per_class()))
    assert d.pixel_images().shape == (len(d.bases), 1, 8, 8)


@pytest.mark.parametrize("kind, n, stored, row", [
    ("quarter", 20, 10 * 20 * 4 + 461, 10 * 4),
    ("latent", 3, 10 * 3 * 16 + 460 + 209 + 1, 10 * 16),  # decoder: 1·8·4·4 + 8 + 8·9 + 1 = 209 floats
    ("mf", 4, 10 * 64 + 461, 10 * 64),  # one stored 8×8 image a class: 4 bases of 4×4
    ("mf-half", 20, 10 * 5 * 16 + 461, 10 * 16),  # five stored 4×4 images a class: 20 bases of 2×2
    ("mf-4", 16, 10 * 64 + 461, 10 * 64)])
def test_base_kinds_storage_count(digits, expert_dir, kind, n, stored, row):
    d = haba(digits, expert_dir, **KINDS[kind])
    assert d.n == n and d.num_bases() == 10 * n
    s = d.storage()
    assert s["stored_floats"] == stored == sum(p.numel() for p in d.synthetic_params().values())
    assert s["budget_floats"] == 1280 and stored + row > 1280  # one more stored row per class would not fit


def test_quarter_resolution_end_to_end_at_28x28(digits):
    """base_downsample 4 on 28×28 images (digits resized, Fashion-MNIST's size): 7×7 bases, every pixel
    of the IPC-1 budget counted, one DM iteration moves them, the product decodes at 28×28."""
    up = lambda x: F.interpolate(x, size=(28, 28), mode="bilinear", align_corners=False).clamp(0, 1)
    ds = data.Dataset("digits", up(digits.train_x), digits.train_y, up(digits.test_x), digits.test_y,
                      digits.num_classes, digits.mean, digits.std, digits.classes)
    d = make_distiller("haba", ds, 1, "quick", seed=0, base="dm", base_downsample=4, width=8, batch_real=8,
                       batch_con=4)
    # 2 hallucinators with mid 1 on 26×26 features: (9 + 1) + 2·676 + (9 + 1) = 1,372 floats each.
    assert d.bases.shape == (100, 1, 7, 7) and d.n == (7840 - 2 * 1372) // (10 * 49) == 10
    assert d.storage()["stored_floats"] == 100 * 49 + 2 * 1372 <= 7840
    before = d.bases.detach().clone()
    d.run(1, progress=False)
    assert (d.bases - before).abs().max() > 0
    x, y = d.training_set()
    assert x.shape == (200, 1, 28, 28) and torch.equal(y, torch.arange(10).repeat_interleave(20))


def test_base_kind_errors(digits, expert_dir, monkeypatch):
    """Bad hyperparameters fail, naming the hp, before anything is built; over-budget sizes name what to change."""
    def built(*a, **k):
        raise AssertionError("the hallucinators were built before the hyperparameters were checked")

    with monkeypatch.context() as m:
        m.setattr(haba_mod, "HallucinatorBank", built)
        with pytest.raises(ValueError, match=r"base_kind must be one of \('images', 'latent', 'multi_formation'\), got 'code'"):
            haba(digits, expert_dir, base_kind="code")
        with pytest.raises(ValueError, match="factor must be a positive int dividing the stored image size 8x8"):
            haba(digits, expert_dir, base_kind="multi_formation", base_downsample=1, factor=3)
        with pytest.raises(ValueError, match="factor must .* stored image size 2x2 .*base_downsample 4.*got 4"):
            haba(digits, expert_dir, base_kind="multi_formation", base_downsample=4, factor=4)
        with pytest.raises(ValueError, match="latent_hidden must be a positive int, got 0"):
            haba(digits, expert_dir, base_kind="latent", latent_hidden=0)
    # IPC 1 (640 floats; quick: 2 hallucinators, 184 floats) and a full-size decoder (1·8·3·3 + 8 + 8·9 + 1 =
    # 153 floats) leave 302 floats, not one 64-float code for each of 10 classes.
    with pytest.raises(ValueError, match="337 hallucinator \\+ decoder floats .* lower hallucinators/mid_channels/latent_hidden"):
        haba(digits, expert_dir, ipc=1, base_kind="latent", base_downsample=1)
    with pytest.raises(ValueError, match="bases_per_class=21 does not fit budget 'total' at IPC 2 .* room for 20"):
        haba(digits, expert_dir, bases_per_class=21, base_downsample=4)
    with pytest.raises(ValueError, match=r"bases_per_class must be a positive multiple of factor² = 4"):
        haba(digits, expert_dir, base_kind="multi_formation", bases_per_class=6)
    assert haba(digits, expert_dir, base_kind="multi_formation", bases_per_class=8).bases.shape == (20, 1, 4, 4)


@pytest.mark.parametrize("kind", ["latent", "mf-half"])
def test_base_kinds_gradcheck(digits, kind):
    """float64: the decoded product's gradient w.r.t. the stored tensors (codes and decoder, or stored
    multi-formation images) and a hallucinator parameter, against finite differences."""
    d = make_distiller("haba", digits, 2, "quick", seed=0, base="dm", width=8, batch_real=8, hallucinators=2,
                       **dict(KINDS[kind], bases_per_class=4 if kind == "mf-half" else 1))
    p = d.param
    p.bases = p.bases.detach().double().requires_grad_(True)
    p.bank.double()
    inputs = [p.bases, p.bank.enc_weight]
    if p.decoder is not None:
        p.decoder.double()
        perturb(p.decoder)
        inputs += [v for _, v in haba_mod._stored(p.decoder)]
    perturb(p.bank)
    # gradcheck perturbs the inputs in place, so the decode reads them from the modules themselves.
    assert torch.autograd.gradcheck(lambda *_: p.decode_all()[0], inputs, eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("base", ["mtt", "dm", "dc"])
@pytest.mark.parametrize("kind", ["latent", "mf-half"])
def test_base_kinds_train_under_every_objective(digits, expert_dir, base, kind):
    extra = dict(outer_loop=2, inner_loop=1) if base == "dc" else {}
    d = haba(digits, expert_dir, base=base, **KINDS[kind], **extra)
    before = {k: v.detach().clone() for k, v in d.synthetic_params().items()}
    assert any(k.startswith("decoder.") for k in before) == (kind == "latent")
    d.run(1, progress=False)
    for k, v in before.items():  # the meta-gradient reaches every stored tensor
        assert (d.synthetic_params()[k] - v).abs().max() > 0, k
