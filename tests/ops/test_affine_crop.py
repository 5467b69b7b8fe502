"""affine_crop: every kernel backend against the reference (dense interpolation matrices), forward and
backward w.r.t. the image and the windows; the fixed grid against multi_formation (IDC's decode)."""
import pytest
import torch

import ddkernels
from ddkernels import BackendUnavailable, _ext
from ddkernels.ops.affine_crop import reference
from ddkernels.testing import assert_close
from tests.conftest import fused_backends

BACKENDS = fused_backends("affine_crop")

# (N, C, h, w, T, H, W): square and not, shrinking and enlarging, one window and many.
SHAPES = [(2, 3, 10, 7, 4, 9, 11), (1, 1, 28, 28, 4, 28, 28), (3, 2, 6, 6, 5, 4, 13), (2, 1, 5, 9, 1, 5, 9),
          (1, 2, 16, 12, 10, 16, 12)]
SMALL = [s for s in SHAPES if s[0] * s[1] * s[4] <= 15 and s[2] * s[3] <= 100]


def _shape_id(s):
    return "N{}C{}h{}w{}T{}H{}W{}".format(*s)


CASES = [pytest.param(b.values[0], s, marks=b.marks, id=f"{b.id}-{_shape_id(s)}")
         for b in BACKENDS for s in (SMALL if b.values[0] == "triton" and not torch.cuda.is_available() else SHAPES)]


def _windows(n, h, w, t, dtype, gen=None):
    """Random windows around the image (some past its edges), one shorter than a pixel, one far outside."""
    scale = torch.tensor([h, w, h, w], dtype=dtype)
    th = torch.rand(n, t, 4, dtype=dtype, generator=gen) * scale * 1.2 - torch.tensor([1, 1, -0.5, -0.5], dtype=dtype)
    th[0, 0, 2:] = torch.tensor([0.7, -0.3], dtype=dtype)
    th[-1, -1, :2] = torch.tensor([-9.0, w + 12.0], dtype=dtype)
    return th


def _check(backend, shape, dtype):
    n, c, h, w, t, H, W = shape
    x = torch.rand(n, c, h, w, dtype=dtype)
    th = _windows(n, h, w, t, dtype)
    ref = [v.clone().requires_grad_() for v in (x, th)]
    fused = [v.clone().requires_grad_() for v in (x, th)]
    y_ref = ddkernels.affine_crop(*ref, (H, W), backend="reference")
    y = ddkernels.affine_crop(*fused, (H, W), backend=backend)
    assert y.shape == (t * n, c, H, W)
    assert_close(y, y_ref, name=f"{backend} forward")
    g = torch.randn_like(y_ref)
    grads_ref = torch.autograd.grad(y_ref, ref, g)
    grads = torch.autograd.grad(y, fused, g)
    if dtype == torch.float64:
        for name, a, e in zip(("grad_x", "grad_theta"), grads, grads_ref):
            assert_close(a, e, name=f"{backend} {name}")
        return
    # Both gradients are sums (over windows, pixels and channels): the 2x rule against float64.
    exact = [v.double().requires_grad_() for v in (x, th)]
    grads64 = torch.autograd.grad(ddkernels.affine_crop(*exact, (H, W), backend="reference"), exact, g.double())
    y64 = ddkernels.affine_crop(x.double(), th.double(), (H, W), backend="reference")
    ref_err = (y_ref.double() - y64).abs().max().item()
    assert_close(y, y64, atol=2 * ref_err + 1e-6, rtol=0, name=f"{backend} forward vs float64")
    for name, a, e, e64 in zip(("grad_x", "grad_theta"), grads, grads_ref, grads64):
        ref_err = (e.double() - e64).abs().max().item()
        assert_close(a, e64, atol=2 * ref_err + 1e-5, rtol=1e-5, name=f"{backend} {name} vs float64")


