"""The shared reverse pass (ddkernels/distill/methods/unroll.py) against plain autograd through the same
unroll, in float64: the generic momentum-SGD student (inputs, θ_0, lr, momentum), MTT (images, lr),
HaBa on MTT (bases, every hallucinator parameter, lr, with the contrastive term on; also with latent bases
and their decoder, and with multi-formation bases), both with chunked minibatches and per-sample DSA;
soft targets built from stored logits (learned labels) and RTP with learned labels; RTP's one-hot
instance is also tested in test_rtp.py. Each with both second-derivative products (``product``:
reverse over forward mode, the default, and the double backward)."""
import warnings

import pytest
import torch
import torch.nn.functional as F

from ddkernels.distill.methods import make_distiller
from ddkernels.distill.methods import unroll as unroll_mod
from ddkernels.distill.methods.unroll import (PRODUCTS, FlatParams, autograd_unroll, unroll_forward,
                                              unroll_reverse, unrolled_sgd)
from ddkernels.nn.convnet import ConvNet

pytestmark = pytest.mark.usefixtures("single_thread")

TOL = 1e-10  # the bar: max |reverse − autograd| / max |autograd|, per tensor


def rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got - want).abs().max() / want.abs().max())


def assert_same(got, want, names):
    for g, w, n in zip(got, want, names):
        assert g is not None and g.shape == w.shape, n
        assert float(w.abs().max()) > 1e-8, f"{n}: the gradient vanishes; the test would prove nothing"
        assert rel_err(g, w) <= TOL, f"{n}: relative error {rel_err(g, w):.2e}"
        print(f"{n}: max relative error {rel_err(g, w):.1e}")


@pytest.mark.parametrize("product", PRODUCTS)
@pytest.mark.parametrize("momentum", [0.0, 0.7])
def test_generic_unroll_equals_autograd(momentum, product):
    """Every gradient the unroll has: the inputs the batches are built from, θ_0, η and μ (as tensors)."""
    gen = torch.Generator().manual_seed(0)
    f = FlatParams(ConvNet(1, 3, width=4, im_size=(8, 8)).double())
    pool = torch.randn(12, 1, 8, 8, dtype=torch.float64, generator=gen).requires_grad_(True)
    scale = torch.tensor(1.5, dtype=torch.float64, requires_grad=True)  # a second input, used by every step
    labels = torch.arange(12) % 3
    idx = [torch.randperm(12, generator=gen)[:5] for _ in range(4)]

    def build(t):
        return scale * pool[idx[t]] ** 2, labels[idx[t]]

    lr = torch.tensor(0.2, dtype=torch.float64, requires_grad=True)
    mu = torch.tensor(momentum, dtype=torch.float64, requires_grad=True)
    theta0 = f.flat().requires_grad_(True)
    target = torch.randn(theta0.shape, dtype=torch.float64, generator=gen)

    def grads(theta_T):
        loss = ((theta_T - target) ** 2).sum()
        return torch.autograd.grad(loss, [pool, scale, theta0, lr, mu])

    want = grads(autograd_unroll(f, theta0, 4, lambda t: t, build, lr, mu))
    names = ["pool", "scale", "theta0", "lr", "momentum"]
    for pinned in (False, True):  # pinned: host memory (the host is the device here)
        got = grads(unrolled_sgd(f, theta0, 4, lambda t: t, build, lr, mu, [pool, scale], pinned=pinned,
                                 product=product))
        assert_same(got if momentum else got[:4], want if momentum else want[:4], names)


