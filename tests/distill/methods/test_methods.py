"""Trainers on digits: the matching core, mix init, reference-vs-fused convergence, DM, presets."""
import pytest
import torch
import torch.nn.functional as F

import ddkernels
from ddkernels.distill import data
from ddkernels.distill.methods import get_loops, gradient_match, make_distiller, matched_params, mix_init, preset
from ddkernels.distill.methods.idc import DECODE_TYPES
from ddkernels.nn import bound_plan
from ddkernels.nn.convnet import ConvNet
from tests.conftest import fused_backends

pytestmark = pytest.mark.usefixtures("single_thread")

TINY = dict(width=16, batch_real=16)
TINY_IDC = dict(TINY, inner_loop=2, n_data=32)


def test_matched_params():
    net = ConvNet(1, 10, width=8, im_size=(8, 8))
    assert [p.dim() for p in matched_params(net, "conv")] == [4, 4, 4]
    assert [p.dim() for p in matched_params(net, "weights")] == [4, 4, 4, 2]
    assert len(matched_params(net, "all")) == len(list(net.parameters()))
    with pytest.raises(ValueError, match="layers must be one of"):
        matched_params(net, "bias")


def test_gradient_match_equals_per_class_loop():
    # The batched core against the original's loop: per class, grads of CE on real and syn, one distance each.
    net = ConvNet(1, 3, width=8, im_size=(8, 8)).double()
    params = matched_params(net, "weights")
    real = [torch.randn(5, 1, 8, 8, dtype=torch.float64) for _ in range(3)]
    syn = [torch.randn(2, 1, 8, 8, dtype=torch.float64, requires_grad=True) for _ in range(3)]
    got = gradient_match(net, params, real, syn, [0, 1, 2], "ours", backend="reference")
    for c in range(3):
        def grads(x, create):
            loss = F.cross_entropy(net(x), torch.full((len(x),), c))
            return torch.autograd.grad(loss, params, create_graph=create)
        g_r = [g.detach() for g in grads(real[c], False)]
        want = ddkernels.grad_distance(grads(syn[c], True), g_r, "ours", backend="reference")
        assert torch.allclose(got[c], want)
        (g_got,) = torch.autograd.grad(got[c], syn[c], retain_graph=True)
        (g_want,) = torch.autograd.grad(want, syn[c])
        assert torch.allclose(g_got, g_want)


def test_mix_init_tiles_are_resized_real_images():
    x = torch.rand(40, 1, 7, 7)
    y = torch.arange(4).repeat(10)
    sampler = data.ClassSampler(y, 4)
    out = mix_init(x, sampler, ipc=2, factor=2, generator=torch.Generator().manual_seed(0))
    assert out.shape == (8, 1, 7, 7)
    # 7 % 2 = 1: the first tile row/col is 4 px, the second 3 px; every tile comes from the right class.
    for slot in range(8):
        c = slot // 2
        tile = out[slot, 0, :4, :4]
        matches = [i for i in range(40) if torch.equal(F.interpolate(x[i:i + 1], size=(4, 4))[0, 0], tile)]
        assert matches and all(int(y[i]) == c for i in matches)
    with pytest.raises(ValueError, match="ipc·factor²=12 is larger than class 0"):
        mix_init(x, sampler, ipc=3, factor=2)


def _run(method, digits, backend, **kw):
    d = make_distiller(method, digits, 2, "quick", backend=backend, seed=0, **kw)
    d.run(2, progress=False)
    return d


# Backends every trainer run is compared on; the Triton interpreter (CPU) runs a trainer's many small
# launches ~20x slower than the C++ kernels, so on CPU it gets one tiny run of its own below.
CONVERGENCE_BACKENDS = [p for p in fused_backends("grad_distance") if p.id != "triton" or torch.cuda.is_available()]


