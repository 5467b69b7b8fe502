"""grad_distance: every kernel backend against the reference (DC match_loss / IDC dist), forward
and the gradients with respect to both g_syn and g_real."""
import pytest
import torch
import torch.nn.functional as F

import ddkernels
from ddkernels import BackendUnavailable, _ext
from ddkernels.ops.grad_distance import METRICS, reference, stack_classes
from ddkernels.testing import assert_close, convnet_param_shapes
from tests.conftest import fused_backends

BACKENDS = fused_backends("grad_distance")
INTERPRETED = not torch.cuda.is_available()  # Triton runs in its interpreter: ~1 ms per program
THREADS = torch.get_num_threads()


@pytest.fixture(autouse=True)
def _one_thread():
    """Small shapes: intra-op threads only add barrier waits (large on a busy shared machine).
    The repeatability test below runs the C++ kernel with every thread on purpose."""
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(THREADS)

# Parameter-shape sets. ConvNet-3 (width 128) on 1-channel 28 px / 3-channel 32 px with 10 / 100
# classes; odd shapes: a 3-D tensor, a single row, a 1-D and a plain 2-D tensor.
ODD = [(4, 5, 6), (1, 7), (5,), (6, 4)]
SETS = {
    "convnet3-c1-n10": convnet_param_shapes(1, 10),
    "convnet3-c3-n100": convnet_param_shapes(3, 100),
    "odd": ODD,
}
# The interpreter gets a narrow ConvNet-3 (same tensor kinds, 8 channels) and only the batched
# layout (the unbatched one is the same kernels on K=1, see test_unbatched_equals_batched_row);
# GPUs run everything.
SMALL_SETS = {"convnet3-w8-c3-n10": convnet_param_shapes(3, 10, width=8, feat=2), "odd": ODD}


def _inputs(shapes, k, dtype, *, zero_rows=True):
    """Random (syn, real) lists; k=None gives the unbatched layout. A syn row of zeros and a row
    that is zero on both sides check that the epsilon keeps everything finite."""
    lead = () if k is None else (k,)
    syn = [torch.randn(*lead, *s, dtype=dtype) for s in shapes]
    real = [torch.randn(*lead, *s, dtype=dtype) for s in shapes]
    if zero_rows:
        for t in (syn[0], real[0]):
            t.view(*lead, shapes[0][0], -1)[..., 0, :] = 0  # first row zero on both sides
        syn[-1 if len(shapes[-1]) > 1 else 0].view(*lead, -1)[..., -1] = 0
        big = max(range(len(shapes)), key=lambda i: len(shapes[i]) > 1 and shapes[i][0] > 1)
        syn[big].view(*lead, shapes[big][0], -1)[..., 1, :] = 0  # a syn-only zero row
    return syn, real


def _run(backend, syn, real, metric, batched):
    s = [t.clone().requires_grad_() for t in syn]
    r = [t.clone().requires_grad_() for t in real]
    d = ddkernels.grad_distance(s, r, metric, batched=batched, backend=backend)
    w = torch.linspace(0.5, 1.5, d.numel(), dtype=d.dtype).reshape(d.shape)  # a non-uniform upstream grad
    (d * w).sum().backward()
    # The reference leaves 1-D tensors untouched under "ours" (no gradient): that is a zero gradient.
    zero = lambda ts: [t.grad if t.grad is not None else torch.zeros_like(t) for t in ts]  # noqa: E731
    return d.detach(), zero(s), zero(r)


def _compare(backend, syn, real, metric, batched, atol=None, rtol=None):
    d_ref, gs_ref, gr_ref = _run("reference", syn, real, metric, batched)
    d, gs, gr = _run(backend, syn, real, metric, batched)
    assert torch.isfinite(d).all()
    assert_close(d, d_ref, atol=atol, rtol=rtol, name=f"{backend} {metric} distance")
    for i, (a, e) in enumerate(zip(gs, gs_ref)):
        assert_close(a, e, atol=atol, rtol=rtol, name=f"{backend} {metric} d/d g_syn[{i}]")
    for i, (a, e) in enumerate(zip(gr, gr_ref)):
        assert_close(a, e, atol=atol, rtol=rtol, name=f"{backend} {metric} d/d g_real[{i}]")


