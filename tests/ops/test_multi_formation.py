"""multi_formation: every kernel backend against the reference (IDC's decode_zoom), fwd and bwd."""
import itertools

import pytest
import torch

import ddkernels
from ddkernels import BackendUnavailable
from ddkernels.ops.multi_formation import reference
from ddkernels.testing import assert_close
from tests.conftest import fused_backends

BACKENDS = fused_backends("multi_formation")

# (N, C, h, factor, size): every h in {8, 28, 32, 64} with every factor in {1..4}, including the
# non-divisible cases that pad with 0.5 (28/3, 32/3, 8/3, 64/3), plus non-default output sizes.
SHAPES = [(n, c, h, f, None) for (h, f), (n, c) in zip(itertools.product((8, 28, 32, 64), (1, 2, 3, 4)),
                                                        itertools.cycle([(1, 1), (3, 3), (2, 1), (1, 3)]))]
SHAPES += [(2, 3, 32, 2, (24, 40)), (2, 1, 28, 3, 32), (1, 3, 9, 4, (5, 11)), (2, 2, 4, 3, None)]
# The Triton interpreter runs ~1 ms per program instance: keep its shapes small.
SMALL = [s for s in SHAPES if s[2] <= 32 and s[0] * s[1] <= 3]


def _shape_id(s):
    n, c, h, f, size = s
    return f"N{n}C{c}h{h}f{f}" + (f"s{size}" if size is not None else "")


# (backend, shape) pairs: the Triton interpreter gets the small shapes only (GPUs run them all).
CASES = [pytest.param(b.values[0], s, marks=b.marks, id=f"{b.id}-{_shape_id(s)}")
         for b in BACKENDS for s in (SMALL if b.values[0] == "triton" and not torch.cuda.is_available() else SHAPES)]


def _check(backend, shape, dtype, atol=None, rtol=None):
    n, c, h, f, size = shape
    x = torch.rand(n, c, h, h, dtype=dtype)
    x_ref = x.clone().requires_grad_()
    x_fused = x.clone().requires_grad_()
    y_ref = reference.multi_formation(x_ref, f, ddkernels.ops.multi_formation.function._normalize_size(size, h, h))
    y = ddkernels.multi_formation(x_fused, f, size, backend=backend)
    assert_close(y, y_ref, atol=atol, rtol=rtol, name=f"{backend} forward")
    g = torch.randn_like(y_ref)
    y_ref.backward(g)
    y.backward(g)
    assert_close(x_fused.grad, x_ref.grad, atol=atol, rtol=rtol, name=f"{backend} grad_x")


@pytest.mark.parametrize("backend, shape", CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_matches_reference(backend, shape, dtype):
    _check(backend, shape, dtype)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["f16", "bf16"])
def test_triton_half_types(dtype):
    """Half inputs, float32 accumulation: compare against the float32 reference, rounded once."""
    if "triton" not in [p.values[0] for p in BACKENDS if not p.marks]:
        pytest.skip("triton backend unavailable here")
    x = torch.rand(2, 3, 16, 16)
    y_ref = reference.multi_formation(x, 2, (16, 16)).to(dtype)
    y = ddkernels.multi_formation(x.to(dtype), 2, backend="triton")
    assert y.dtype == dtype
    assert_close(y, y_ref, name="triton half forward")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", [(2, 2, 5, 2, None), (1, 1, 7, 3, (4, 9)), (1, 2, 4, 4, 6)], ids=_shape_id)
def test_gradcheck(backend, shape):
    n, c, h, f, size = shape
    x = torch.rand(n, c, h, h, dtype=torch.float64, requires_grad=True)
    # The full Jacobian costs one backward per output element: too many interpreter launches for
    # Triton on CPU, so it uses gradcheck's fast mode (random projections of the same Jacobians).
    fast = backend == "triton" and not torch.cuda.is_available()
    assert torch.autograd.gradcheck(lambda t: ddkernels.multi_formation(t, f, size, backend=backend), (x,),
                                    fast_mode=fast)


@pytest.mark.parametrize("backend", BACKENDS)
def test_backward_bitwise_repeatable(backend):
    x = torch.rand(2, 3, 14, 14, requires_grad=True)
    y = ddkernels.multi_formation(x, 3, size=28, backend=backend)
    g = torch.randn_like(y)
    (g1,) = torch.autograd.grad(y, x, g, retain_graph=True)
    (g2,) = torch.autograd.grad(y, x, g)
    assert torch.equal(g1, g2)


@pytest.mark.parametrize("backend", BACKENDS + ["reference"])
def test_tile_order_and_padding(backend):
    """Tile-major order, row-major tiles, 0.5 padding: checked on a readable case by hand."""
    x = torch.arange(2 * 3 * 3, dtype=torch.float32).reshape(2, 1, 3, 3)
    # factor 2 on 3×3: pad to 4×4 with 0.5, tiles of 2×2; size 2 keeps the tiles unresized.
    y = ddkernels.multi_formation(x, 2, 2, backend=backend)
    assert y.shape == (8, 1, 2, 2)
    padded = torch.nn.functional.pad(x, (0, 1, 0, 1), value=0.5)
    for k, (i, j) in enumerate(itertools.product(range(2), range(2))):
        for b in range(2):
            assert torch.equal(y[k * 2 + b, 0], padded[b, 0, 2 * i:2 * i + 2, 2 * j:2 * j + 2]), (k, b)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("hw, f, size", [((8, 12), 3, None), ((28, 20), 2, (14, 10)), ((5, 9), 4, (7, 7))])
