"""norm_relu_pool: every kernel backend against the reference (GroupNorm(C, C) → ReLU → AvgPool2d(2)),
forward, all gradients, the double backward gradient matching needs, forward mode (and reverse through
it), and the input checks."""
import pytest
import torch
import torch.autograd.forward_ad as fwAD

import ddkernels
from ddkernels import BackendUnavailable, _ext
from ddkernels.ops.norm_relu_pool import reference
from ddkernels.testing import assert_close
from tests.conftest import fused_backends

BACKENDS = fused_backends("norm_relu_pool")
INTERPRETED = not torch.cuda.is_available()

# (N, C, H, W): ConvNet-3's three block sizes (32, 16, 8 px) at small batch, then odd sides (the
# pool drops a row/column), non-square, the smallest poolable plane.
SHAPES = [(3, 16, 32, 32), (4, 8, 16, 16), (5, 8, 8, 8), (2, 3, 7, 9), (2, 4, 6, 10), (3, 2, 2, 2)]
# The Triton interpreter runs one program at a time: small shapes only.
SMALL = [(2, 3, 8, 8), (2, 3, 7, 9), (1, 2, 6, 10)]


def _cases(shapes_for):
    return [pytest.param(b.values[0], s, marks=b.marks, id=f"{b.id}-{'x'.join(map(str, s))}")
            for b in BACKENDS for s in shapes_for(b.values[0])]


CASES = _cases(lambda b: SMALL if b == "triton" and INTERPRETED else SHAPES)
# gradcheck perturbs every element: interpreted Triton gets planes of a few pixels (~5 s each).
FEW = _cases(lambda b: [(1, 2, 4, 4), (1, 2, 3, 5)] if b == "triton" and INTERPRETED else SHAPES[2:4])


def _inputs(shape, dtype=torch.float32):
    # A conv output is not zero-mean: an offset and scale per plane exercise the two-pass stats;
    # weight around ±1 and bias around 0 put a fair share of pixels on each side of the ReLU.
    n, c, h, w = shape
    x = torch.randn(shape, dtype=dtype) * (1 + torch.rand(n, c, 1, 1, dtype=dtype)) + 3 * torch.randn(n, c, 1, 1, dtype=dtype)
    return x, torch.randn(c, dtype=dtype), 0.5 * torch.randn(c, dtype=dtype)


