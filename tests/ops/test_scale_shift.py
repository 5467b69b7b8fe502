"""scale_shift: every kernel backend against the reference (HaBa's loop over hallucinators),
both modes, both parameter layouts, with and without instance normalization, fwd and all grads."""
import pytest
import torch

import ddkernels
from ddkernels import BackendUnavailable, _ext
from ddkernels.ops.scale_shift import reference, segment_table
from ddkernels.testing import assert_close
from tests.conftest import fused_backends

BACKENDS = fused_backends("scale_shift")
INTERPRETED = not torch.cuda.is_available()

# (Hn, B, C, h, w). HaBa: 5 hallucinators, 3×30×30 encoded features, B = 10…500 bases; then the
# odd ones: a single base, h·w = 1 (constant planes under normalize), non-square, tiny.
SHAPES = [(5, 10, 3, 30, 30), (3, 1, 2, 5, 7), (2, 3, 3, 1, 1), (1, 2, 1, 4, 4)]
HABA_LARGE = [(5, 100, 3, 30, 30), (5, 500, 3, 30, 30)]
# The Triton interpreter runs ~1 ms per program instance: small shapes only (L = 231 spans two
# parameter blocks, so the multi-block paths run too).
SMALL = [(2, 3, 2, 5, 6), (3, 1, 2, 7, 33), (2, 3, 3, 1, 1)]
MODES = ["product", "sampled"]
LAYOUTS = ["pixel", "channel"]


def _shape_id(s):
    return "Hn{}B{}C{}_{}x{}".format(*s)


CASES = [pytest.param(b.values[0], s, marks=b.marks, id=f"{b.id}-{_shape_id(s)}")
         for b in BACKENDS for s in (SMALL if b.values[0] == "triton" and INTERPRETED else SHAPES)]


def _inputs(shape, mode, layout, dtype=torch.float32, index=None):
    hn, b, c, h, w = shape
    x = torch.randn((hn, b, c, h, w) if mode == "product" else (b, c, h, w), dtype=dtype)
    pshape = (hn, c, h, w) if layout == "pixel" else (hn, c)
    # Away from HaBa's init (1, 0) so every term of the gradient matters.
    scale = 1 + 0.5 * torch.randn(pshape, dtype=dtype)
    shift = torch.randn(pshape, dtype=dtype)
    if mode == "sampled" and index is None:
        index = torch.randint(0, hn, (b,))
    return x, scale, shift, index


def _check(backend, shape, mode, layout, normalize, dtype, atol=None, rtol=None):
    x, scale, shift, index = _inputs(shape, mode, layout, dtype)
    ref = [t.clone().requires_grad_() for t in (x, scale, shift)]
    fused = [t.clone().requires_grad_() for t in (x, scale, shift)]
    y_ref = ddkernels.scale_shift(*ref, index=index, normalize=normalize, backend="reference")
    y = ddkernels.scale_shift(*fused, index=index, normalize=normalize, backend=backend)
    assert_close(y, y_ref, atol=atol, rtol=rtol, name=f"{backend} forward")
    g = torch.randn_like(y_ref)
    grads_ref = torch.autograd.grad(y_ref, ref, g)
    grads = torch.autograd.grad(y, fused, g)
    if dtype == torch.float64:
        for name, a, e in zip(("grad_x", "grad_scale", "grad_shift"), grads, grads_ref):
            assert_close(a, e, atol=atol, rtol=rtol, name=f"{backend} {name}")
        return
    # dscale/dshift sum over up to 500 samples: summation order matters in float32. Flash-attention's
    # rule: the fused error against a float64 reference is at most 2x the float32 reference's own.
    exact = [t.double().requires_grad_() for t in (x, scale, shift)]
    y64 = ddkernels.scale_shift(*exact, index=index, normalize=normalize, backend="reference")
    grads64 = torch.autograd.grad(y64, exact, g.double())
    for name, a, e, e64 in zip(("grad_x", "grad_scale", "grad_shift"), grads, grads_ref, grads64):
        ref_err = (e.double() - e64).abs().max().item()
        assert_close(a, e64, atol=2 * ref_err + 1e-5, rtol=1e-5, name=f"{backend} {name} vs float64")


