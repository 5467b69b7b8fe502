"""small_conv: the C++ direct convolution against F.conv2d / F.conv_transpose2d, forward and every
gradient, plus gradcheck, opcheck, bitwise repeatability and the boundary errors."""
import pytest
import torch
import torch.nn.functional as F

from ddkernels import BackendUnavailable, _ext
from ddkernels.ops.small_conv import BACKENDS, small_conv2d, small_conv_transpose2d
from ddkernels.testing import assert_close

needs_ext = pytest.mark.skipif(not _ext.cpu_available()[0], reason=f"C++ extension: {_ext.cpu_available()[1]}")
pytestmark = needs_ext

# (N, groups, cin per group, cout per group, H, W, K): HaBa's encoder and decoder first, then
# 1–4 channels per group, odd and non-square planes, a single sample, K = 1/3/5.
SHAPES = [
    (3, 1, 3, 15, 12, 12, 3),  # encoder: 3 -> Hn·mid, ungrouped
    (3, 5, 3, 3, 10, 10, 3),   # decoder as a conv: Hn groups of 3
    (1, 5, 1, 4, 7, 9, 3),
    (2, 1, 4, 1, 5, 11, 5),
    (2, 5, 2, 2, 6, 5, 1),
    (1, 1, 1, 1, 5, 5, 5),
    (2, 2, 3, 4, 9, 17, 3),   # 17 columns: a full vector block plus a tail
]


def _id(s):
    return "N{}g{}ci{}co{}_{}x{}k{}".format(*s)


def _tensors(shape, dtype, bias=True):
    n, g, ci, co, h, w, k = shape
    x = torch.randn(n, g * ci, h, w, dtype=dtype)
    wt = torch.randn(g * co, ci, k, k, dtype=dtype)
    b = torch.randn(g * co, dtype=dtype) if bias else None
    return x, wt, b


def _grads(fn, tensors, gy):
    leaves = [t.clone().requires_grad_() for t in tensors if t is not None]
    y = fn(*leaves)
    return [y.detach(), *torch.autograd.grad(y, leaves, gy)]


def _compare(ours, torch_impl, tensors, dtype, what):
    """float64: against PyTorch to 1e-10. float32: the error against a float64 run of PyTorch may
    be at most 2x PyTorch's own float32 error (plus 1e-6 of the scale; the grad_w/grad_b sums run
    in a different order)."""
    out_shape = torch_impl(*[t for t in tensors if t is not None]).shape
    gy = torch.randn(out_shape, dtype=dtype)
    got = _grads(ours, tensors, gy)
    names = ["forward", "grad_x", "grad_w", "grad_b"]
    if dtype == torch.float64:
        for name, a, e in zip(names, got, _grads(torch_impl, tensors, gy)):
            assert_close(a, e, name=f"{what} {name}")
        return
    exact = _grads(torch_impl, [None if t is None else t.double() for t in tensors], gy.double())
    theirs = _grads(torch_impl, tensors, gy)
    for name, a, t, e in zip(names, got, theirs, exact):
        tol = 2 * (t.double() - e).abs().max().item() + 1e-6 * e.abs().max().item()
        assert_close(a, e, atol=tol, rtol=0, name=f"{what} {name} (float32)")


def _compare_half(ours, torch_impl, tensors, dtype, what):
    """Flash-attention's rule (tests/ops/test_half.py): the half kernel's error against a float64
    run is at most 2x PyTorch's own error in that dtype, plus two half ulps of the result's scale;
    every result comes back in the half dtype."""
    out_shape = torch_impl(*[t for t in tensors if t is not None]).shape
    gy = torch.randn(out_shape, dtype=torch.float64)
    half = [None if t is None else t.to(dtype) for t in tensors]
    got = _grads(ours, half, gy.to(dtype))
    theirs = _grads(torch_impl, half, gy.to(dtype))
    exact = _grads(torch_impl, [None if t is None else t.double() for t in half], gy.to(dtype).double())
    eps = torch.finfo(dtype).eps
    for name, a, t, e in zip(["forward", "grad_x", "grad_w", "grad_b"], got, theirs, exact):
        assert a.dtype == dtype, f"{what} {name}: {a.dtype}"
        err, ref_err = (a.double() - e).abs().max().item(), (t.double() - e).abs().max().item()
        allowed = 2 * ref_err + 2 * eps * max(1.0, e.abs().max().item())
        assert err <= allowed, f"{what} {name}: error {err:.3g} > {allowed:.3g} (PyTorch {dtype}: {ref_err:.3g})"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16],
                         ids=["f32", "f64", "bf16", "f16"])