@pytest.mark.parametrize("backend, shape", CASES)
@pytest.mark.parametrize("pool", [True, False], ids=["pool", "nopool"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_matches_reference(backend, shape, pool, dtype):
    x, w, b = _inputs(shape, dtype)
    ref = [t.clone().requires_grad_() for t in (x, w, b)]
    fused = [t.clone().requires_grad_() for t in (x, w, b)]
    y_ref = ddkernels.norm_relu_pool(*ref, pool=pool, backend="reference")
    y = ddkernels.norm_relu_pool(*fused, pool=pool, backend=backend)
    assert_close(y, y_ref, name=f"{backend} forward")
    g = torch.randn_like(y_ref)
    grads_ref = torch.autograd.grad(y_ref, ref, g)
    grads = torch.autograd.grad(y, fused, g)
    if dtype == torch.float64:
        for name, a, e in zip(("grad_x", "grad_weight", "grad_bias"), grads, grads_ref):
            assert_close(a, e, name=f"{backend} {name}")
        return
    # dweight/dbias sum over N·H·W terms: summation order matters in float32. Flash-attention's
    # rule: the fused error against a float64 reference is at most 2x the float32 reference's own.
    exact = [t.double().requires_grad_() for t in (x, w, b)]
    grads64 = torch.autograd.grad(ddkernels.norm_relu_pool(*exact, pool=pool, backend="reference"), exact, g.double())
    for name, a, e, e64 in zip(("grad_x", "grad_weight", "grad_bias"), grads, grads_ref, grads64):
        ref_err = (e.double() - e64).abs().max().item()
        assert_close(a, e64, atol=2 * ref_err + 1e-5, rtol=1e-5, name=f"{backend} {name} vs float64")


@pytest.mark.parametrize("backend, shape", FEW)
@pytest.mark.parametrize("pool", [True, False], ids=["pool", "nopool"])
def test_gradcheck_and_gradgradcheck(backend, shape, pool):
    x, w, b = (t.requires_grad_() for t in _inputs(shape, torch.float64))

    def f(x, w, b):
        return ddkernels.norm_relu_pool(x, w, b, pool=pool, backend=backend)

    assert torch.autograd.gradcheck(f, (x, w, b))
    assert torch.autograd.gradgradcheck(f, (x, w, b))


@pytest.mark.parametrize("backend, shape", FEW)
def test_gradient_matching_double_backward(backend, shape):
    """DC's pattern: parameter gradients with create_graph, a loss on them, its gradient w.r.t. the
    input images. The fused first-order backward must stay differentiable."""
    x, w, b = _inputs(shape, torch.float64)
    target = [torch.randn_like(w), torch.randn_like(b)]

    def meta_grad(be):
        xi, wi, bi = x.clone().requires_grad_(), w.clone().requires_grad_(), b.clone().requires_grad_()
        y = ddkernels.norm_relu_pool(xi, wi, bi, backend=be)
        gw, gb = torch.autograd.grad((y * y).sum(), (wi, bi), create_graph=True)
        loss = ((gw - target[0]) ** 2).sum() + ((gb - target[1]) ** 2).sum()
        return torch.autograd.grad(loss, (xi, wi, bi))

    for a, e, name in zip(meta_grad(backend), meta_grad("reference"), ("x", "weight", "bias")):
        assert_close(a, e, name=f"meta-gradient w.r.t. {name}")


@pytest.mark.parametrize("backend", [p for p in BACKENDS if p.id == "cpu"])
@pytest.mark.parametrize("pool", [True, False], ids=["pool", "nopool"])
def test_third_order_matches_reference(backend, pool):
    """The closed-form double backward is built from differentiable torch ops: one more derivative
    (e.g. a meta-gradient of a gradient-matching loss through an unrolled step) is exact too."""
    x, w, b = _inputs((2, 3, 6, 5), torch.float64)

    def third(be):
        xi, wi, bi = (t.clone().requires_grad_() for t in (x, w, b))
        y = ddkernels.norm_relu_pool(xi, wi, bi, pool=pool, backend=be)
        g1 = torch.autograd.grad((y ** 3).sum(), (xi, wi, bi), create_graph=True)
        g2 = torch.autograd.grad(sum((t * t).sum() for t in g1), (xi, wi, bi), create_graph=True)
        return torch.autograd.grad(sum(t.sin().sum() for t in g2), (xi, wi, bi))

    for a, e, name in zip(third(backend), third("reference"), ("x", "weight", "bias")):
        scale = e.abs().max().item()
        assert_close(a, e, atol=1e-9 * scale, rtol=1e-8, name=f"third-order gradient w.r.t. {name}")


def _tangent(backend, x, w, b, tx, tw, tb, pool):
    with fwAD.dual_level():
        y = ddkernels.norm_relu_pool(fwAD.make_dual(x, tx), fwAD.make_dual(w, tw), fwAD.make_dual(b, tb), pool=pool,
                                     backend=backend)
        return fwAD.unpack_dual(y)


@pytest.mark.parametrize("backend, shape", FEW)
@pytest.mark.parametrize("pool", [True, False], ids=["pool", "nopool"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_forward_mode_matches_reference(backend, shape, pool, dtype):
    """Forward mode (dual inputs, as the unroll's reverse-over-forward product runs the student): the
    output, its tangent J·(tx, tγ, tβ), and the gradients of ⟨ḡ, tangent⟩ w.r.t. every primal and tangent."""
    x, w, b = _inputs(shape, torch.float64)
    tx, tw, tb = torch.randn_like(x), torch.randn_like(w), torch.randn_like(b)
    gbar = torch.randn(reference.norm_relu_pool(x, w, b, 1e-5, pool).shape, dtype=torch.float64)

    def run(be, dt):
        ins = [t.to(dt).requires_grad_() for t in (x, w, b, tx, tw, tb)]
        out, tan = _tangent(be, *ins, pool)
        grads = torch.autograd.grad((tan * gbar.to(dt)).sum(), ins, allow_unused=True)
        # β reaches the tangent through the ReLU mask only: no gradient (the reference's is zeros)
        return [out, tan] + [torch.zeros_like(t) if g is None else g for g, t in zip(grads, ins)]

    names = ["output", "tangent", "d/dx", "d/dweight", "d/dbias", "d/dtx", "d/dtweight", "d/dtbias"]
    got, exact = run(backend, dtype), run("reference", torch.float64)
    ref = run("reference", dtype) if dtype == torch.float32 else exact
    for name, a, e, e64 in zip(names, got, ref, exact):
        if dtype == torch.float64:
            assert_close(a, e64, name=f"{backend} {name}")
        else:  # the 2x rule against the float32 reference's own error
            ref_err = (e.double() - e64).abs().max().item()
            assert_close(a, e64, atol=2 * ref_err + 1e-5, rtol=1e-5, name=f"{backend} {name} vs float64")


@pytest.mark.parametrize("backend", [p for p in BACKENDS if p.id == "cpu"])
@pytest.mark.parametrize("pool", [True, False], ids=["pool", "nopool"])
def test_forward_mode_gradcheck_and_once_differentiable(backend, pool):
    """The fused tangent's backward (two kernels) against finite differences; a derivative beyond it (third
    order through forward mode) is refused, not silently wrong."""
    ins = [t.requires_grad_() for t in _inputs((2, 3, 5, 4), torch.float64)]
    ins += [torch.randn_like(t).requires_grad_() for t in ins]
    assert torch.autograd.gradcheck(lambda *a: _tangent(backend, *a, pool)[1], ins)
    tan = _tangent(backend, *ins, pool)[1]
    (gx,) = torch.autograd.grad(tan.square().sum(), ins[0], create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable"):
        gx.sum().backward()


@pytest.mark.parametrize("backend", [b for b in BACKENDS] + ["reference"])
def test_no_affine(backend):
    x = _inputs((2, 3, 8, 8))[0]
    y = ddkernels.norm_relu_pool(x, backend=backend)
    assert_close(y, reference.norm_relu_pool(x, None, None, 1e-5, True))


@pytest.mark.parametrize("backend", BACKENDS)
def test_only_some_gradients(backend):
    x, w, b = _inputs((2, 3, 8, 8))
    xr = x.clone().requires_grad_()
    (gx,) = torch.autograd.grad(ddkernels.norm_relu_pool(xr, w, b, backend=backend).sum(), xr)
    (gx_ref,) = torch.autograd.grad(reference.norm_relu_pool(xr, w, b, 1e-5, True).sum(), xr)
    assert_close(gx, gx_ref)
    wr = w.clone().requires_grad_()
    (gw,) = torch.autograd.grad(ddkernels.norm_relu_pool(x, wr, b, backend=backend).sum(), wr)
    (gw_ref,) = torch.autograd.grad(reference.norm_relu_pool(x, wr, b, 1e-5, True).sum(), wr)
    assert_close(gw, gw_ref, atol=1e-4)


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_contiguous_input(backend):
    x, w, b = _inputs((2, 3, 8, 8))
    x = x.to(memory_format=torch.channels_last)
    assert_close(ddkernels.norm_relu_pool(x, w, b, backend=backend), reference.norm_relu_pool(x, w, b, 1e-5, True))


@pytest.mark.parametrize("backend", BACKENDS)
def test_repeatable(backend):
    x, w, b = (t.requires_grad_() for t in _inputs((4, 8, 16, 16)))
    y = ddkernels.norm_relu_pool(x, w, b, backend=backend)
    g = torch.randn_like(y)
    first = torch.autograd.grad(y, (x, w, b), g, retain_graph=True)
    second = torch.autograd.grad(y, (x, w, b), g)
    assert all(torch.equal(a, e) for a, e in zip(first, second))


@pytest.mark.skipif(not _ext.cpu_available()[0], reason="C++ extension not built")
def test_cpu_independent_of_thread_count():
    """Per-plane partial sums, summed over n in a fixed order: no dependence on how planes land on threads."""
    x, w, b = (t.requires_grad_() for t in _inputs((8, 16, 16, 16)))
    g = torch.randn(8, 16, 8, 8)
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            y = ddkernels.norm_relu_pool(x, w, b, backend="cpu")
            results.append((y, *torch.autograd.grad(y, (x, w, b), g)))
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(a, e) for a, e in zip(*results))


def test_constant_plane_without_pool():
    """H·W = 1 planes (or constant ones) normalize to exactly 0: the output is relu(bias)."""
    x = torch.randn(3, 5, 1, 1, dtype=torch.float64)
    b = torch.randn(5, dtype=torch.float64)
    for backend in [p.values[0] for p in BACKENDS if not p.marks] + ["reference"]:
        y = ddkernels.norm_relu_pool(x, torch.ones(5, dtype=torch.float64), b, pool=False, backend=backend)
        assert_close(y, b.clamp_min(0).view(1, 5, 1, 1).expand(3, 5, 1, 1), atol=1e-6, name=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_nan_propagates(backend):
    x, w, b = _inputs((1, 2, 4, 4))
    x[0, 0, 1, 1] = float("nan")
    y = ddkernels.norm_relu_pool(x, w, b, backend=backend)
    assert torch.isnan(y[0, 0]).all() and not torch.isnan(y[0, 1]).any()


def test_empty_batch():
    x = torch.rand(0, 3, 8, 8, requires_grad=True)
    w = torch.ones(3, requires_grad=True)
    y = ddkernels.norm_relu_pool(x, w, torch.zeros(3))
    assert y.shape == (0, 3, 4, 4)
    y.sum().backward()
    assert x.grad.shape == x.shape and torch.equal(w.grad, torch.zeros(3))


def test_module():
    m = ddkernels.nn.NormReluPool(4)
    x = torch.randn(2, 4, 8, 8)
    assert_close(m(x), reference.norm_relu_pool(x, torch.ones(4), torch.zeros(4), 1e-5, True))
    assert [n for n, _ in m.named_parameters()] == ["weight", "bias"]
    assert "pool=True" in repr(m)
    assert ddkernels.nn.NormReluPool(4, pool=False)(x).shape == x.shape


@pytest.mark.parametrize("bad, match, exc", [
    (dict(x=torch.rand(3, 8, 8)), r"x must be 4-D \(N, C, H, W\), got shape \(3, 8, 8\)", ValueError),
    (dict(x=torch.zeros(1, 2, 8, 8, dtype=torch.int64)), "x must have a floating-point dtype", TypeError),
    (dict(x=[[1.0]]), "x must be a torch.Tensor", TypeError),
    (dict(weight=torch.ones(3)), r"weight must have shape \(C,\) = \(2,\)", ValueError),
    (dict(bias=torch.ones(2, 1)), r"bias must be 1-D", ValueError),
    (dict(weight=torch.ones(2, dtype=torch.float64)), "weight must have the dtype of x", TypeError),
    (dict(eps=0.0), "eps must be a positive float", ValueError),
    (dict(eps=-1e-5), "eps must be a positive float", ValueError),
    (dict(pool=1), "pool must be a bool", TypeError),
    (dict(x=torch.rand(1, 2, 1, 8)), r"pool=True needs x's H and W >= 2", ValueError),
    (dict(backend="gpu"), "backend must be one of", ValueError),
])
def test_bad_input(bad, match, exc):
    args = dict(x=torch.rand(1, 2, 8, 8), weight=torch.ones(2), bias=torch.zeros(2), eps=1e-5, pool=True, backend="auto")
    args.update(bad)
    with pytest.raises(exc, match=match):
        ddkernels.norm_relu_pool(args["x"], args["weight"], args["bias"], args["eps"], pool=args["pool"],
                                 backend=args["backend"])


def test_explicit_backend_lists_reasons():
    with pytest.raises(BackendUnavailable, match="cpu.*tensors are on meta"):
        ddkernels.norm_relu_pool(torch.rand(1, 2, 8, 8, device="meta"), backend="cpu")
    with pytest.raises(ValueError, match="backend must be one of .*GPUs run 'triton'.*got 'cuda'"):
        ddkernels.norm_relu_pool(torch.rand(1, 2, 8, 8), backend="cuda")


def test_half_on_cpu_matches_reference():
    x = torch.rand(1, 2, 8, 8, dtype=torch.bfloat16)
    assert_close(ddkernels.norm_relu_pool(x), reference.norm_relu_pool(x, None, None, 1e-5, True))


def test_nan_check_opt_in(monkeypatch):
    x = torch.rand(1, 2, 8, 8)
    x[0, 0, 1, 1] = float("nan")
    monkeypatch.setenv("DDKERNELS_CHECK_FINITE", "1")
    with pytest.raises(ValueError, match="x contains NaN"):
        ddkernels.norm_relu_pool(x)