@pytest.mark.parametrize("backend, shape", CASES)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("normalize", [False, True], ids=["plain", "norm"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_matches_reference(backend, shape, mode, layout, normalize, dtype):
    _check(backend, shape, mode, layout, normalize, dtype)


# B = 100 in every mode; B = 500 (the longest dscale/dshift sums) without the normalized product,
# whose float32 + float64 references alone take seconds.
HABA_LARGE_CASES = [(s, m, n) for s in HABA_LARGE for m in MODES for n in (False, True)
                    if not (s[1] == 500 and m == "product" and n)]


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b.values[0] != "triton" or not INTERPRETED])
@pytest.mark.parametrize("shape, mode, normalize", HABA_LARGE_CASES,
                         ids=[f"{_shape_id(s)}-{m}-{'norm' if n else 'plain'}" for s, m, n in HABA_LARGE_CASES])
def test_matches_reference_haba_batches(backend, shape, mode, normalize):
    """HaBa's per-pixel layout at B = 100 and 500 bases (float32: the long dscale/dshift sums)."""
    _check(backend, shape, mode, "pixel", normalize, torch.float32)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["f16", "bf16"])
@pytest.mark.parametrize("normalize", [False, True], ids=["plain", "norm"])
def test_triton_half_types(dtype, normalize):
    """Half inputs, float32 accumulation: compare against the float32 reference, rounded once."""
    if "triton" not in [p.values[0] for p in BACKENDS if not p.marks]:
        pytest.skip("triton backend unavailable here")
    x, scale, shift, index = _inputs((2, 3, 2, 5, 6), "sampled", "pixel")
    y_ref = reference.scale_shift(x, scale, shift, index, normalize).to(dtype)
    y = ddkernels.scale_shift(x.to(dtype), scale.to(dtype), shift.to(dtype), index=index, normalize=normalize,
                              backend="triton")
    assert y.dtype == dtype
    assert_close(y, y_ref, name="triton half forward")


@pytest.mark.parametrize("backend", BACKENDS + ["reference"])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("normalize", [False, True], ids=["plain", "norm"])
def test_gradcheck(backend, mode, layout, normalize):
    x, scale, shift, index = _inputs((2, 2, 2, 2, 3), mode, layout, torch.float64)
    args = tuple(t.requires_grad_() for t in (x, scale, shift))
    # The full Jacobian costs one backward per output element: too many interpreter launches for
    # Triton on CPU, so it uses gradcheck's fast mode (random projections of the same Jacobians).
    fast = backend == "triton" and INTERPRETED
    assert torch.autograd.gradcheck(
        lambda *t: ddkernels.scale_shift(*t, index=index, normalize=normalize, backend=backend), args,
        fast_mode=fast)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("normalize", [False, True], ids=["plain", "norm"])
def test_backward_bitwise_repeatable(backend, normalize):
    shape = (3, 6, 2, 5, 6) if backend == "triton" and INTERPRETED else (5, 64, 3, 30, 30)
    x, scale, shift, index = _inputs(shape, "sampled", "pixel")
    args = [t.requires_grad_() for t in (x, scale, shift)]
    y = ddkernels.scale_shift(*args, index=index, normalize=normalize, backend=backend)
    g = torch.randn_like(y)
    first = torch.autograd.grad(y, args, g, retain_graph=True)
    second = torch.autograd.grad(y, args, g)
    assert all(torch.equal(a, b) for a, b in zip(first, second))


@pytest.mark.parametrize("normalize", [False, True], ids=["plain", "norm"])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_cpu_backward_independent_of_thread_count(normalize, layout):
    """The CPU reduction order is fixed by the segment table, not by how tasks land on threads."""
    if "cpu" not in [p.values[0] for p in BACKENDS if not p.marks]:
        pytest.skip("cpu backend unavailable here")
    x, scale, shift, index = _inputs((5, 40, 3, 30, 30), "sampled", layout)
    args = [t.requires_grad_() for t in (x, scale, shift)]
    g = torch.randn_like(x)
    threads = torch.get_num_threads()
    grads = []
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            y = ddkernels.scale_shift(*args, index=index, normalize=normalize, backend="cpu")
            grads.append(torch.autograd.grad(y, args, g))
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(a, b) for a, b in zip(*grads))