@pytest.mark.parametrize("backend", CONVERGENCE_BACKENDS)
@pytest.mark.parametrize("method,kw", [("dc", TINY), ("idc", TINY_IDC), ("idc", dict(TINY_IDC, class_steps="sequential"))],
                         ids=["dc", "idc-batched", "idc-sequential"])
def test_convergence_reference_vs_fused(digits, method, kw, backend):
    """A few outer iterations from one seed: the fused ops reproduce the reference run's losses and
    synthetic tensors (same decodes, distances and gradients up to float32 rounding)."""
    ref = _run(method, digits, "reference", **kw)
    fused = _run(method, digits, backend, **kw)
    ref_losses = torch.tensor([h["loss"] for h in ref.history])
    assert torch.allclose(torch.tensor([h["loss"] for h in fused.history]), ref_losses, rtol=1e-4)
    moved = (ref.syn - make_distiller(method, digits, 2, "quick", seed=0, **kw).syn).abs().max()
    assert moved > 1e-3
    # IDC's l1 metric backpropagates sign(g_syn - g_real): elements where the two gradients agree to
    # float32 rounding may take either sign, so the tensors agree to a small fraction of how far they moved.
    assert (fused.syn - ref.syn).abs().max() <= 0.01 * moved


@pytest.mark.parametrize("backend", [p for p in fused_backends("grad_distance") if p.id == "triton"])
@pytest.mark.parametrize("method", ["dc", "idc"])
def test_convergence_triton_tiny(digits, method, backend):
    kw = dict(width=4, batch_real=4, inner_loop=1, n_data=8) if method == "idc" else dict(width=4, batch_real=4)
    ref = make_distiller(method, digits, 1, "quick", backend="reference", seed=0, **kw)
    fused = make_distiller(method, digits, 1, "quick", backend=backend, seed=0, **kw)
    ref.run(1, progress=False)
    fused.run(1, progress=False)
    assert abs(fused.history[0]["loss"] - ref.history[0]["loss"]) <= 1e-4 * abs(ref.history[0]["loss"])
    moved = (ref.syn - make_distiller(method, digits, 1, "quick", seed=0, **kw).syn).abs().max()
    assert (fused.syn - ref.syn).abs().max() <= 0.01 * moved


def test_dm_and_dsa_run(digits):
    for method in ("dm", "dsa"):
        d = _run(method, digits, "auto", **TINY)
        assert len(d.history) == 2 and all(torch.isfinite(torch.tensor(h["loss"])) for h in d.history)
        images, labels = d.training_set()
        assert images.shape == (20, 1, 8, 8) and labels.tolist() == sorted(labels.tolist())


def test_idc_training_set_is_decoded(digits):
    d = make_distiller("idc", digits, 1, "quick", seed=0, **TINY_IDC)
    images, labels = d.training_set()
    assert images.shape == (40, 1, 8, 8)
    assert torch.equal(labels, ddkernels.multi_formation_targets(torch.arange(10), 2))
    assert float(d.pixel_images().min()) >= 0 and float(d.pixel_images().max()) <= 1


def test_presets_and_errors(digits):
    assert get_loops(10) == (10, 50) and get_loops(1) == (1, 1)
    p = preset("idc", "cifar10", 10, "paper")
    assert (p["metric"], p["lr_img"], p["n_data"], p["inner_loop"], p["iterations"]) == ("mse", 5e-3, 2000, 100, 2000)
    assert preset("idc", "fashion-mnist", 1, "paper")["metric"] == "l1"
    assert preset("dm", "cifar10", 1, "paper")["iterations"] == 20000
    with pytest.raises(ValueError, match="unknown method 'kip'"):
        make_distiller("kip", digits, 1)
    with pytest.raises(ValueError, match="ipc=500 is larger than class"):
        make_distiller("dc", digits, 500)
    with pytest.raises(ValueError, match="unknown hyperparameter"):
        make_distiller("dc", digits, 1, lr_imgg=1.0)
    with pytest.raises(ValueError, match="preset must be one of"):
        make_distiller("dc", digits, 1, "fast")


