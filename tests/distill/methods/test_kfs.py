"""KFS: LatentDecoderBank (shapes, decode vs a naive loop, storage) and the trainer (digits)."""
import os

import pytest
import torch
import torch.nn.functional as F

from ddkernels.distill import runs
from ddkernels.nn.latent import codes_for_budget, decoder_floats
from ddkernels.distill.methods import make_distiller
from ddkernels.nn import LatentDecoderBank
from tests.conftest import fused_backends

pytestmark = pytest.mark.usefixtures("single_thread")

# Digits are 8×8: budget IPC 2 = 1280 floats holds 2 decoders of hidden 4 (210 floats) and 6 codes of
# 4×4 per class (960 floats); codes_per_class=None fills the budget (quick caps it at 2·IPC above IPC 1).
TINY = dict(width=8, batch_real=8, num_decoders=2, hidden_channels=4, codes_per_class=None)
BACKENDS = ["reference", *fused_backends("small_conv")]


def _bank(backend="auto", dtype=torch.float64, **kw):
    args = dict(num_classes=3, codes_per_class=2, num_decoders=4, out_channels=2, image_size=(8, 12), hidden_channels=5)
    args.update(kw)
    bank = LatentDecoderBank(**args, backend=backend, dtype=dtype)
    with torch.no_grad():
        for p in bank.parameters():  # larger than the init so the residual branch matters in the comparison
            p.normal_()
    return bank


def _naive(bank, codes):
    """Decoder k on code n, one at a time, in the image's (n·K + k) order."""
    hid, out, s = bank.hidden_channels, bank.out_channels, bank.scale
    rows = []
    for z in codes.split(1):
        for k in range(bank.num_decoders):
            h = F.conv_transpose2d(z, bank.up_weight[:, k * hid:(k + 1) * hid], bank.up_bias[k * hid:(k + 1) * hid],
                                   stride=s, padding=bank.up_padding)
            y = F.conv2d(F.leaky_relu(h, 0.2), bank.out_weight[k * out:(k + 1) * out],
                         bank.out_bias[k * out:(k + 1) * out], padding=bank.kernel_size // 2)
            if bank.residual:
                y = y + F.interpolate(z, size=bank.image_size, mode="bilinear", align_corners=False)
            rows.append(y)
    return torch.cat(rows)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kw", [{}, dict(scale=4, image_size=(8, 16), kernel_size=5),
                                dict(residual=False, code_channels=3, scale=1)], ids=["s2", "s4-k5", "plain-s1"])