@pytest.mark.parametrize("backend", BACKENDS + ["reference"])
def test_constant_planes_stay_finite_with_normalize(backend):
    """h·w = 1 (or any constant plane) has zero variance: eps keeps it finite, output = shift."""
    x = torch.randn(3, 2, 4, 1, 1, requires_grad=True)
    scale = torch.randn(3, 4, 1, 1, requires_grad=True)
    shift = torch.randn(3, 4, 1, 1, requires_grad=True)
    y = ddkernels.scale_shift(x, scale, shift, normalize=True, backend=backend)
    assert torch.equal(y, shift.detach()[:, None].expand_as(y))
    y.sum().backward()
    for t in (x, scale, shift):
        assert torch.isfinite(t.grad).all()
    assert torch.equal(x.grad, torch.zeros_like(x))


@pytest.mark.parametrize("backend", BACKENDS + ["reference"])
def test_unused_hallucinators_get_zero_grad(backend):
    """HaBa's training step: one hallucinator for the whole chunk; the others get zero gradients."""
    x, scale, shift, _ = _inputs((3, 4, 2, 5, 6), "sampled", "pixel")
    scale.requires_grad_(), shift.requires_grad_()
    index = torch.full((4,), 1)
    y = ddkernels.scale_shift(x, scale, shift, index=index, backend=backend)
    assert_close(y, scale.detach()[1] * x + shift.detach()[1])
    y.backward(torch.ones_like(y))
    for k in (0, 2):
        assert torch.equal(scale.grad[k], torch.zeros_like(scale[k]))
        assert torch.equal(shift.grad[k], torch.zeros_like(shift[k]))
    assert_close(shift.grad[1], torch.full_like(shift[1], 4.0))


@pytest.mark.parametrize("backend", BACKENDS + ["reference"])
def test_per_channel_layouts_agree(backend):
    x, scale, shift, _ = _inputs((2, 3, 2, 5, 6), "product", "channel")
    s2, t2 = scale.clone().requires_grad_(), shift.clone().requires_grad_()
    s4, t4 = scale[..., None, None].clone().requires_grad_(), shift[..., None, None].clone().requires_grad_()
    y2 = ddkernels.scale_shift(x, s2, t2, backend=backend)
    y4 = ddkernels.scale_shift(x, s4, t4, backend=backend)
    assert torch.equal(y2, y4)
    y2.sum().backward()
    y4.sum().backward()
    assert s2.grad.shape == (2, 2) and s4.grad.shape == (2, 2, 1, 1)
    assert torch.equal(s2.grad, s4.grad.flatten(1))


@pytest.mark.parametrize("backend", BACKENDS + ["reference"])
def test_product_equals_sampled_with_every_pair(backend):
    x, scale, shift, _ = _inputs((3, 4, 2, 5, 6), "product", "pixel")
    y = ddkernels.scale_shift(x, scale, shift, backend=backend)
    index = torch.arange(3).repeat_interleave(4)
    ys = ddkernels.scale_shift(x.reshape(12, 2, 5, 6), scale, shift, index=index, backend=backend)
    assert torch.equal(y.reshape(12, 2, 5, 6), ys)


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_contiguous_input(backend):
    x, scale, shift, _ = _inputs((2, 3, 2, 5, 6), "product", "pixel")
    xt = x.transpose(0, 1).contiguous().transpose(0, 1)  # (Hn, B) stored base-major
    assert not xt.is_contiguous()
    assert_close(ddkernels.scale_shift(xt, scale, shift, normalize=True, backend=backend),
                 reference.scale_shift(x, scale, shift, normalize=True))


@pytest.mark.parametrize("backend", BACKENDS + ["reference"])
@pytest.mark.filterwarnings("ignore:var\\(\\)")  # the reference computes var() of empty planes
def test_empty_batch(backend):
    x = torch.randn(2, 0, 3, 4, 4, requires_grad=True)
    scale = torch.randn(2, 3, 4, 4, requires_grad=True)
    shift = torch.randn(2, 3, 4, 4, requires_grad=True)
    y = ddkernels.scale_shift(x, scale, shift, normalize=True, backend=backend)
    assert y.shape == x.shape
    y.sum().backward()
    assert torch.equal(scale.grad, torch.zeros_like(scale))