def _cases():
    out = []
    for b in BACKENDS:
        small = b.values[0] == "triton" and INTERPRETED
        dtypes = [torch.float32] if small else [torch.float32, torch.float64]  # float64: gradcheck below
        for set_name, shapes in (SMALL_SETS if small else SETS).items():
            for k in [2] if small else [3] + ([None] if set_name == "odd" else []):
                for dtype in dtypes:
                    out.append(pytest.param(b.values[0], shapes, k, dtype, marks=b.marks,
                                            id=f"{b.id}-{set_name}-{'K' + str(k) if k else 'unbatched'}-{str(dtype)[6:]}"))
    return out


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("backend, shapes, k, dtype", _cases())
def test_matches_reference(backend, shapes, k, dtype, metric):
    syn, real = _inputs(shapes, k, dtype)
    _compare(backend, syn, real, metric, batched=k is not None)


@pytest.mark.parametrize("metric", ["ours", "mse"])
@pytest.mark.parametrize("backend", [b for b in BACKENDS if b.values[0] == "cpu"])
def test_all_ten_classes_at_once(backend, metric):
    """The trainer's form: all 10 classes of ConvNet-3 on CIFAR in one batched call."""
    syn, real = _inputs(convnet_param_shapes(3, 10), 10, torch.float32)
    _compare(backend, syn, real, metric, batched=True)


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_gradcheck(backend, metric):
    # Triton in the interpreter: fewer rows (~1 ms per program) and gradcheck's fast mode (random
    # projections of the same Jacobians).
    interpreted = backend == "triton" and INTERPRETED
    shapes = [(2, 2, 3), (3,)] if interpreted else [(3, 2, 2, 2), (3,), (4, 3), (2, 2, 3)]
    syn = [torch.randn(2, *s, dtype=torch.float64, requires_grad=True) for s in shapes]
    real = [torch.randn(2, *s, dtype=torch.float64, requires_grad=True) for s in shapes]
    n = len(shapes)
    fn = lambda *ts: ddkernels.grad_distance(ts[:n], ts[n:], metric, batched=True, backend=backend)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (*syn, *real), fast_mode=interpreted)


@pytest.mark.parametrize("backend", BACKENDS)
def test_unbatched_equals_batched_row(backend):
    syn, real = _inputs(ODD, 3, torch.float64)
    batched = ddkernels.grad_distance(syn, real, "ours", batched=True, backend=backend)
    one = ddkernels.grad_distance([t[1] for t in syn], [t[1] for t in real], "ours", backend=backend)
    assert one.shape == ()
    assert_close(one, batched[1])


def _tiny_convnet(channels, classes):
    torch.manual_seed(1)
    return torch.nn.Sequential(
        torch.nn.Conv2d(channels, 8, 3, padding=1), torch.nn.GroupNorm(8, 8, affine=True), torch.nn.ReLU(),
        torch.nn.AvgPool2d(2), torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.GroupNorm(8, 8, affine=True),
        torch.nn.ReLU(), torch.nn.AvgPool2d(2), torch.nn.Flatten(), torch.nn.Linear(8 * 2 * 2, classes))


def _match_grad(backend, metric, batched, channels=3, classes=3):
    """One DC-style matching step: d loss / d synthetic images, through create_graph gradients."""
    net = _tiny_convnet(channels, classes)
    params = list(net.parameters())
    gen = torch.Generator().manual_seed(2)
    syn = torch.randn(classes * 2, channels, 8, 8, generator=gen, requires_grad=True)
    real = torch.randn(classes * 4, channels, 8, 8, generator=gen)
    g_syn, g_real = [], []
    for c in range(classes):
        lab_r = torch.full((4,), c)
        lab_s = torch.full((2,), c)
        gr = torch.autograd.grad(F.cross_entropy(net(real[c * 4:(c + 1) * 4]), lab_r), params)
        g_real.append([g.detach() for g in gr])
        g_syn.append(list(torch.autograd.grad(F.cross_entropy(net(syn[c * 2:(c + 1) * 2]), lab_s), params,
                                              create_graph=True)))
    if batched:
        loss = ddkernels.grad_distance(stack_classes(g_syn), stack_classes(g_real), metric, batched=True,
                                       backend=backend).sum()
    else:
        loss = sum(ddkernels.grad_distance(s, r, metric, backend=backend) for s, r in zip(g_syn, g_real))
    loss.backward()
    return loss.detach(), syn.grad