def test_tape_holds_one_weight_buffer_and_checks_its_arguments():
    f = FlatParams(ConvNet(1, 3, width=4, im_size=(8, 8)).double())
    x = torch.randn(4, 1, 8, 8, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 0])
    theta0 = f.flat()
    theta, tape = unroll_forward(f, theta0, 3, lambda t: t, lambda t: (x, y), 0.1, 0.9)
    assert tape.weights.shape == (3, theta0.numel()) and tape.velocities is None
    assert tape.buffer_bytes() == 3 * theta0.numel() * 8 and torch.equal(tape.weights[0], theta0)
    with pytest.raises(ValueError, match="need the velocities"):
        unroll_reverse(tape, theta, [], lr_grad=True)
    with pytest.raises(ValueError, match=r"inputs\[0\] does not require grad"):
        unroll_reverse(tape, theta, [x])
    with pytest.raises(ValueError, match="steps must be a positive int"):
        unroll_forward(f, theta0, 0, lambda t: t, lambda t: (x, y), 0.1)
    with pytest.raises(ValueError, match="product must be one of"):
        unroll_reverse(tape, theta, [], product="tesla")
    with pytest.raises(ValueError, match="product must be one of"):
        unrolled_sgd(f, theta0, 3, lambda t: t, lambda t: (x, y), 0.1, product="jvp")


def _double(d, haba: bool):
    """Run the trainer's unroll in float64: stored tensors, the learnable lr, the student, the experts
    (and HaBa's hallucinators and feature extractor)."""
    obj = d.objective
    obj.student.double()
    obj.experts.trajectories = [t.double() for t in obj.experts.trajectories]
    obj.syn_lr = obj.syn_lr.detach().double().requires_grad_(True)
    if haba:
        d.param.bases = d.param.bases.detach().double().requires_grad_(True)
        d.param.bank.double()
        d.param.extractor.double()
        shared = [d.param.bank] + ([d.param.decoder] if d.param.decoder is not None else [])
        with torch.no_grad():  # off the near-identity init, so every hallucinator (decoder) parameter matters
            for p in (p for m in shared for p in m.double().parameters()):
                p.add_(0.1 * torch.randn(p.shape, dtype=p.dtype, generator=torch.Generator().manual_seed(p.numel())))
    else:
        d.param.syn = d.param.syn.detach().double().requires_grad_(True)


def _both_modes(d, monkeypatch, product):
    """The gradient of one outer iteration's loss (plus the parameterization's regularizer, as
    ``image_step`` adds it) w.r.t. every stored tensor, for unroll="reverse" (with hp ``unroll_product``
    ``product``) and "autograd" from the same stream state."""
    d.hp["unroll_product"] = product
    state, chunks = d.gen.get_state(), [c.clone() for c in d.objective._chunks]
    calls = []
    real = unroll_mod.unroll_reverse
    monkeypatch.setattr(unroll_mod, "unroll_reverse", lambda *a, **k: calls.append(1) or real(*a, **k))
    out = {}
    for mode in ("reverse", "autograd"):
        d.gen.set_state(state)
        d.objective._chunks = [c.clone() for c in chunks]
        d.hp["unroll"] = mode
        loss = d.objective.trajectory_loss()
        extra = d.param.regularizer()
        if extra is not None:
            loss = loss + extra
        named = d.synthetic_params()
        out[mode] = (list(named), torch.autograd.grad(loss, list(named.values())))
        assert len(calls) == 1  # the reverse pass ran once, for "reverse" only
    return out


@pytest.mark.parametrize("product", PRODUCTS)
@pytest.mark.parametrize("batch_syn", [None, 3])
def test_mtt_reverse_equals_autograd(digits, expert_dir, batch_syn, product, monkeypatch):
    d = make_distiller("mtt", digits, 2, "quick", seed=0, width=8, max_start_epoch=2, expert_epochs=1,
                       expert_dir=expert_dir, syn_steps=5, batch_syn=batch_syn)
    assert d.objective.aug is not None  # per-sample DSA, replayed from the records
    _double(d, haba=False)
    out = _both_modes(d, monkeypatch, product)
    names, got = out["reverse"]
    assert names == ["syn", "syn_lr"]
    assert_same(got, out["autograd"][1], names)


