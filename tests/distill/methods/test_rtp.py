"""RTP: the addressable memory (decode, budget, storage) and BPTT's reverse pass against plain autograd."""
import pytest
import torch
import torch.nn.functional as F

from ddkernels.distill import runs
from ddkernels.nn.memory import addressable_decode, rows_for_budget
from ddkernels.distill.methods import make_distiller, preset
from ddkernels.distill.methods.rtp import FlatParams, bptt_meta_gradient, unroll_momentum_sgd
from ddkernels.nn.convnet import ConvNet
from ddkernels.nn import AddressableMemory

pytestmark = pytest.mark.usefixtures("single_thread")

# digits are 8×8: bases are 4×4 at downsample 2; 4 bases leave r = (2·10·64 − 4·16) / 40 = 30 rows per class.
TINY = dict(num_bases=4, width=4, inner_steps=3, batch_syn=2, batch_real=4)


def _naive_decode(mem: AddressableMemory, rows) -> torch.Tensor:
    """The paper's decode row by row: (A[row] @ M) reshaped to the bases' size, then upsampled."""
    c, h, w = mem.image_shape
    s = mem.downsample
    out = []
    for row in rows:
        low = (mem.addressing[row] @ mem.bases).view(1, c, h // s, w // s)
        out.append(F.interpolate(low, scale_factor=s, mode="bilinear", align_corners=False)[0] if s > 1 else low[0])
    return torch.stack(out)


@pytest.mark.parametrize("shape,ds", [((2, 8, 6), 2), ((3, 12, 12), 3), ((1, 5, 7), 1)])
def test_decode_equals_naive_loop(shape, ds):
    mem = AddressableMemory(3, 4, 5, shape, ds, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    assert mem.bases.shape == (4, shape[0] * (shape[1] // ds) * (shape[2] // ds)) and mem.addressing.shape == (15, 4)
    rows = torch.tensor([14, 0, 7, 7, 3])
    want = _naive_decode(mem, rows.tolist())
    for upsample_first in (True, False):
        assert torch.allclose(mem.decode(rows, upsample_first=upsample_first), want, atol=1e-12)
    assert torch.allclose(mem(), _naive_decode(mem, range(15)), atol=1e-12)
    assert mem.labels(rows).tolist() == [2, 0, 1, 1, 0]


def test_budget_and_storage():
    # docs/spec.md §5a: CIFAR-10 at budget IPC 1 with K = 16, ds = 2 gives 115 rows per class and 30,688 floats.
    assert rows_for_budget(1, 10, (3, 32, 32), 16, 2) == 115
    mem = AddressableMemory.from_budget(1, 10, 16, (3, 32, 32), 2)
    assert mem.rows_per_class == 115 and mem.num_images == 1150 and mem.num_stored() == 30688
    # Fashion-MNIST quick presets: 30 bases of 14×14 leave 6 rows per class of the 7,840-float budget.
    assert rows_for_budget(1, 10, (1, 28, 28), 30, 2) == 6
    q = preset("rtp", "fashion-mnist", 10, "quick")  # IPC 10: 80 full-resolution bases, 19 rows per class
    assert rows_for_budget(10, 10, (1, 28, 28), q["num_bases"], q["downsample"]) == 19
    with pytest.raises(ValueError, match="num_bases=41 bases"):
        rows_for_budget(1, 10, (1, 28, 28), 41, 2)
    with pytest.raises(ValueError, match="downsample=3 must divide"):
        AddressableMemory(10, 4, 2, (1, 28, 28), 3)
    with pytest.raises(ValueError, match="image_shape must be"):
        AddressableMemory(10, 4, 2, (28, 28), 2)
    with pytest.raises(ValueError, match="coefficients must be"):
        addressable_decode(mem.bases, torch.zeros(3, 5), (3, 32, 32), 2)


def test_trainer_storage_and_rows(digits):
    d = make_distiller("rtp", digits, 2, "quick", seed=0, **TINY)
    r = d.memory.rows_per_class
    assert r == 30 and d.per_class_params == ("addressing",)
    s = d.storage()
    assert s["stored_floats"] == 4 * 16 + 10 * r * 4 <= s["budget_floats"] == 1280
    images, labels = d.training_set()
    assert images.shape == (300, 1, 8, 8) and torch.equal(labels, torch.arange(10).repeat_interleave(r))
    rows = d.memory.sample_rows(5, torch.Generator().manual_seed(0))
    for c, block in enumerate(rows.view(10, 5)):
        assert block.tolist() == sorted(set(block.tolist())) and all(c * r <= i < (c + 1) * r for i in block.tolist())
    assert make_distiller("rtp", digits, 2, "quick", rows_per_class=7, **TINY).storage()["stored_floats"] == 64 + 280
    with pytest.raises(ValueError, match=r"rows_per_class must be an int in \[1, 30\]"):
        make_distiller("rtp", digits, 2, "quick", rows_per_class=31, **TINY)
    with pytest.raises(ValueError, match="init must be"):
        make_distiller("rtp", digits, 2, "quick", init="pca", **TINY)
    assert preset("rtp", "cifar10", 1, "paper")["inner_steps"] == 150


def test_init_from_images_reproduces_low_rank_images(digits):
    mem = AddressableMemory(2, 6, 3, (1, 8, 8), 2, dtype=torch.float64)
    x = torch.randn(6, 1, 8, 8, dtype=torch.float64)
    mem.init_from_images(x)  # 6 images, 6 bases: the pooled images are reproduced exactly
    want = F.interpolate(F.avg_pool2d(x, 2), scale_factor=2, mode="bilinear", align_corners=False)
    assert torch.allclose(mem.decode(), want, atol=1e-10)
    assert torch.allclose(mem.bases.norm(dim=1).mean(), mem.addressing.norm(dim=1).mean(), rtol=0.5)
    with pytest.raises(ValueError, match=r"images must be \(6, 1, 8, 8\)"):
        mem.init_from_images(x[:5])


def test_unroll_is_pytorch_momentum_sgd():
    net = ConvNet(1, 3, width=4, im_size=(8, 8)).double()
    f = FlatParams(net)
    theta0 = f.flat()
    xs = torch.randn(3, 5, 1, 8, 8, dtype=torch.float64)
    ys = torch.randint(3, (3, 5))
    theta, snaps = unroll_momentum_sgd(f, theta0, lambda t: (xs[t], ys[t]), 3, lr=0.05, momentum=0.9)
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    for t in range(3):
        assert torch.allclose(snaps[t], f.flat(), atol=1e-12)
        opt.zero_grad()
        F.cross_entropy(net(xs[t]), ys[t]).backward()
        opt.step()
    assert torch.allclose(theta, f.flat(), atol=1e-12)


@pytest.mark.parametrize("upsample_first", [True, False])
def test_reverse_pass_equals_autograd_through_the_unrolled_loop(upsample_first):
    """The recompute-per-step reverse pass gives the meta-gradient that plain autograd through the
    whole unrolled momentum-SGD graph gives (float64)."""
    torch.manual_seed(0)
    net = ConvNet(1, 3, width=4, im_size=(8, 8)).double()
    f = FlatParams(net)
    mem = AddressableMemory(3, 3, 4, (1, 8, 8), 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    with torch.no_grad():
        mem.bases.mul_(20)  # Xavier's tiny values give near-zero images; make the steps matter
    rows = torch.stack([mem.sample_rows(2, torch.Generator().manual_seed(t)) for t in range(4)])
    real_x, real_y = torch.randn(6, 1, 8, 8, dtype=torch.float64), torch.tensor([0, 1, 2, 0, 1, 2])
    lr, mu = 0.1, 0.9
    loss, g_bases, g_table = bptt_meta_gradient(f, f.flat(), mem, rows, real_x, real_y, lr=lr, momentum=mu,
                                                upsample_first=upsample_first)
    # Plain autograd: one graph through all four steps.
    theta = f.flat().requires_grad_(True)
    v = torch.zeros_like(theta)
    for t in range(4):
        step_loss = F.cross_entropy(f(theta, mem.decode(rows[t])), mem.labels(rows[t]))
        (g,) = torch.autograd.grad(step_loss, theta, create_graph=True)
        v = mu * v + g
        theta = theta - lr * v
    want_loss = F.cross_entropy(f(theta, real_x), real_y)
    want_bases, want_table = torch.autograd.grad(want_loss, (mem.bases, mem.addressing))
    assert torch.allclose(loss, want_loss.detach(), rtol=1e-12)
    assert float(want_bases.abs().max()) > 1e-4 and float(want_table.abs().max()) > 1e-4
    assert torch.allclose(g_bases, want_bases, rtol=1e-9, atol=1e-12)
    assert torch.allclose(g_table, want_table, rtol=1e-9, atol=1e-12)
    assert mem.bases.grad is None and mem.addressing.grad is None  # the tables are only read


def test_reference_vs_fused_decode_run(digits):
    """RTP calls no ddkernels op with backends; ``backend`` picks the decode order. A few outer
    iterations from one seed agree (the two orders differ only by float32 rounding)."""
    runs_ = {}
    for backend in ("reference", "auto"):
        d = make_distiller("rtp", digits, 2, "quick", backend=backend, seed=0, init="real", **TINY)
        d.run(3, progress=False)
        runs_[backend] = d
    ref, fused = runs_["reference"], runs_["auto"]
    assert torch.allclose(torch.tensor([h["loss"] for h in fused.history]),
                          torch.tensor([h["loss"] for h in ref.history]), rtol=1e-4)
    start = make_distiller("rtp", digits, 2, "quick", seed=0, init="real", **TINY)
    for name, p in ref.synthetic_params().items():
        moved = (p - start.synthetic_params()[name]).abs().max()
        assert moved > 1e-4
        assert (fused.synthetic_params()[name] - p).abs().max() <= 1e-3 * moved


def test_resume_reaches_the_uninterrupted_result(tmp_path):
    def go(out, iterations, resume=False):
        return runs.distill("rtp", "digits", 2, str(tmp_path / out), iterations=iterations, resume=resume,
                            overrides=TINY, evaluate_after=False, progress=False)
    go("full", 3)
    go("split", 2)
    go("split", 3, resume=True)
    full, split = (torch.load(tmp_path / n / "synthetic.pt", weights_only=False) for n in ("full", "split"))
    assert set(full["params"]) == {"bases", "addressing"}
    for k in full["params"]:
        assert torch.equal(full["params"][k], split["params"][k])
    assert torch.equal(full["images"], split["images"]) and full["images"].shape == (300, 1, 8, 8)
    assert full["storage"]["stored_floats"] == 64 + 300 * 4
