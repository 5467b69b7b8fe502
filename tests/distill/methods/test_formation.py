"""IDC's formation option (issue 20): multiscale and learned multi-formation decode against a naive
loop, their storage, their gradients, every objective, and bad input refused before any work."""
import pytest
import torch
import torch.nn.functional as F

from ddkernels.distill.methods import (DistributionMatching, MultiFormation, RealNetGradientMatching,
                                       TrajectoryMatching, make_distiller, preset)
from ddkernels.distill.methods.idc import multiscale_windows
from ddkernels.distill.methods.presets import DSA_STRATEGY
from ddkernels.ops.affine_crop import crop_grid
from tests.distill.methods.test_compose import _resumes_exactly

pytestmark = pytest.mark.usefixtures("single_thread")
SMALL = dict(width=8, batch_real=8, inner_loop=1, n_data=16)


def _idc(digits, ipc, **over):
    return make_distiller("idc", digits, ipc, "quick", seed=0, **{**SMALL, **over})


def _naive_decode(stored, windows, size):
    """Per stored image and integer window: pad with 0.5, cut the window, resize (IDC's tile decode)."""
    out = []
    for top, left, h, w in windows.to(torch.int64).tolist():
        padded = F.pad(stored, (0, max(0, left + w - stored.shape[-1]), 0, max(0, top + h - stored.shape[-2])), value=0.5)
        out.append(F.interpolate(padded[:, :, top:top + h, left:left + w], size=size, mode="bilinear",
                                 align_corners=False))
    return torch.cat(out)  # tile-major, like the parameterization's decode


def test_multiscale_windows_tile_the_image_once():
    win = multiscale_windows(28, 28, [2, 4])
    assert win.tolist()[:3] == [[0, 0, 14, 14], [0, 14, 7, 7], [0, 21, 7, 7]] and len(win) == 10
    assert (win[:, 2:] == 14).all(dim=1).sum() == 2 and (win[:, 2:] == 7).all(dim=1).sum() == 8
    cover = torch.zeros(28, 28)
    for top, left, h, w in win.to(torch.int64).tolist():
        cover[top:top + h, left:left + w] += 1
    assert (cover == 1).all()
    assert len(multiscale_windows(32, 32, [2, 6])) == 2 + 2 * 9 and len(multiscale_windows(30, 30, [3, 6])) == 5 + 4 * 4


@pytest.mark.parametrize("formation", ["multiscale", "learned"])
def test_decode_matches_a_naive_loop(digits, formation):
    t = _idc(digits, 2, formation=formation)
    x, y = t.training_set()
    windows = multiscale_windows(8, 8, [2, 4]) if formation == "multiscale" else crop_grid(8, 8, 2)[0]
    naive = _naive_decode(t.param.pixel_images(), windows, (8, 8))
    assert torch.allclose(x, digits.normalize(naive), atol=1e-6)
    assert y.tolist() == t.labels.tolist() * len(windows)
    assert t.param.num_slots() == len(x) == 20 * len(windows)


def test_learned_starts_at_the_fixed_decode(digits):
    fixed, learned = _idc(digits, 1), _idc(digits, 1, formation="learned")
    assert torch.equal(fixed.param.syn, learned.param.syn)
    for a, b in zip(fixed.training_set(), learned.training_set()):
        assert torch.allclose(a.float(), b.float(), atol=1e-6)


def test_learned_windows_decode_with_their_offsets(digits):
    """Moved windows: the decode is the naive loop over the new windows (half-pixel shifts included)."""
    t = _idc(digits, 1, formation="learned")
    with torch.no_grad():
        t.param.crop[:, :, :2] += 1.0  # every window one pixel down and right (integer: naive-loop exact)
    x, _ = t.training_set()
    naive = []
    for img, win in zip(t.param.pixel_images(), t.param.crop.detach()):
        naive.append(_naive_decode(img[None], win, (8, 8)).unsqueeze(1))
    naive = torch.cat(naive, 1).flatten(0, 1)  # (tiles, images) -> tile-major
    assert torch.allclose(x, digits.normalize(naive), atol=1e-6)


def test_storage_counts(digits):
    fixed = _idc(digits, 2).storage()
    multi = _idc(digits, 2, formation="multiscale").storage()
    learned = _idc(digits, 2, formation="learned")
    assert fixed == multi == {"stored_floats": 10 * 2 * 64, "budget_floats": 10 * 2 * 64, "ratio": 1.0}
    # 4 floats (top, left, height, width) per tile: 2×2 tiles per stored image
    assert learned.storage()["stored_floats"] == 10 * 2 * 64 + 10 * 2 * 4 * 4
    assert set(learned.synthetic_params()) == {"syn", "crop"}