@pytest.mark.parametrize("product", PRODUCTS)
@pytest.mark.parametrize("batch_syn", [None, 4])
@pytest.mark.parametrize("kind", ["images", "latent", "multi_formation"])
def test_haba_reverse_equals_autograd(digits, expert_dir, batch_syn, kind, product, monkeypatch):
    d = make_distiller("haba", digits, 2, "quick", seed=0, width=8, max_start_epoch=2, expert_epochs=1,
                       expert_dir=expert_dir, syn_steps=4, batch_syn=batch_syn, batch_real=16, hallucinators=3,
                       mid_channels=2, base_kind=kind)
    assert d.param.contrastive_on() and d.hp["lambda_club"] > 0 and d.objective.aug is not None
    _double(d, haba=True)
    out = _both_modes(d, monkeypatch, product)
    names, got = out["reverse"]
    decoder = 4 if kind == "latent" else 0  # its two layers' weights and biases
    assert names[0] == "bases" and "syn_lr" in names and len(names) == 2 + len(list(d.param.bank.parameters())) + decoder
    assert_same(got, out["autograd"][1], names)


def test_mtt_run_reverse_and_autograd_agree(digits, expert_dir):
    """Two float32 iterations of a run either way: the same stored tensors up to float32 rounding."""
    runs_ = {}
    for mode in ("reverse", "autograd"):
        d = make_distiller("mtt", digits, 2, "quick", seed=0, width=8, max_start_epoch=2, expert_epochs=1,
                           expert_dir=expert_dir, syn_steps=4, batch_syn=6, unroll=mode)
        d.run(2, progress=False)
        runs_[mode] = d
    for k in ("syn", "syn_lr"):
        assert rel_err(getattr(runs_["reverse"], k).detach(), getattr(runs_["autograd"], k).detach()) < 1e-5, k
    with pytest.raises(ValueError, match="unroll must be one of"):
        make_distiller("mtt", digits, 2, "quick", expert_dir=expert_dir, width=8, max_start_epoch=1, unroll="tesla")
    with pytest.raises(ValueError, match="unroll_product must be one of"):
        make_distiller("mtt", digits, 2, "quick", expert_dir=expert_dir, width=8, max_start_epoch=1,
                       unroll_product="jvp")