def test_segment_table():
    order, offsets = segment_table(torch.tensor([2, 0, 2, 1, 0]), 4)
    assert order.tolist() == [1, 4, 3, 0, 2]
    assert offsets.tolist() == [0, 2, 3, 5, 5]


def test_eager_broadcast_matches_reference():
    x, scale, shift, _ = _inputs((3, 4, 2, 5, 6), "product", "pixel")
    for normalize in (False, True):
        assert_close(reference.scale_shift_eager(x, scale, shift, normalize),
                     reference.scale_shift(x, scale, shift, normalize=normalize))


def _bad_call(**bad):
    args = dict(x=torch.randn(3, 4, 2, 5, 6), scale=torch.randn(3, 2, 5, 6), shift=torch.randn(3, 2, 5, 6),
                index=None, normalize=False, eps=1e-5, backend="auto")
    args.update(bad)
    x, scale, shift = args.pop("x"), args.pop("scale"), args.pop("shift")
    return ddkernels.scale_shift(x, scale, shift, **args)


SAMPLED = dict(x=torch.randn(4, 2, 5, 6))


@pytest.mark.parametrize("bad, match, exc", [
    (dict(scale=torch.randn(3, 2, 5, 7), shift=torch.randn(3, 2, 5, 7)), r"scale must be per-pixel \(Hn, 2, 5, 6\)", ValueError),
    (dict(scale=torch.randn(3, 3, 5, 6), shift=torch.randn(3, 3, 5, 6)), "scale must have C=2 channels like x", ValueError),
    (dict(scale=torch.randn(2, 2, 5, 6), shift=torch.randn(2, 2, 5, 6)), r"scale and shift must have Hn=3 hallucinators \(x.shape\[0\]\)", ValueError),
    (dict(scale=torch.randn(3, 2, 30)), r"scale must be 4-D \(Hn, C, h, w\)", ValueError),
    (dict(shift=torch.randn(3, 2)), r"shift must have the shape of scale \(3, 2, 5, 6\)", ValueError),
    (dict(shift=torch.randn(3, 2, 5, 6, dtype=torch.float64)), "shift must have the dtype of x", TypeError),
    (dict(x=torch.randn(4, 2, 5, 6)), r"x must be 5-D \(Hn, B, C, h, w\) in product mode", ValueError),
    (dict(x=torch.randn(3, 4, 2, 5, 6), index=torch.zeros(4, dtype=torch.long)), r"x must be 4-D \(B, C, h, w\) in sampled mode", ValueError),
    (dict(SAMPLED, index=torch.tensor([0, 1, 3, 2])), r"index must hold hallucinator numbers in \[0, Hn=3\), got values in \[0, 3\]", ValueError),
    (dict(SAMPLED, index=torch.tensor([0, -1, 1, 2])), r"index must hold hallucinator numbers in \[0, Hn=3\)", ValueError),
    (dict(SAMPLED, index=torch.tensor([0, 1, 1, 2], dtype=torch.int32)), "index must have dtype int64", TypeError),
    (dict(SAMPLED, index=[0, 1, 1, 2]), "index must be a torch.Tensor", TypeError),
    (dict(SAMPLED, index=torch.zeros(3, dtype=torch.long)), r"index must have shape \(B,\) = \(4,\)", ValueError),
    (dict(x=torch.zeros(3, 4, 2, 5, 6, dtype=torch.int64)), "x must have a floating-point dtype", TypeError),
    (dict(eps=-1.0), "eps must be a non-negative number", ValueError),
    (dict(normalize=1), "normalize must be a bool", TypeError),
    (dict(backend="gpu"), "backend must be one of", ValueError),
])
def test_bad_input(bad, match, exc):
    with pytest.raises(exc, match=match):
        _bad_call(**bad)


def test_explicit_backend_lists_reasons():
    x, scale, shift, _ = _inputs((2, 3, 2, 5, 6), "product", "pixel", torch.float32)
    with pytest.raises(BackendUnavailable, match="cpu.*tensors are on meta"):
        ddkernels.scale_shift(x.to("meta"), scale.to("meta"), shift.to("meta"), backend="cpu")
    with pytest.raises(ValueError, match="backend must be one of .*GPUs run 'triton'.*got 'cuda'"):
        ddkernels.scale_shift(x.float(), scale.float(), shift.float(), backend="cuda")