@pytest.mark.parametrize("batched", [False, True], ids=["per-class", "batched"])
@pytest.mark.parametrize("metric", ["ours", "mse", "l1_mean"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_end_to_end_synthetic_image_gradient(backend, metric, batched):
    loss_ref, grad_ref = _match_grad("reference", metric, batched)
    loss, grad = _match_grad(backend, metric, batched)
    assert_close(loss, loss_ref, name="matching loss")
    assert_close(grad, grad_ref, atol=1e-5, rtol=1e-3, name="d loss / d syn images")


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b.values[0] == "cpu"])
@pytest.mark.parametrize("metric", METRICS)
def test_cpu_bitwise_repeatable(backend, metric):
    """Same bits on every run and for any thread count: rows are independent, sums in fixed order."""
    syn, real = _inputs(convnet_param_shapes(3, 10), 10, torch.float32)
    s = [t.requires_grad_() for t in syn]
    results = []
    for threads in (THREADS, THREADS, 1):
        torch.set_num_threads(threads)
        d = ddkernels.grad_distance(s, real, metric, batched=True, backend=backend)
        g = torch.linspace(-1, 1, d.numel())
        results.append((d, torch.autograd.grad(d, s, g)))
    (d0, g0) = results[0]
    for d, g in results[1:]:
        assert torch.equal(d, d0)
        assert all(torch.equal(a, b) for a, b in zip(g, g0))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["f16", "bf16"])
def test_triton_half_types(dtype):
    """Half inputs accumulate in float32: compare against the float32 reference, rounded once."""
    if "triton" not in [p.values[0] for p in BACKENDS if not p.marks]:
        pytest.skip("triton backend unavailable here")
    syn, real = _inputs(ODD, 2, torch.float32, zero_rows=False)
    syn, real = [t.to(dtype).float() for t in syn], [t.to(dtype).float() for t in real]
    for metric in ("ours", "mse"):
        ref = reference.grad_distance(syn, real, metric, batched=True)
        out = ddkernels.grad_distance([t.to(dtype) for t in syn], [t.to(dtype) for t in real], metric,
                                      batched=True, backend="triton")
        assert out.dtype == dtype
        assert_close(out, ref.to(dtype), name=f"triton {metric} half")


@pytest.mark.parametrize("metric", METRICS)
def test_eager_vectorized_matches_reference(metric):
    syn, real = _inputs(convnet_param_shapes(1, 10), 3, torch.float64)
    assert_close(reference.grad_distance_eager(syn, real, metric), reference.grad_distance(syn, real, metric, True))


def test_one_d_tensors_contribute_zero_to_ours():
    syn, real = [torch.randn(5)], [torch.randn(5)]
    assert ddkernels.grad_distance(syn, real, "ours").item() == 0.0
    assert ddkernels.grad_distance(syn, real, "ours", backend="reference").item() == 0.0


def test_ours_by_hand():
    """Two rows: identical (distance 0) and opposite (distance 2)."""
    a = torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=torch.float64)
    b = torch.tensor([[1.0, 2.0], [-3.0, -4.0]], dtype=torch.float64)
    for backend in ["reference"] + [p.values[0] for p in BACKENDS if not p.marks]:
        d = ddkernels.grad_distance([a], [b], "ours", backend=backend).item()
        assert d == pytest.approx(0.0 + 1e-6 / (5 + 1e-6) + 2.0 - 1e-6 / (25 + 1e-6), abs=1e-12), backend


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_contiguous_input(backend):
    syn = [torch.randn(4, 6).t()]  # (6, 4), transposed view
    real = [torch.randn(6, 4)]
    for metric in METRICS:
        assert_close(ddkernels.grad_distance(syn, real, metric, backend=backend),
                     reference.grad_distance(syn, real, metric), name=metric)