@pytest.mark.parametrize("backend, shape", CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_matches_reference(backend, shape, dtype):
    _check(backend, shape, dtype)


INTERPRETED = not torch.cuda.is_available()
GRIDS = [(28, 28, 2, None), (10, 7, 3, (9, 11)), (9, 9, 4, 12), (5, 5, 1, 8)]
# The Triton interpreter runs ~1 ms per program instance and op: one image, one channel, the small grids.
GRID_CASES = [pytest.param(b.values[0] if hasattr(b, "values") else b, g, marks=getattr(b, "marks", ()))
              for b in BACKENDS + ["reference"] for g in GRIDS
              if not (INTERPRETED and getattr(b, "values", [b])[0] == "triton" and g[0] * g[1] > 100)]


@pytest.mark.parametrize("backend, grid", GRID_CASES)
def test_grid_is_idc_decode(backend, grid):
    """IDC's tile grid (with its 0.5 padding past non-divisible edges) is multi_formation's decode."""
    h, w, f, size = grid
    n, c = (1, 1) if INTERPRETED and backend == "triton" else (3, 2)
    x = torch.rand(n, c, h, w, dtype=torch.float64, requires_grad=True)
    theta = ddkernels.crop_grid(h, w, f, n, dtype=torch.float64)
    y = ddkernels.affine_crop(x, theta, size, backend=backend)
    y_ref = ddkernels.multi_formation(x, f, size, backend="reference")
    assert_close(y, y_ref, name="grid forward")
    g = torch.randn_like(y)
    assert_close(torch.autograd.grad(y, x, g)[0], torch.autograd.grad(y_ref, x, g)[0], name="grid grad_x")


def test_reference_matches_a_naive_loop():
    """The reference against the definition, one output pixel at a time."""
    h, w, H, W = 5, 6, 4, 7
    x = torch.rand(1, 1, h, w, dtype=torch.float64)
    th = torch.tensor([[[0.3, -0.8, 3.7, 6.4], [2.5, 1.25, 0.6, 2.0]]], dtype=torch.float64)
    y = reference.affine_crop(x, th, (H, W), 0.5)

    def px(r, c):
        return x[0, 0, r, c].item() if 0 <= r < h and 0 <= c < w else 0.5

    def axis(start, length, o, n):
        s = start + length / n * (o + 0.5) - 0.5
        s = min(max(s, start), start + max(length - 1, 0))
        i = int(torch.floor(torch.tensor(s)))
        return i, s - i

    for k in range(2):
        top, left, hh, ww = th[0, k].tolist()
        for oy in range(H):
            i, ly = axis(top, hh, oy, H)
            for ox in range(W):
                j, lx = axis(left, ww, ox, W)
                v = ((1 - ly) * ((1 - lx) * px(i, j) + lx * px(i, j + 1))
                     + ly * ((1 - lx) * px(i + 1, j) + lx * px(i + 1, j + 1)))
                assert abs(y[k, 0, oy, ox].item() - v) < 1e-12, (k, oy, ox)


@pytest.mark.parametrize("backend", BACKENDS + ["reference"])
def test_gradcheck(backend):
    x = torch.rand(2, 1, 5, 6, dtype=torch.float64, requires_grad=True)
    th = (ddkernels.crop_grid(5, 6, 2, 2, dtype=torch.float64) + 0.3 * torch.randn(2, 4, 4, dtype=torch.float64))
    th.requires_grad_()
    fast = backend == "triton" and INTERPRETED  # interpreter launches: random projections of the same Jacobians
    assert torch.autograd.gradcheck(lambda a, b: ddkernels.affine_crop(a, b, (4, 5), backend=backend), (x, th),
                                    fast_mode=fast)


@pytest.mark.parametrize("backend", BACKENDS)
def test_double_backward(backend):
    """create_graph=True differentiates the reference: second derivatives exist and match it."""
    x = torch.rand(1, 2, 5, 5, dtype=torch.float64, requires_grad=True)
    th = (ddkernels.crop_grid(5, 5, 2, 1, dtype=torch.float64) + 0.2).requires_grad_()
    assert torch.autograd.gradgradcheck(lambda a, b: ddkernels.affine_crop(a, b, 4, backend=backend), (x, th),
                                        fast_mode=True)


@pytest.mark.parametrize("backend", BACKENDS)
def test_backward_bitwise_repeatable(backend):
    n, c, h = (1, 2, 8) if INTERPRETED and backend == "triton" else (2, 3, 14)
    x = torch.rand(n, c, h, h, requires_grad=True)
    th = _windows(n, h, h, 3, torch.float32).requires_grad_()
    y = ddkernels.affine_crop(x, th, h - 2, backend=backend)
    g = torch.randn_like(y)
    g1 = torch.autograd.grad(y, (x, th), g, retain_graph=True)
    g2 = torch.autograd.grad(y, (x, th), g)
    assert all(torch.equal(a, b) for a, b in zip(g1, g2))


@pytest.mark.skipif(not _ext.cpu_available()[0], reason="C++ extension unavailable")
def test_cpu_backward_independent_of_thread_count():
    x = torch.rand(3, 4, 12, 12, requires_grad=True)
    th = _windows(3, 12, 12, 4, torch.float32).requires_grad_()
    g = torch.randn(12, 4, 12, 12)
    n = torch.get_num_threads()
    out = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            out.append(torch.autograd.grad(ddkernels.affine_crop(x, th, backend="cpu"), (x, th), g))
    finally:
        torch.set_num_threads(n)
    assert all(torch.equal(a, b) for a, b in zip(*out))


@pytest.mark.parametrize("backend", BACKENDS)
def test_only_wanted_gradients(backend):
    x = torch.rand(2, 1, 8, 8, requires_grad=True)
    th = ddkernels.crop_grid(8, 8, 2, 2)
    (gx,) = torch.autograd.grad(ddkernels.affine_crop(x, th, backend=backend).sum(), x)
    (gx_ref,) = torch.autograd.grad(ddkernels.affine_crop(x, th, backend="reference").sum(), x)
    assert_close(gx, gx_ref)
    th.requires_grad_()
    (gt,) = torch.autograd.grad(ddkernels.affine_crop(x.detach(), th, backend=backend).sum(), th)
    (gt_ref,) = torch.autograd.grad(ddkernels.affine_crop(x.detach(), th, backend="reference").sum(), th)
    assert_close(gt, gt_ref)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["f16", "bf16"])