def _naive_decode_zoom(img, f):
    """IDC condense.py decode_zoom as the spec words it: pad right/bottom with 0.5 to a multiple of f,
    cut f×f tiles of side ceil(h/f) row-major, concatenate tile-major, bilinear-resize to (h, w)."""
    h, w = img.shape[-2:]
    r = h % f
    if r:
        img = F.pad(img, (0, f - r, 0, f - r), value=0.5)
    s = -(-h // f)
    tiles = [img[:, :, i * s:(i + 1) * s, j * s:(j + 1) * s] for i in range(f) for j in range(f)]
    return F.interpolate(torch.cat(tiles), size=(h, w), mode="bilinear", align_corners=False)


def _naive_bound(img, f_max, bound):
    """IDC decode_zoom_bound, transcribed loop by loop (valid while len(img) <= bound)."""
    room, budget, idx, total, out = bound - len(img), len(img), 0, 0, []
    for f in range(f_max, 0, -1):
        n = min(room // f ** 2, budget) if f > 1 else budget
        out.append(_naive_decode_zoom(img[idx:idx + n], f))
        idx, budget, total = idx + n, budget - n, total + n * f ** 2
        room = bound - total - budget
        if budget == 0:
            break
    return torch.cat(out)


def test_bound_plan_matches_idc_loop():
    assert bound_plan(3, 2, 8) == [(2, 0, 1), (1, 1, 3)]
    assert bound_plan(20, 3, 128) == [(3, 0, 12), (2, 12, 15), (1, 15, 20)]  # ImageNet IPC 20: 125 decoded
    assert bound_plan(200, 2, 128) == [(1, 0, 200)]  # more images than the bound: all at factor 1
    for n in range(1, 14):
        for f in (2, 3):
            for bound in (n, n + 3, 16, 40):
                img = torch.arange(n, dtype=torch.float64).view(n, 1, 1, 1).expand(n, 1, 6, 6)
                plan = bound_plan(n, f, bound)
                count = sum((hi - lo) * g * g for g, lo, hi in plan)
                assert count == len(_naive_bound(img, f, bound)) <= bound, (n, f, bound)


@pytest.mark.parametrize("decode_type", DECODE_TYPES)
@pytest.mark.parametrize("backend", ["reference", "auto"])
def test_idc_decode_types_match_naive(digits, decode_type, backend):
    ipc, cap = 3, 8
    d = make_distiller("idc", digits, ipc, "quick", seed=0, backend=backend, decode_type=decode_type,
                       batch_syn_max=cap, **TINY_IDC)
    stored = d.syn.detach()
    naive = {"single": lambda x: _naive_decode_zoom(x, 2),
             "multi": lambda x: torch.cat([_naive_decode_zoom(x, f) for f in (1, 2)]),
             "bound": lambda x: _naive_bound(x, 2, cap)}[decode_type]
    per_class = d.decode(stored)
    images, labels = d.training_set()
    counts = {"single": 4 * ipc, "multi": 5 * ipc, "bound": 6}[decode_type]
    assert labels.tolist().count(0) == counts and torch.bincount(labels).tolist() == [counts] * 10
    for c in range(10):
        want = naive(stored[c * ipc:(c + 1) * ipc])
        torch.testing.assert_close(per_class[c], want, atol=1e-6, rtol=0)
        # the training set holds the same images per class, normalized, in IDC's per-class order
        torch.testing.assert_close(images[labels == c], digits.normalize(want), atol=1e-5, rtol=0)
        torch.testing.assert_close(d.decode(stored[c * ipc:(c + 1) * ipc])[0], want, atol=1e-6, rtol=0)
    d.run(1, progress=False)  # matching samples at most batch_syn_max decoded images per class
    assert all(len(g) <= cap for g in d._decoded_by_class(list(range(10))))
    with pytest.raises(ValueError, match="decode_type must be one of"):
        make_distiller("idc", digits, 1, "quick", decode_type="zoom", **TINY_IDC)