def test_module_and_stack_classes():
    m = ddkernels.nn.GradMatchLoss("mse", batched=True)
    per_class = [[torch.randn(3, 2), torch.randn(3)] for _ in range(4)]
    stacked = stack_classes(per_class)
    assert [t.shape for t in stacked] == [(4, 3, 2), (4, 3)]
    zeros = [torch.zeros_like(t) for t in stacked]
    assert_close(m(stacked, zeros), torch.stack([sum(t.square().sum() for t in c) for c in per_class]))
    assert "metric='mse'" in repr(m)
    with pytest.raises(ValueError, match=r"per_class\[1\] holds 1 layers, per_class\[0\] holds 2"):
        stack_classes([per_class[0], per_class[1][:1]])


def test_auto_backend_choice():
    syn, real = [torch.randn(3, 4, dtype=torch.bfloat16)], [torch.randn(3, 4, dtype=torch.bfloat16)]
    # bfloat16 on CPU: the C++ kernel computes it in float32 (auto picks it); meta tensors have no kernel.
    expected = "cpu" if _ext.cpu_available()[0] else "reference"
    assert ddkernels.dispatch.OpBackends.registry["grad_distance"].select(
        "auto", torch.device("cpu"), torch.bfloat16) == expected
    assert_close(ddkernels.grad_distance(syn, real, "mse"), reference.grad_distance(syn, real, "mse"))
    with pytest.raises(BackendUnavailable, match="cpu.*tensors are on meta"):
        ddkernels.grad_distance([t.to("meta") for t in syn], [t.to("meta") for t in real], backend="cpu")
    with pytest.raises(ValueError, match="backend must be one of .*GPUs run 'triton'.*got 'cuda'"):
        ddkernels.grad_distance([torch.randn(3, 4)], [torch.randn(3, 4)], backend="cuda")


def _bad(**kw):
    args = dict(g_syn=[torch.randn(4, 3, 3, 3), torch.randn(4), torch.randn(2, 8)],
                g_real=[torch.randn(4, 3, 3, 3), torch.randn(4), torch.randn(2, 8)], metric="ours", batched=False)
    args.update(kw)
    return args


@pytest.mark.parametrize("args, exc, match", [
    (_bad(g_real=[torch.randn(4, 3, 3, 3)]), ValueError, "g_syn and g_real must hold the same number of layers, got 3 and 1"),
    (_bad(g_real=[torch.randn(4, 3, 3, 3), torch.randn(4), torch.randn(2, 9)]), ValueError,
     r"layer 2: g_syn\[2\] and g_real\[2\] must have the same shape, got \(2, 8\) and \(2, 9\)"),
    (_bad(metric="cos"), ValueError, "metric must be one of 'ours', 'mse', 'l1', 'l1_mean', 'global_cos'; got 'cos'"),
    (_bad(g_real=[torch.randn(4, 3, 3, 3), torch.randn(4, dtype=torch.float64), torch.randn(2, 8)]), TypeError,
     r"g_syn\[0\] and g_real\[1\] must have the same dtype"),
    (_bad(g_syn=[torch.randn(4, 3, 3, 3), torch.randn(4, device="meta"), torch.randn(2, 8)],
          g_real=[torch.randn(4, 3, 3, 3), torch.randn(4, device="meta"), torch.randn(2, 8)]), ValueError,
     r"g_syn\[0\] and g_syn\[1\] must be on the same device, got cpu and meta"),
    (_bad(batched=True, g_syn=[torch.randn(4, 3, 3, 3), torch.randn(4, 2), torch.randn(2, 8)],
          g_real=[torch.randn(4, 3, 3, 3), torch.randn(4, 2), torch.randn(2, 8)]), ValueError, r"batched=True needs the same number of classes K .* g_syn\[0\] has K=4, g_syn\[2\] has K=2"),
    (_bad(batched=True, g_syn=[torch.randn(4, 3)], g_real=[torch.randn(4, 3)], metric="mse"), None, None),
    (_bad(batched=True, g_syn=[torch.randn(4)], g_real=[torch.randn(4)]), ValueError,
     r"g_syn\[0\] must be at least 2-D \(\(K, \*param_shape\) with batched=True\)"),
    (_bad(g_syn=torch.randn(3, 3)), TypeError, "g_syn must be a list or tuple of per-layer tensors, got Tensor"),
    (_bad(g_syn=[], g_real=[]), ValueError, "g_syn and g_real must hold at least one tensor"),
    (_bad(g_syn=[torch.randn(4, 3, 3, 3), [1.0], torch.randn(2, 8)]), TypeError, r"g_syn\[1\] must be a torch.Tensor"),
    (_bad(g_syn=[torch.tensor(1.0)], g_real=[torch.tensor(1.0)]), ValueError, r"g_syn\[0\] must be at least 1-D"),
], ids=["length", "shape-at-layer", "metric", "dtype", "device", "batched-K", "batched-ok", "batched-1d",
        "not-a-list", "empty", "not-a-tensor", "scalar"])