def test_half_types(backend, dtype):
    """Half inputs, float32 accumulation: against the float32 reference, rounded once."""
    x = torch.rand(2, 3, 16, 16)
    th = ddkernels.crop_grid(16, 16, 2, 2)
    y = ddkernels.affine_crop(x.to(dtype), th.to(dtype), backend=backend)
    assert y.dtype == dtype
    assert_close(y, reference.affine_crop(x, th, (16, 16), 0.5).to(dtype), name=f"{backend} half forward")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["f16", "bf16"])
def test_cpu_half_is_the_float32_kernel_rounded_once(dtype):
    """The cpu kernel widens half x, theta and grad_y exactly and runs the float32 code: forward and
    both gradients are the float32 kernel's on the same (widened) values, rounded once, bit for bit."""
    if "cpu" not in [p.values[0] for p in BACKENDS if not p.marks]:
        pytest.skip("cpu backend unavailable here")
    n, c, h, w, t, H, W = SHAPES[0]
    x = torch.rand(n, c, h, w).to(dtype)
    th = _windows(n, h, w, t, torch.float32).to(dtype)
    g = torch.randn(t * n, c, H, W).to(dtype)
    half = [v.clone().requires_grad_() for v in (x, th)]
    wide = [v.float().requires_grad_() for v in (x, th)]
    y = ddkernels.affine_crop(*half, (H, W), backend="cpu")
    y32 = ddkernels.affine_crop(*wide, (H, W), backend="cpu")
    got = [y, *torch.autograd.grad(y, half, g)]
    want = [y32, *torch.autograd.grad(y32, wide, g.float())]
    for name, a, e in zip(("forward", "grad_x", "grad_theta"), got, want):
        assert a.dtype == dtype, name
        assert torch.equal(a, e.to(dtype)), name


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_contiguous_input(backend):
    x = torch.rand(2, 3, 16, 16).to(memory_format=torch.channels_last)
    th = _windows(2, 16, 16, 3, torch.float32).transpose(0, 1).contiguous().transpose(0, 1)
    assert_close(ddkernels.affine_crop(x, th, backend=backend), reference.affine_crop(x, th, (16, 16), 0.5))