def test_rtp_is_an_instance_of_the_reverse_pass():
    """bptt_meta_gradient's result equals the generic reverse pass driven by hand."""
    from ddkernels.distill.methods.rtp import bptt_meta_gradient
    from ddkernels.nn import AddressableMemory

    f = FlatParams(ConvNet(1, 3, width=4, im_size=(8, 8)).double())
    mem = AddressableMemory(3, 3, 4, (1, 8, 8), 1, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    with torch.no_grad():
        mem.bases.mul_(20)
    rows = torch.stack([mem.sample_rows(2, torch.Generator().manual_seed(t)) for t in range(3)])
    real_x, real_y = torch.randn(6, 1, 8, 8, dtype=torch.float64), torch.tensor([0, 1, 2, 0, 1, 2])
    _, g_bases, g_table = bptt_meta_gradient(f, f.flat(), mem, rows, real_x, real_y, lr=0.1, momentum=0.9,
                                             pinned=True)
    bases, table = mem.bases.detach().clone().requires_grad_(True), mem.addressing.detach().clone().requires_grad_(True)
    theta = unrolled_sgd(f, f.flat(), 3, lambda t: t, lambda t: ((table[rows[t]] @ bases).view(-1, 1, 8, 8),
                                                                   mem.labels(rows[t])), 0.1, 0.9, [bases, table])
    want = torch.autograd.grad(F.cross_entropy(f(theta, real_x), real_y), [bases, table])
    assert_same([g_bases, g_table], want, ["bases", "addressing"])


@pytest.mark.parametrize("product", PRODUCTS)
@pytest.mark.parametrize("keep", [0, 2, 4, 9])
def test_kept_graphs_and_theta0_without_grad_give_the_same_gradient(keep, product):
    """Steps whose graph the forward keeps (none, some, all, more than there are) and a θ_0 that needs no
    gradient (the reverse then skips θ_0's terms) change nothing in the inputs', η's and μ's gradients."""
    gen = torch.Generator().manual_seed(1)
    f = FlatParams(ConvNet(1, 3, width=4, im_size=(8, 8)).double())
    pool = torch.randn(12, 1, 8, 8, dtype=torch.float64, generator=gen).requires_grad_(True)
    labels = torch.arange(12) % 3
    idx = [torch.randperm(12, generator=gen)[:5] for _ in range(4)]
    lr = torch.tensor(0.2, dtype=torch.float64, requires_grad=True)
    mu = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)
    target = torch.randn(f.flat().shape, dtype=torch.float64, generator=gen)

    def build(t):
        return pool[idx[t]].tanh(), labels[idx[t]]

    def grads(theta_T):
        return torch.autograd.grad(((theta_T - target) ** 2).sum(), [pool, lr, mu])

    want = grads(autograd_unroll(f, f.flat(), 4, lambda t: t, build, lr, mu))
    got = grads(unrolled_sgd(f, f.flat(), 4, lambda t: t, build, lr, mu, [pool], keep=keep, product=product))
    assert_same(got, want, ["pool", "lr", "momentum"])
    theta, tape = unroll_forward(f, f.flat(), 4, lambda t: t, build, 0.2, keep=keep)
    assert sorted(tape.kept) == list(range(max(0, 4 - keep), 4))
    r = unroll_reverse(tape, theta - target, [pool], theta_grad=False, product=product)
    assert r.theta0 is None and not tape.kept
    with pytest.raises(ValueError, match="keep must be a non-negative int"):
        unroll_forward(f, f.flat(), 4, lambda t: t, build, 0.2, keep=-1)


@pytest.mark.parametrize("product", PRODUCTS)
@pytest.mark.parametrize("momentum", [0.0, 0.7])
def test_soft_targets_are_an_input_like_the_images(momentum, product):
    """Learned soft labels (issue 20): steps on the soft-target cross-entropy with targets
    ``softmax(logits)`` built from a stored tensor; the reverse pass gives the logits' gradient too."""
    gen = torch.Generator().manual_seed(1)
    f = FlatParams(ConvNet(1, 3, width=4, im_size=(8, 8)).double())
    pool = torch.randn(12, 1, 8, 8, dtype=torch.float64, generator=gen).requires_grad_(True)
    logits = torch.randn(12, 3, dtype=torch.float64, generator=gen).requires_grad_(True)
    idx = [torch.randperm(12, generator=gen)[:5] for _ in range(4)]

    def build(t):
        return pool[idx[t]], torch.softmax(logits[idx[t]], dim=1)

    theta0 = f.flat().requires_grad_(True)
    target = torch.randn(theta0.shape, dtype=torch.float64, generator=gen)

    def grads(theta_T):
        return torch.autograd.grad(((theta_T - target) ** 2).sum(), [pool, logits, theta0])

    want = grads(autograd_unroll(f, theta0, 4, lambda t: t, build, 0.2, momentum))
    got = grads(unrolled_sgd(f, theta0, 4, lambda t: t, build, 0.2, momentum, [pool, logits], product=product))
    assert_same(got, want, ["pool", "label_logits", "theta0"])