@pytest.mark.parametrize("pad_mode", ["valid", "full"])
@pytest.mark.parametrize("shape", SHAPES, ids=_id)
def test_conv2d_matches_torch(shape, pad_mode, dtype):
    k, g = shape[6], shape[1]
    padding = 0 if pad_mode == "valid" else k - 1
    ours = lambda x, w, b: small_conv2d(x, w, b, padding, g, backend="cpu")  # noqa: E731
    theirs = lambda x, w, b: F.conv2d(x, w, b, padding=padding, groups=g)  # noqa: E731
    if dtype in (torch.bfloat16, torch.float16):  # half kernels: the 2x rule (_compare_half)
        _compare_half(ours, theirs, _tensors(shape, torch.float64), dtype, "conv2d")
    else:
        _compare(ours, theirs, _tensors(shape, dtype), dtype, "conv2d")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("shape", SHAPES[:5], ids=_id)
def test_conv_transpose2d_matches_torch(shape, dtype):
    n, g, ci, co, h, w, k = shape
    x = torch.randn(n, g * ci, h, w, dtype=dtype)
    wt = torch.randn(g * ci, co, k, k, dtype=dtype)  # conv_transpose2d layout (C, O/groups, K, K)
    b = torch.randn(g * co, dtype=dtype)
    _compare(lambda x, w, b: small_conv_transpose2d(x, w, b, g, backend="cpu"),
             lambda x, w, b: F.conv_transpose2d(x, w, b, groups=g), (x, wt, b), dtype, "conv_transpose2d")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "f16"])
def test_conv_transpose2d_half_within_twice_pytorch_error(dtype):
    n, g, ci, co, h, w, k = SHAPES[1]  # HaBa's decoder
    x = torch.randn(n, g * ci, h, w, dtype=torch.float64)
    wt = torch.randn(g * ci, co, k, k, dtype=torch.float64)
    _compare_half(lambda x, w, b: small_conv_transpose2d(x, w, b, g, backend="cpu"),
                  lambda x, w, b: F.conv_transpose2d(x, w, b, groups=g),
                  (x, wt, torch.randn(g * co, dtype=torch.float64)), dtype, "conv_transpose2d")


def test_no_bias_and_partial_grads():
    x, wt, _ = _tensors(SHAPES[1], torch.float64, bias=False)
    wl = wt.clone().requires_grad_()  # only the weight needs a gradient: grad_x is never computed
    y = small_conv2d(x, wl, None, 1, 5, backend="cpu")
    assert_close(y, F.conv2d(x, wt, padding=1, groups=5), name="forward without bias")
    (gw,) = torch.autograd.grad(y.square().sum(), [wl])
    wr = wt.clone().requires_grad_()
    (gw_ref,) = torch.autograd.grad(F.conv2d(x, wr, padding=1, groups=5).square().sum(), [wr])
    assert_close(gw, gw_ref, name="grad_w without bias")


@pytest.mark.parametrize("padding", [0, 2])
def test_gradcheck(padding):
    x, wt, b = (t.requires_grad_() for t in _tensors((2, 2, 1, 2, 4, 5, 3), torch.float64))
    assert torch.autograd.gradcheck(lambda x, w, b: small_conv2d(x, w, b, padding, 2, backend="cpu"), (x, wt, b))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_opcheck(dtype):
    x, wt, b = _tensors((2, 5, 3, 3, 6, 7, 3), dtype)
    torch.library.opcheck(torch.ops.ddkernels.small_conv2d_fwd.default, (x, wt, b, 2, 5))
    torch.library.opcheck(torch.ops.ddkernels.small_conv2d_fwd.default, (x, wt, None, 0, 5))
    gy = torch.randn(2, 15, 8, 9, dtype=dtype)
    torch.library.opcheck(torch.ops.ddkernels.small_conv2d_bwd.default, (gy, x, wt, 2, 5, True, True, True))
    torch.library.opcheck(torch.ops.ddkernels.small_conv2d_bwd.default, (gy, x, wt, 2, 5, False, True, False))