def test_bad_input(args, exc, match):
    if exc is None:
        ddkernels.grad_distance(args["g_syn"], args["g_real"], args["metric"], batched=args["batched"])
        return
    with pytest.raises(exc, match=match):
        ddkernels.grad_distance(args["g_syn"], args["g_real"], args["metric"], batched=args["batched"])


cpp = pytest.mark.skipif(not _ext.cpu_available()[0], reason=f"C++ extension: {_ext.cpu_available()[1]}")


@cpp
@pytest.mark.parametrize("metric", ["ours", "mse"])  # the two code paths: row statistics, elementwise
def test_opcheck(metric):
    syn, real = _inputs([(3, 2, 2, 2), (3,), (4, 3), (2, 2, 3)], 2, torch.float64)
    torch.library.opcheck(torch.ops.ddkernels.grad_distance_fwd.default, (syn, real, metric))
    _, stats = torch.ops.ddkernels.grad_distance_fwd(syn, real, metric)
    g = torch.rand(2, dtype=torch.float64)
    for need in ((True, True), (False, True)):
        torch.library.opcheck(torch.ops.ddkernels.grad_distance_bwd.default, (g, syn, real, stats, metric, *need))


@cpp
@pytest.mark.parametrize("metric", ["ours", "mse"])
def test_opcheck_forward_with_gradients(metric):
    syn, real = _inputs([(3, 2, 2, 2), (3,), (4, 3), (2, 2, 3)], 2, torch.float64)
    for need in ((True, True), (True, False), (False, True)):
        torch.library.opcheck(torch.ops.ddkernels.grad_distance_fwd_grad.default, (syn, real, metric, *need))