def test_decode_equals_naive_loop(backend, kw):
    bank = _bank(backend, **kw)
    got = bank()
    n = bank.num_classes * bank.codes_per_class
    h, w = bank.image_size
    assert got.shape == (n * bank.num_decoders, bank.out_channels, h, w)
    assert bank.codes.shape == (n, bank.code_channels, h // bank.scale, w // bank.scale)
    want = _naive(bank, bank.codes)
    torch.testing.assert_close(got, want)
    # The backward sums over decoders for each code and over codes for each decoder's weights.
    g = torch.randn_like(got)
    params = list(bank.parameters())
    for a, b in zip(torch.autograd.grad(got, params, g), torch.autograd.grad(want, params, g)):
        torch.testing.assert_close(a, b)


def test_decoders_alone():
    """codes_per_class=0: the decoders without codes of their own (HaBa's latent bases store them),
    decoding the caller's codes; only the decoders are stored."""
    bank = _bank(codes_per_class=0)
    assert bank.codes.shape == (0, 2, 4, 6) and bank().shape == (0, 2, 8, 12)
    assert bank.stored_floats() == decoder_floats(4, 2, 5, 2, 2, 3)
    codes = torch.randn(3, 2, 4, 6, dtype=torch.float64)
    torch.testing.assert_close(bank.decode(codes), _naive(bank, codes))
    with pytest.raises(ValueError, match="codes_per_class must be"):
        _bank(codes_per_class=-1)


def test_labels_are_class_major():
    bank = _bank(dtype=None)
    assert bank.code_labels().tolist() == [0, 0, 1, 1, 2, 2]
    assert bank.targets().tolist() == [c for c in range(3) for _ in range(2 * 4)]
    # A subset of codes decodes to the matching rows of the whole product.
    torch.testing.assert_close(bank.decode(bank.codes[2:4]), bank()[8:16])


def test_storage_count_and_budget():
    bank = _bank(dtype=None)
    assert bank.stored_floats() == sum(p.numel() for p in bank.parameters())
    assert bank.stored_floats() == 6 * 2 * 4 * 6 + decoder_floats(4, 2, 5, 2, 2, 3)
    # 28×28 gray, 10 classes, 4 decoders of hidden 8: 209 floats each (1·8·4·4 + 8 + 8·9 + 1).
    assert decoder_floats(4, 1, 8, 1, 2, 3) == 4 * 209
    m = codes_for_budget(7840, 10, 4, 1, 8, 1, (28, 28), 2, 3)
    assert m == 3 and 10 * m * 196 + 836 <= 7840 < 10 * (m + 1) * 196 + 836


def test_bank_errors():
    with pytest.raises(ValueError, match="kernel_size must be odd"):
        _bank(kernel_size=4)
    with pytest.raises(ValueError, match="multiple of scale=3"):
        _bank(scale=3)
    with pytest.raises(ValueError, match="code_channels .3. must equal out_channels .2."):
        _bank(code_channels=3)
    with pytest.raises(ValueError, match=r"codes must be \(N, 2, 4, 6\)"):
        _bank().decode(torch.zeros(1, 2, 4, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match="num_decoders must be in"):
        _bank(num_decoders=0)


def test_trainer_storage_and_training_set(digits):
    d = make_distiller("kfs", digits, 2, "quick", seed=0, **TINY)
    assert d.bank.codes_per_class == 6
    s = d.storage()
    assert s == {"stored_floats": 960 + 210, "budget_floats": 1280, "ratio": round(1170 / 1280, 4)}
    assert set(d.synthetic_params()) == {"codes", "up_weight", "up_bias", "out_weight", "out_bias"}
    images, labels = d.training_set()
    assert images.shape == (120, 1, 8, 8) and torch.equal(labels, torch.arange(10).repeat_interleave(12))
    assert d.pixel_images().shape == (60, 1, 8, 8) and d.labels.shape == (60,)
    # Real init: every code is an average-pooled real image of its class.
    pooled = F.avg_pool2d(digits.normalize(digits.train_x), 2)
    for i in (0, 59):
        hits = (pooled - d.bank.codes[i].detach()).abs().flatten(1).amax(1) < 1e-6
        assert hits.any() and all(int(digits.train_y[j]) == i // 6 for j in hits.nonzero().flatten())
    with pytest.raises(ValueError, match="codes_per_class=7 does not fit the budget of ipc=2"):
        make_distiller("kfs", digits, 2, "quick", **dict(TINY, codes_per_class=7))
    with pytest.raises(ValueError, match="ipc=1: no code fits beside 8 decoders"):
        make_distiller("kfs", digits, 1, "quick", **dict(TINY, num_decoders=8))


@pytest.mark.parametrize("backend", fused_backends("small_conv"))
def test_convergence_reference_vs_fused(digits, backend):
    """A few steps from one seed (with the discrimination term on): the fused decode reproduces the
    reference run's losses and stored parameters up to float32 rounding."""
    kw = dict(TINY, div_weight=0.1)
    runs_ = {}
    for b in ("reference", backend):
        runs_[b] = make_distiller("kfs", digits, 2, "quick", backend=b, seed=0, **kw)
        runs_[b].run(3, progress=False)
    ref, fused = runs_["reference"], runs_[backend]
    torch.testing.assert_close(torch.tensor([h["loss"] for h in fused.history]),
                               torch.tensor([h["loss"] for h in ref.history]), rtol=1e-4, atol=0)
    start = make_distiller("kfs", digits, 2, "quick", seed=0, **kw).synthetic_params()
    for name, p in ref.synthetic_params().items():
        moved = (p - start[name]).abs().max()
        assert moved > 1e-4, name
        assert (fused.synthetic_params()[name] - p).abs().max() <= 0.01 * moved, name


def test_discrimination_term(digits):
    d = make_distiller("kfs", digits, 2, "quick", seed=0, **TINY)
    real_mean = torch.eye(3, 4)
    feat = torch.eye(3, 4).repeat_interleave(2, 0).view(3, 2, 4)  # every feature on its class mean
    good = d.discrimination(real_mean, feat)
    bad = d.discrimination(real_mean, feat.roll(1, 0))
    want = F.cross_entropy(torch.eye(3).repeat_interleave(2, 0) / d.hp["div_temp"], torch.arange(3).repeat_interleave(2))
    torch.testing.assert_close(good, want)
    assert bad > good


def _distill(out, iterations, resume=False):
    return runs.distill("kfs", "digits", 2, str(out), iterations=iterations, resume=resume, overrides=TINY,
                        evaluate_after=False, progress=False)


def test_resume_reaches_the_uninterrupted_result(tmp_path):
    _distill(tmp_path / "straight", 3)
    _distill(tmp_path / "split", 1)
    os.remove(tmp_path / "split" / "synthetic.pt")
    _distill(tmp_path / "split", 3, resume=True)
    a = torch.load(tmp_path / "straight" / "checkpoint.pt", weights_only=False)["trainer"]
    b = torch.load(tmp_path / "split" / "checkpoint.pt", weights_only=False)["trainer"]
    assert a["iteration"] == b["iteration"] == 3
    assert all(torch.equal(a["params"][k], b["params"][k]) for k in a["params"])
    assert [h["loss"] for h in a["history"]] == [h["loss"] for h in b["history"]]
    sa = torch.load(tmp_path / "straight" / "synthetic.pt", weights_only=False)
    sb = torch.load(tmp_path / "split" / "synthetic.pt", weights_only=False)
    assert torch.equal(sa["images"], sb["images"]) and torch.equal(sa["image_labels"], sb["image_labels"])
    assert set(sa["params"]) == {"codes", "up_weight", "up_bias", "out_weight", "out_bias"}
    assert sa["storage"]["stored_floats"] == 1170 and sa["images"].shape == (120, 1, 8, 8)
    assert os.path.isfile(tmp_path / "straight" / "decoded.png")


def test_presets():
    from ddkernels.distill.methods import preset

    q1, q10 = preset("kfs", "fashion-mnist", 1, "quick"), preset("kfs", "fashion-mnist", 10, "quick")
    assert (q1["num_decoders"], q1["codes_per_class"], q1["iterations"]) == (4, None, 200)
    assert (q10["num_decoders"], q10["codes_per_class"], q10["iterations"]) == (2, 20, 100)
    p = preset("kfs", "cifar10", 10, "paper")
    assert (p["iterations"], p["batch_real"], p["width"], p["div_weight"], p["eval_epochs"]) == (20000, 256, 128, 0.0, 1000)


def test_class_parallel_refuses_the_cross_class_term(digits):
    from ddkernels.distill.distributed import Shard

    with pytest.raises(ValueError, match="div_weight > 0 compares each image with every class"):
        make_distiller("kfs", digits, 2, "quick", shard=Shard.of(10, 2, 0), **dict(TINY, div_weight=0.1))