def test_non_square(backend, hw, f, size):
    """IDC assumes square images; we tile each side by its own ceil(side / factor)."""
    x = torch.rand(2, 3, *hw, dtype=torch.float64, requires_grad=True)
    out = size or hw
    y_ref = reference.multi_formation(x, f, out)
    y = ddkernels.multi_formation(x, f, size, backend=backend)
    assert_close(y, y_ref, name="non-square forward")
    g = torch.randn_like(y)
    assert_close(torch.autograd.grad(y, x, g)[0], torch.autograd.grad(y_ref, x, g)[0], name="non-square grad")


def test_targets_tile_major():
    y = torch.tensor([0, 1, 2])
    assert ddkernels.multi_formation_targets(y, 2).tolist() == [0, 1, 2] * 4
    assert ddkernels.multi_formation_targets(y, 2, multi=True).tolist() == [0, 1, 2] * 5


@pytest.mark.parametrize("backend", BACKENDS + ["reference"])
def test_multi_variant(backend):
    x = torch.rand(3, 1, 12, 12)
    y = ddkernels.multi_formation(x, 3, multi=True, backend=backend)
    parts = [reference.multi_formation(x, f, (12, 12)) for f in (1, 2, 3)]
    assert_close(y, torch.cat(parts), name="multi")
    assert len(ddkernels.multi_formation_targets(torch.arange(3), 3, multi=True)) == y.shape[0]


def test_module():
    m = ddkernels.nn.MultiFormation(2, size=16)
    x = torch.rand(5, 3, 32, 32)
    assert m(x).shape == (20, 3, 16, 16)
    assert m.targets(torch.arange(5)).tolist() == list(range(5)) * 4
    assert "factor=2" in repr(m)


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_contiguous_input(backend):
    x = torch.rand(2, 3, 16, 16).to(memory_format=torch.channels_last)
    y = ddkernels.multi_formation(x, 2, backend=backend)
    assert_close(y, reference.multi_formation(x, 2, (16, 16)))


def test_empty_batch():
    x = torch.rand(0, 3, 8, 8, requires_grad=True)
    y = ddkernels.multi_formation(x, 2)
    assert y.shape == (0, 3, 8, 8)
    y.sum().backward()
    assert x.grad.shape == x.shape


@pytest.mark.parametrize("bad, match, exc", [
    (dict(x=torch.rand(3, 8, 8)), r"x must be 4-D \(N, C, h, w\), got shape \(3, 8, 8\)", ValueError),
    (dict(x=torch.zeros(1, 1, 8, 8, dtype=torch.int64)), "x must have a floating-point dtype", TypeError),
    (dict(factor=0), r"factor must be in \[1, 8\], got 0", ValueError),
    (dict(factor=9), r"factor must be in \[1, 8\], got 9", ValueError),
    (dict(factor=2.0), "factor must be an int", TypeError),
    (dict(size=(3,)), "size must be None, an int or a pair", TypeError),
    (dict(size=0), "size must be positive", ValueError),
    (dict(x=[[1.0]]), "x must be a torch.Tensor", TypeError),
    (dict(backend="gpu"), "backend must be one of", ValueError),
])
def test_bad_input(bad, match, exc):
    args = dict(x=torch.rand(1, 1, 8, 8), factor=2, size=None, backend="auto")
    args.update(bad)
    with pytest.raises(exc, match=match):
        ddkernels.multi_formation(args["x"], args["factor"], args["size"], backend=args["backend"])


def test_nonsquare_factor_bound_uses_short_side():
    with pytest.raises(ValueError, match=r"factor must be in \[1, 4\], got 5"):
        ddkernels.multi_formation(torch.rand(1, 1, 4, 9), 5)


def test_explicit_backend_lists_reasons():
    with pytest.raises(BackendUnavailable, match="cpu.*tensors are on meta"):
        ddkernels.multi_formation(torch.rand(1, 1, 8, 8, device="meta"), 2, backend="cpu")
    with pytest.raises(ValueError, match="backend must be one of .*GPUs run 'triton'.*got 'cuda'"):
        ddkernels.multi_formation(torch.rand(1, 1, 8, 8), 2, backend="cuda")


def test_half_on_cpu_matches_reference():
    x = torch.rand(1, 1, 8, 8, dtype=torch.bfloat16)
    assert_close(ddkernels.multi_formation(x, 2), reference.multi_formation(x, 2, (8, 8)))


def test_nan_check_opt_in(monkeypatch):
    x = torch.rand(1, 1, 8, 8)
    x[0, 0, 1, 1] = float("nan")
    assert torch.isnan(ddkernels.multi_formation(x, 2)).any()  # default: no scan, NaN propagates
    monkeypatch.setenv("DDKERNELS_CHECK_FINITE", "1")
    with pytest.raises(ValueError, match="x contains NaN"):
        ddkernels.multi_formation(x, 2)


def test_eager_vectorized_matches_reference():
    x = torch.rand(3, 2, 28, 28)
    assert_close(reference.multi_formation_eager(x, 3, (28, 28)), reference.multi_formation(x, 3, (28, 28)))