@pytest.mark.parametrize("need", ["syn", "both"])
@pytest.mark.parametrize("upstream", ["ones", "weighted"])
@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_gradients_written_in_forward(backend, metric, upstream, need):
    """The cpu forward writes the gradients when an input needs one and the backward hands them
    over (scaled unless the upstream gradient is exactly 1). They equal the separate backward
    kernel's, and a graph replayed with retain_graph recomputes instead of reusing the buffers
    it handed over (which the caller may have modified)."""
    dtype = torch.float32 if backend == "triton" and INTERPRETED else torch.float64
    syn, real = _inputs(ODD + [(6, 2, 3, 3)], 3, dtype)
    s = [t.clone().requires_grad_() for t in syn]
    r = [t.clone().requires_grad_(need == "both") for t in real]
    leaves = s + (r if need == "both" else [])
    g = torch.ones(3, dtype=dtype) if upstream == "ones" else torch.tensor([0.5, -2.0, 3.0], dtype=dtype)
    d = ddkernels.grad_distance(s, r, metric, batched=True, backend=backend)
    first = torch.autograd.grad(d, leaves, g, retain_graph=True)
    handed = [t.clone() for t in first]
    for t in first:
        t.add_(1.0)  # the caller owns what it was handed
    second = torch.autograd.grad(d, leaves, g)  # the separate backward kernel
    if backend == "cpu":  # one code path forms both, so a replayed graph repeats the first result
        for i, (a, b) in enumerate(zip(handed, second)):
            assert torch.equal(a, b), f"{metric}: gradient {i} differs between the forward and the backward kernel"
    d_ref = ddkernels.grad_distance(s, r, metric, batched=True, backend="reference")
    expected = torch.autograd.grad(d_ref, leaves, g, allow_unused=True)
    for i, (a, b, e) in enumerate(zip(first, second, expected)):
        e = torch.zeros_like(a) if e is None else e
        assert_close(a - 1.0, e, name=f"{metric} gradient {i} written in forward")
        assert_close(b, e, name=f"{metric} gradient {i} from the backward kernel")


@cpp
def test_no_gradient_buffers_without_grad():
    syn, real = _inputs(ODD, 2, torch.float32)
    with torch.no_grad():
        d = ddkernels.grad_distance(syn, real, "ours", batched=True, backend="cpu")
    assert d.grad_fn is None
    d = ddkernels.grad_distance(syn, real, "ours", batched=True, backend="cpu")  # no input needs a gradient
    assert d.grad_fn is None


@cpp
def test_cpp_boundary_names_the_argument():
    s, r = [torch.randn(2, 4, 3)], [torch.randn(2, 4, 3)]
    op = torch.ops.ddkernels.grad_distance_fwd
    with pytest.raises(RuntimeError, match=r"syn\[0\] and real\[0\] must be contiguous"):
        op([s[0].transpose(1, 2)], [r[0].transpose(1, 2)], "mse")
    with pytest.raises(RuntimeError, match=r"syn\[0\] and real\[0\] must have the same shape"):
        op(s, [torch.randn(2, 4, 4)], "mse")
    with pytest.raises(RuntimeError, match="metric must be one of"):
        op(s, r, "cos")
    with pytest.raises(RuntimeError, match=r"syn\[1\] must have K=2 classes in dim 0, got 3"):
        op(s + [torch.randn(3, 4)], r + [torch.randn(3, 4)], "mse")
    _, stats = op(s, r, "ours")
    with pytest.raises(RuntimeError, match=r"stats must have shape \(K=2, rows=4, 3\)"):
        torch.ops.ddkernels.grad_distance_bwd(torch.ones(2), s, r, stats[:, :2].contiguous(), "ours", True, True)


@cpp
def test_torch_compile_traces_the_cpu_op():
    syn, real = _inputs(ODD, 3, torch.float32)
    s = [t.clone().requires_grad_() for t in syn]

    @torch.compile(backend="aot_eager", fullgraph=False)
    def f(ts):
        return ddkernels.grad_distance(ts, real, "ours", batched=True, backend="cpu").sum()

    f(s).backward()
    s2 = [t.clone().requires_grad_() for t in syn]
    ddkernels.grad_distance(s2, real, "ours", batched=True, backend="reference").sum().backward()
    for a, b in zip(s, s2):
        torch.testing.assert_close(a.grad, b.grad if b.grad is not None else torch.zeros_like(b))


def test_nan_check_opt_in(monkeypatch):
    syn, real = [torch.randn(3, 4), torch.randn(3, 4)], [torch.randn(3, 4), torch.randn(3, 4)]
    real[1][0, 0] = float("nan")
    assert torch.isnan(ddkernels.grad_distance(syn, real, "mse"))  # default: no scan, NaN propagates
    monkeypatch.setenv("DDKERNELS_CHECK_FINITE", "1")
    with pytest.raises(ValueError, match=r"g_real\[1\] contains NaN"):
        ddkernels.grad_distance(syn, real, "mse")