def test_backward_bitwise_repeatable_across_thread_counts():
    # grad_w/grad_b reduce over the batch in fixed chunks, so neither a rerun nor the thread count
    # may change a bit. 37 samples = several chunks plus a partial one.
    x, wt, b = _tensors((37, 5, 3, 3, 30, 30, 3), torch.float32)
    gy = torch.randn(37, 15, 32, 32)
    threads = torch.get_num_threads()
    try:
        runs = []
        for n in (1, 2, 2):
            torch.set_num_threads(n)
            runs.append(torch.ops.ddkernels.small_conv2d_bwd(gy, x, wt, 2, 5, True, True, True))
    finally:
        torch.set_num_threads(threads)
    for run in runs[1:]:
        for a, e in zip(run, runs[0]):
            assert torch.equal(a, e)


def test_backends_declared():
    assert BACKENDS.select("auto", torch.device("cpu"), torch.float32) == "cpu"
    for dtype in (torch.bfloat16, torch.float16):  # half kernels: float32 inside, rounded once
        assert BACKENDS.select("auto", torch.device("cpu"), dtype) == "cpu"
    with pytest.raises(BackendUnavailable, match="cuDNN through the reference"):
        BACKENDS.select("triton", torch.device("cpu"), torch.float32)
    assert BACKENDS.select("auto", torch.device("cuda"), torch.float32) == "reference"


@pytest.mark.parametrize("call, match, exc", [
    (lambda x, w, b: small_conv2d(x[0], w, b), "x must be 4-D", ValueError),
    (lambda x, w, b: small_conv2d(x, w[..., :2], b), "weight must have a square kernel", ValueError),
    (lambda x, w, b: small_conv2d(x, w, b, padding=3), "padding must be in", ValueError),
    (lambda x, w, b: small_conv2d(x, w, b, groups=2), "x has 3 channels", ValueError),
    (lambda x, w, b: small_conv2d(x, w, b[:2]), "bias must have weight.size\\(0\\)=6", ValueError),
    (lambda x, w, b: small_conv2d(x, w.double(), b), "weight must match x's dtype", ValueError),
    (lambda x, w, b: small_conv2d(x[..., :2, :2], w, b), "smaller than the kernel size", ValueError),
    (lambda x, w, b: small_conv2d(x, w, b, groups=0), "groups must be in", ValueError),
    (lambda x, w, b: small_conv_transpose2d(x, w[:2], None), "x has 3 channels and weight", ValueError),
])
def test_bad_input(call, match, exc):
    x, wt, b = torch.randn(2, 3, 6, 6), torch.randn(6, 3, 3, 3), torch.randn(6)
    with pytest.raises(exc, match=match):
        call(x, wt, b)


def test_cpp_boundary_names_the_argument():
    x, wt, b = torch.randn(2, 3, 6, 6), torch.randn(6, 3, 3, 3), torch.randn(6)
    fwd, bwd = torch.ops.ddkernels.small_conv2d_fwd, torch.ops.ddkernels.small_conv2d_bwd
    with pytest.raises(RuntimeError, match="x must be contiguous"):
        fwd(x.transpose(2, 3), wt, b, 0, 1)
    with pytest.raises(RuntimeError, match="padding must be in \\[0, K-1=2\\]"):
        fwd(x, wt, b, 3, 1)
    with pytest.raises(RuntimeError, match="bias must be 1-D of size weight.size\\(0\\)=6"):
        fwd(x, wt, b[:5], 0, 1)
    with pytest.raises(RuntimeError, match="weight must have dtype"):
        fwd(x, wt.double(), b, 0, 1)
    with pytest.raises(RuntimeError, match="grad_y must have the output shape"):
        bwd(torch.randn(2, 6, 5, 5), x, wt, 0, 1, True, True, True)