@pytest.mark.parametrize("mode", ["soft", "embedding"])
def test_rtp_label_modes_are_instances_of_the_reverse_pass(mode):
    """bptt_meta_gradient with learned labels equals the generic reverse pass driven by hand, every
    stored tensor (label logits / codes included) an input."""
    from ddkernels.distill.methods.rtp import bptt_meta_gradient
    from ddkernels.nn import AddressableMemory

    f = FlatParams(ConvNet(1, 3, width=4, im_size=(8, 8)).double())
    mem = AddressableMemory(3, 3, 4, (1, 8, 8), 1, label_mode=mode, label_dim=2,
                            generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    with torch.no_grad():
        mem.bases.mul_(20)
    rows = torch.stack([mem.sample_rows(2, torch.Generator().manual_seed(t)) for t in range(3)])
    real_x, real_y = torch.randn(6, 1, 8, 8, dtype=torch.float64), torch.tensor([0, 1, 2, 0, 1, 2])
    _, *got = bptt_meta_gradient(f, f.flat(), mem, rows, real_x, real_y, lr=0.1, momentum=0.9)
    leaves = {k: v.detach().clone().requires_grad_(True) for k, v in mem.tables().items()}

    def build(t):
        x = (mem.coefficients(rows[t], leaves) @ leaves["bases"]).view(-1, 1, 8, 8)
        return x, mem.targets(rows[t], leaves)

    theta = unrolled_sgd(f, f.flat(), 3, lambda t: t, build, 0.1, 0.9, list(leaves.values()))
    want = torch.autograd.grad(F.cross_entropy(f(theta, real_x), real_y), list(leaves.values()))
    assert_same(got, want, list(leaves))


class _NoForwardMode(torch.autograd.Function):
    """``tanh`` as a custom Function without ``jvp``: a student op that forward mode cannot run."""

    @staticmethod
    def forward(ctx, x):
        y = x.tanh()
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, g):
        (y,) = ctx.saved_tensors
        return g * (1 - y * y)


def test_forward_product_falls_back_to_the_double_backward():
    """A student with an op that has no forward mode: one warning naming it, then the double backward,
    and the same gradient as autograd."""
    gen = torch.Generator().manual_seed(3)
    net = ConvNet(1, 3, width=4, im_size=(8, 8)).double()
    flat = FlatParams(net)

    def f(theta, x):
        return _NoForwardMode.apply(flat(theta, x))

    pool = torch.randn(8, 1, 8, 8, dtype=torch.float64, generator=gen).requires_grad_(True)
    labels = torch.arange(8) % 3
    target = torch.randn(flat.flat().shape, dtype=torch.float64, generator=gen)

    def grads(theta_T):
        return torch.autograd.grad(((theta_T - target) ** 2).sum(), [pool])

    build = lambda t: (pool[t:t + 4], labels[t:t + 4])  # noqa: E731
    want = grads(autograd_unroll(f, flat.flat(), 3, lambda t: t, build, 0.2))
    with pytest.warns(UserWarning, match="no forward mode.*product='backward'"):
        got = grads(unrolled_sgd(f, flat.flat(), 3, lambda t: t, build, 0.2, 0.0, [pool], keep=0))
    assert_same(got, want, ["pool"])


def test_forward_product_never_makes_the_weight_buffer_dual(monkeypatch):
    """Forward mode gives a view's tangent to its base: a dual made from a row of the ``(T, P)`` weight
    buffer would carry a ``(T, P)`` tangent (memory and time growing with ``T``). The reverse makes its
    duals from a copy of the row."""
    made = []
    real = unroll_mod.fwAD.make_dual
    monkeypatch.setattr(unroll_mod.fwAD, "make_dual", lambda p, t, **k: made.append(p._base) or real(p, t, **k))
    f = FlatParams(ConvNet(1, 3, width=4, im_size=(8, 8)).double())
    pool = torch.randn(8, 1, 8, 8, dtype=torch.float64).requires_grad_(True)
    labels = torch.arange(8) % 3
    theta = unrolled_sgd(f, f.flat(), 4, lambda t: t, lambda t: (pool[t:t + 4], labels[t:t + 4]), 0.2, 0.0, [pool])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # and no fallback to the double backward
        theta.square().sum().backward()
    assert len(made) == 3 and all(b is None for b in made)  # the last step's graph is kept (no dual)