@pytest.mark.parametrize("backend", BACKENDS + ["reference"])
def test_empty(backend):
    x = torch.rand(0, 3, 8, 8, requires_grad=True)
    y = ddkernels.affine_crop(x, torch.zeros(0, 4, 4), backend=backend)
    assert y.shape == (0, 3, 8, 8)
    y.sum().backward()
    assert x.grad.shape == x.shape
    th = torch.zeros(2, 0, 4, requires_grad=True)
    assert ddkernels.affine_crop(torch.rand(2, 1, 4, 4), th, backend=backend).shape == (0, 1, 4, 4)


def test_module():
    m = ddkernels.nn.AffineCrop.grid(5, 32, 32, 2, size=16)
    x = torch.rand(5, 3, 32, 32)
    assert m(x).shape == (20, 3, 16, 16)
    assert_close(m(x), ddkernels.multi_formation(x, 2, 16))
    assert m.targets(torch.arange(5)).tolist() == list(range(5)) * 4
    assert [n for n, _ in m.named_parameters()] == ["theta"]
    m(x).sum().backward()
    assert m.theta.grad.shape == (5, 4, 4)
    fixed = ddkernels.nn.AffineCrop(m.theta, learnable=False)
    assert not list(fixed.parameters()) and "windows=(5, 4, 4)" in repr(fixed)


X = torch.rand(2, 3, 8, 8)
TH = ddkernels.crop_grid(8, 8, 2, 2)


@pytest.mark.parametrize("args, kw, match, exc", [
    ((X[0], TH), {}, r"x must be 4-D \(N, C, h, w\)", ValueError),
    ((X, TH[0]), {}, r"theta must be 3-D \(N, T, 4\)", ValueError),
    ((X, TH[:1]), {}, r"theta must have shape \(N=2, T, 4\)", ValueError),
    ((X, TH[..., :3]), {}, r"theta must have shape \(N=2, T, 4\)", ValueError),
    ((X, TH.double()), {}, "theta must have the dtype of x", TypeError),
    ((X, TH.long()), {}, "theta must have a floating-point dtype", TypeError),
    ((X.long(), TH), {}, "x must have a floating-point dtype", TypeError),
    ((X, [[0, 0, 4, 4]]), {}, "theta must be a torch.Tensor", TypeError),
    ((X[:, :, :0], TH), {}, r"x must hold images of at least 1×1 pixels", ValueError),
    ((X, TH, (0, 4)), {}, "size must be positive", ValueError),
    ((X, TH, "8"), {}, "size must be None, an int or a pair of ints", TypeError),
    ((X, TH), dict(pad=float("nan")), "pad must be a finite number", ValueError),
    ((X, TH), dict(pad=True), "pad must be a finite number", ValueError),
    ((X, TH), dict(backend="gpu"), "backend must be one of", ValueError),
])
def test_bad_input(args, kw, match, exc):
    with pytest.raises(exc, match=match):
        ddkernels.affine_crop(*args, **kw)


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_finite_windows_refused(backend):
    th = TH.clone()
    th[1, 2, 0] = float("nan")
    with pytest.raises(ValueError, match="theta must be finite"):
        ddkernels.affine_crop(X, th, backend=backend)


def test_crop_grid_bad_input():
    with pytest.raises(ValueError, match=r"factor must be in \[1, 5\]"):
        ddkernels.crop_grid(5, 7, 6)
    with pytest.raises(TypeError, match="h must be an int"):
        ddkernels.crop_grid(5.0, 7, 2)


def test_explicit_backend_lists_reasons():
    with pytest.raises(BackendUnavailable, match="cpu.*tensors are on meta"):
        ddkernels.affine_crop(X.to("meta"), TH.to("meta"), backend="cpu")


needs_ext = pytest.mark.skipif(not _ext.cpu_available()[0], reason=f"C++ extension: {_ext.cpu_available()[1]}")