# --- the C++ ops directly ------------------------------------------------------------------------

needs_ext = pytest.mark.skipif(not _ext.cpu_available()[0], reason=f"C++ extension: {_ext.cpu_available()[1]}")


def _op_args(normalize, per_pixel, dtype=torch.float32):
    x = torch.randn(6, 3, 20, dtype=dtype)
    scale = torch.randn(3, 3, 20 if per_pixel else 1, dtype=dtype)
    shift = torch.randn_like(scale)
    index = torch.tensor([2, 0, 2, 1, 0, 2])
    return x, scale, shift, index


@needs_ext
@pytest.mark.parametrize("normalize", [False, True], ids=["plain", "norm"])
@pytest.mark.parametrize("per_pixel", [True, False], ids=["pixel", "channel"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_opcheck(normalize, per_pixel, dtype):
    x, scale, shift, index = _op_args(normalize, per_pixel, dtype)
    torch.library.opcheck(torch.ops.ddkernels.scale_shift_fwd.default, (x, scale, shift, index, normalize, 1e-5))
    _, mean, rstd = torch.ops.ddkernels.scale_shift_fwd(x, scale, shift, index, normalize, 1e-5)
    order, offsets = segment_table(index, 3)
    torch.library.opcheck(torch.ops.ddkernels.scale_shift_bwd.default,
                          (torch.randn_like(x), x, scale, order, offsets, mean, rstd, normalize))


@needs_ext
def test_cpp_boundary_names_the_argument():
    x, scale, shift, index = _op_args(True, True)
    fwd, bwd = torch.ops.ddkernels.scale_shift_fwd, torch.ops.ddkernels.scale_shift_bwd
    with pytest.raises(RuntimeError, match="index holds 3 at position 1, outside"):
        fwd(x, scale, shift, torch.tensor([0, 3, 0, 0, 0, 0]), True, 1e-5)
    with pytest.raises(RuntimeError, match="x must be contiguous"):
        fwd(x.transpose(0, 1).contiguous().transpose(0, 1), scale, shift, index, True, 1e-5)
    with pytest.raises(RuntimeError, match="shift must have the shape of scale"):
        fwd(x, scale, shift[:, :, :1].contiguous(), index, True, 1e-5)
    with pytest.raises(RuntimeError, match="scale must have L=20"):
        fwd(x, scale[:, :, :4].contiguous(), shift[:, :, :4].contiguous(), index, True, 1e-5)
    with pytest.raises(RuntimeError, match=r"index must have shape \(N=6,\)"):
        fwd(x, scale, shift, index[:5], True, 1e-5)
    _, mean, rstd = fwd(x, scale, shift, index, True, 1e-5)
    order, offsets = segment_table(index, 3)
    with pytest.raises(RuntimeError, match="offsets must run from 0 to N=6"):
        bwd(x, x, scale, order, offsets - 1, mean, rstd, True)
    with pytest.raises(RuntimeError, match="order holds 6 outside"):
        bwd(x, x, scale, order + 1, offsets, mean, rstd, True)
    with pytest.raises(RuntimeError, match=r"mean and rstd must have shape \(N=6, C=3\)"):
        bwd(x, x, scale, order, offsets, mean[:2], rstd[:2], True)


@needs_ext
def test_torch_compile_traces_the_cpu_op():
    x, scale, shift, index = _inputs((3, 4, 2, 5, 6), "sampled", "pixel")
    a = [t.clone().requires_grad_() for t in (x, scale, shift)]
    b = [t.clone().requires_grad_() for t in (x, scale, shift)]

    @torch.compile(backend="aot_eager", fullgraph=False)
    def f(*t):
        return ddkernels.scale_shift(*t, index=index, normalize=True, backend="cpu").square().sum()

    f(*a).backward()
    ddkernels.scale_shift(*b, index=index, normalize=True, backend="reference").square().sum().backward()
    for u, v in zip(a, b):
        assert_close(u.grad, v.grad)