@pytest.mark.parametrize("formation", ["multiscale", "learned"])
def test_steps_reach_the_stored_tensors_and_resume(digits, formation):
    """IDC's objective: an outer iteration moves the images (and the windows), a checkpoint resumes exactly."""
    hp = dict(preset("idc", "digits", 1, "quick"), formation=formation, **SMALL)
    t = _resumes_exactly(digits, hp, parameterization=MultiFormation, objective=RealNetGradientMatching)
    if formation == "learned":
        moved = (t.param.crop.detach() - crop_grid(8, 8, 2, 10)).abs()
        assert moved.max() > 0 and torch.isfinite(moved).all()


def test_window_gradients_match_finite_differences(digits):
    """The meta-gradient reaching the windows is the derivative of the decoded set."""
    t = _idc(digits, 1, formation="learned")
    crop = t.param.crop.detach().double() + 0.3
    syn = t.param.syn.detach().double()
    probe = torch.randn(40, 1, 8, 8, dtype=torch.float64)

    def f(c):
        return (t.param.decoded_set(syn, c)[0] * probe).sum()

    c = crop.clone().requires_grad_()
    (g,) = torch.autograd.grad(f(c), c)
    e = torch.zeros_like(crop)
    e[3, 1, 2] = 1e-6
    assert abs((f(crop + e) - f(crop - e)).item() / 2e-6 - g[3, 1, 2].item()) < 1e-5


@pytest.mark.parametrize("formation", ["multiscale", "learned"])
def test_under_distribution_matching(digits, formation):
    hp = dict(preset("idc", "digits", 1, "quick"), aug=DSA_STRATEGY, width=8, batch_real=8, lr_img=0.1,
              formation=formation)
    t = _resumes_exactly(digits, hp, parameterization=MultiFormation, objective=DistributionMatching)
    assert len(t.training_set()[0]) == 10 * (10 if formation == "multiscale" else 4)


def test_learned_under_trajectory_matching(digits, expert_dir):
    hp = dict(preset("mtt", "digits", 1, "quick"), **{k: v for k, v in preset("idc", "digits", 1, "quick").items()
                                                      if k in ("factor", "decode_type", "batch_syn_max", "lr_crop")},
              width=8, max_start_epoch=1, expert_dir=expert_dir, syn_steps=2, batch_syn=7, lr_img=0.1,
              formation="learned")
    t = _resumes_exactly(digits, hp, parameterization=MultiFormation, objective=TrajectoryMatching)
    assert t.param.num_slots() == 40 and set(t.synthetic_params()) == {"syn", "crop", "syn_lr"}


def test_windows_stay_sane():
    from ddkernels.distill.methods.idc import clamp_windows_
    w = torch.tensor([[[-20.0, 30.0, 0.2, 50.0], [3.0, 4.0, 5.0, 6.0]]])
    clamp_windows_(w, 28, 28)
    assert w.tolist() == [[[-0.5, 14.0, 1.0, 28.0], [3.0, 4.0, 5.0, 6.0]]]


@pytest.mark.parametrize("over, match", [
    (dict(formation="tiles"), "formation must be one of"),
    (dict(formation="multiscale", factors=[1, 2]), r"factors \[a, b\] must satisfy 2 <= a < b"),
    (dict(formation="multiscale", factors=[2, 3]), "b a multiple of a"),
    (dict(formation="multiscale", factors=[2, 16]), r"b <= min\(h, w\)=8"),
    (dict(formation="multiscale", factors=4), "factors must be a pair of ints"),
    (dict(formation="learned", lr_crop=-1), "formation 'learned' needs lr_crop >= 0"),
    (dict(formation="learned", decode_type="multi"), "formation 'learned' needs decode_type 'single'"),
])
def test_bad_input_refused_before_any_work(digits, over, match, monkeypatch):
    import ddkernels.distill.methods.idc as idc

    def no_work(*a, **k):
        raise AssertionError("initialization ran before the hyperparameters were checked")

    monkeypatch.setattr(idc, "mix_init", no_work)
    monkeypatch.setattr(idc, "window_init", no_work)
    with pytest.raises(ValueError, match=match):
        make_distiller("idc", digits, 1, **SMALL, **over)


def test_default_is_the_fixed_grid(digits):
    hp = preset("idc", "fashion-mnist", 10, "quick")
    assert (hp["formation"], hp["factors"]) == ("fixed", [2, 4]) and hp["lr_crop"] == hp["lr_img"]
    t = make_distiller("idc", digits, 1, **SMALL)
    assert t.param.windows is None and t.param.crop is None and set(t.synthetic_params()) == {"syn"}