@needs_ext
def test_auto_takes_the_cpu_kernel_for_half_on_cpu():
    """The cpu kernel takes bfloat16 (computing in float32): auto picks it, as for float32."""
    assert ddkernels.dispatch.OpBackends.registry["affine_crop"].select("auto", X.device, torch.bfloat16) == "cpu"
    y = ddkernels.affine_crop(X.bfloat16(), TH.bfloat16())
    assert y.dtype == torch.bfloat16
    assert torch.equal(y, ddkernels.affine_crop(X.bfloat16(), TH.bfloat16(), backend="cpu"))
    assert_close(y.float(), reference.affine_crop(X, TH, (8, 8), 0.5), atol=1e-2, rtol=1e-2)


# --- the C++ ops directly ------------------------------------------------------------------------


@needs_ext
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16],
                         ids=["f32", "f64", "bf16", "f16"])
def test_opcheck(dtype):
    x = torch.rand(2, 3, 7, 9, dtype=dtype)
    th = _windows(2, 7, 9, 3, dtype)
    torch.library.opcheck(torch.ops.ddkernels.affine_crop_fwd.default, (x, th, 5, 6, 0.5))
    g = torch.randn(6, 3, 5, 6, dtype=dtype)
    torch.library.opcheck(torch.ops.ddkernels.affine_crop_bwd.default, (g, x, th, 0.5, True, True))


@needs_ext
def test_cpp_boundary_names_the_argument():
    fwd, bwd = torch.ops.ddkernels.affine_crop_fwd, torch.ops.ddkernels.affine_crop_bwd
    with pytest.raises(RuntimeError, match=r"theta must have shape \(N=2, T, 4\)"):
        fwd(X, TH[:1].contiguous(), 8, 8, 0.5)
    with pytest.raises(RuntimeError, match="theta must be finite"):
        fwd(X, TH * float("inf"), 8, 8, 0.5)
    with pytest.raises(RuntimeError, match="x must be contiguous"):
        fwd(X.transpose(2, 3), TH, 8, 8, 0.5)
    with pytest.raises(RuntimeError, match="out_h and out_w must be positive"):
        fwd(X, TH, 0, 8, 0.5)
    with pytest.raises(RuntimeError, match=r"grad_y must have shape \(T\*N=8, C=3, H, W\)"):
        bwd(torch.rand(6, 3, 8, 8), X, TH, 0.5, True, True)


@needs_ext
def test_torch_compile_traces_the_cpu_op():
    x = torch.rand(2, 3, 8, 8)
    th = _windows(2, 8, 8, 3, torch.float32)
    a = [v.clone().requires_grad_() for v in (x, th)]
    b = [v.clone().requires_grad_() for v in (x, th)]

    @torch.compile(backend="aot_eager", fullgraph=False)
    def f(*t):
        return ddkernels.affine_crop(*t, backend="cpu").square().sum()

    f(*a).backward()
    ddkernels.affine_crop(*b, backend="reference").square().sum().backward()
    for u, v in zip(a, b):
        assert_close(u.grad, v.grad)


def test_eager_formulation_matches_the_reference():
    """The benchmarks' eager provider (gathers) is the same function, forward and both gradients."""
    x = torch.rand(2, 3, 9, 7, dtype=torch.float64)
    th = _windows(2, 9, 7, 3, torch.float64)
    a = [v.clone().requires_grad_() for v in (x, th)]
    b = [v.clone().requires_grad_() for v in (x, th)]
    ya, yb = reference.affine_crop_eager(*a, (6, 8), 0.5), reference.affine_crop(*b, (6, 8), 0.5)
    assert_close(ya, yb)
    g = torch.randn_like(ya)
    for u, v in zip(torch.autograd.grad(ya, a, g), torch.autograd.grad(yb, b, g)):
        assert_close(u, v)


def test_autocast_runs_in_float32():
    """Sampling coordinates need float32: CPU and CUDA autocast both run the op in float32."""
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = ddkernels.affine_crop(X.bfloat16(), TH.bfloat16())
    assert y.dtype == torch.float32
    assert_close(y, ddkernels.affine_crop(X.bfloat16().float(), TH.bfloat16().float()))
