"""Issue 18's op items, one test each: silent wrong answers (5-D "ours", empty l1_mean rows, lost
second derivatives), the group_norm crash path, degenerate sizes on the reference, clear errors,
torch.compile(fullgraph=True) and torch.func."""
import math
import subprocess
import sys
import textwrap

import pytest
import torch

import ddkernels
from ddkernels import BackendUnavailable
from ddkernels.ops.multi_formation import MAX_FACTOR
from ddkernels.ops.small_conv import small_conv2d
from tests.conftest import fused_backends

F64 = torch.float64


def _rand(*shape, seed=0, dtype=F64):
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _with_reference(op):
    return [pytest.param("reference", id="reference")] + fused_backends(op)


# --- grad_distance "ours" on a 5-D parameter: DC's distance_wb rows (the last dim) -------------

def _distance_wb_5d(s, r):
    # distance_wb reshapes only 4-D and 3-D tensors: a 5-D one keeps its shape and the cosine runs
    # along dim -1, i.e. one row per index of the other four dims.
    s, r = s.reshape(-1, s.shape[-1]), r.reshape(-1, r.shape[-1])
    return (1 - (s * r).sum(-1) / (s.norm(dim=-1) * r.norm(dim=-1) + 1e-6)).sum()


@pytest.mark.parametrize("backend", _with_reference("grad_distance"))
def test_ours_on_a_5d_parameter_follows_distance_wb(backend):
    s, r = _rand(4, 3, 2, 2, 2, seed=1) - 0.5, _rand(4, 3, 2, 2, 2, seed=2) - 0.5
    want = _distance_wb_5d(s, r)
    got = ddkernels.grad_distance([s], [r], "ours", backend=backend)
    torch.testing.assert_close(got, want)
    batched = ddkernels.grad_distance([torch.stack([s, r])], [torch.stack([r, s])], "ours", batched=True,
                                      backend=backend)
    torch.testing.assert_close(batched, torch.stack([want, want]))


# --- grad_distance "l1_mean" on empty rows --------------------------------------------------------

@pytest.mark.parametrize("backend", _with_reference("grad_distance"))
@pytest.mark.parametrize("batched", [False, True])
def test_l1_mean_refuses_empty_rows(backend, batched):
    shape = (2, 3, 0) if batched else (3, 0)
    s, r = [torch.rand(shape), torch.rand(shape[:-1] + (4,))], [torch.rand(shape), torch.rand(shape[:-1] + (4,))]
    with pytest.raises(ValueError, match=r"g_syn\[0\].*rows of 0 elements"):
        ddkernels.grad_distance(s, r, "l1_mean", batched=batched, backend=backend)


@pytest.mark.parametrize("backend", fused_backends("grad_distance"))
def test_l1_mean_parameter_without_rows_adds_zero(backend):
    s, r = [_rand(0, 3), _rand(2, 3, seed=1)], [_rand(0, 3), _rand(2, 3, seed=2)]
    want = ddkernels.grad_distance(s, r, "l1_mean", backend="reference")
    torch.testing.assert_close(want, (s[1] - r[1]).abs().mean(1).sum())
    torch.testing.assert_close(ddkernels.grad_distance(s, r, "l1_mean", backend=backend), want)


# --- double backward: exact, never silently dropped -------------------------------------------------

def _second_order(fn, inputs, seed=3):
    """Gradients of Σ w·∂(u·fn)/∂inputs with respect to the inputs and the upstream gradient u."""
    xs = [t.clone().requires_grad_() for t in inputs]
    out = fn(*xs)
    u = _rand(*out.shape, seed=seed).requires_grad_()
    grads = torch.autograd.grad(out, xs, u, create_graph=True)
    assert all(g.requires_grad for g in grads), "a first-order gradient came back outside the graph"
    total = sum((g * _rand(*g.shape, seed=seed + 1 + i)).sum() for i, g in enumerate(grads))
    return torch.autograd.grad(total, [*xs, u], allow_unused=True, materialize_grads=True)


@pytest.mark.parametrize("backend", fused_backends("grad_distance"))
@pytest.mark.parametrize("metric", ["ours", "mse", "l1_mean", "global_cos"])
def test_grad_distance_double_backward(backend, metric):
    s, r = [_rand(3, 2, 2, 2, seed=1), _rand(3, 4, seed=2)], [_rand(3, 2, 2, 2, seed=4), _rand(3, 4, seed=5)]

    def fn(backend):
        return lambda *t: ddkernels.grad_distance(t[:2], t[2:], metric, backend=backend)

    for a, e in zip(_second_order(fn(backend), s + r), _second_order(fn("reference"), s + r)):
        torch.testing.assert_close(a, e)


@pytest.mark.parametrize("backend", fused_backends("scale_shift"))
@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("sampled", [False, True])
def test_scale_shift_double_backward(backend, normalize, sampled):
    x = _rand(3, 2, 3, 3, seed=1) if sampled else _rand(2, 2, 2, 3, 3, seed=1)
    sc, sh = _rand(2, 2, 3, 3, seed=2), _rand(2, 2, 3, 3, seed=3)
    index = torch.tensor([1, 0, 1]) if sampled else None

    def fn(backend):
        return lambda a, b, c: ddkernels.scale_shift(a, b, c, index=index, normalize=normalize, backend=backend)

    for a, e in zip(_second_order(fn(backend), (x, sc, sh)), _second_order(fn("reference"), (x, sc, sh))):
        torch.testing.assert_close(a, e)
    if backend == "cpu":  # gradgradcheck runs the forward ~1000 times: too slow for interpreted Triton
        assert torch.autograd.gradgradcheck(fn(backend), [t.clone().requires_grad_() for t in (x, sc, sh)])


@pytest.mark.parametrize("backend", fused_backends("multi_formation"))
@pytest.mark.parametrize("h", [4, 5], ids=["tiled", "padded"])
def test_multi_formation_double_backward(backend, h):
    x = _rand(2, 3, h, h, seed=1)

    def fn(backend):
        return lambda t: ddkernels.multi_formation(t, 2, (6, 6), backend=backend)

    got, want = _second_order(fn(backend), (x,)), _second_order(fn("reference"), (x,))
    assert want[1].abs().sum() > 0  # the derivative with respect to the upstream gradient
    for a, e in zip(got, want):
        torch.testing.assert_close(a, e)
    if backend == "cpu":  # gradgradcheck perturbs every upstream element: too slow for interpreted Triton
        assert torch.autograd.gradgradcheck(fn(backend), (x.clone().requires_grad_(),))


@pytest.mark.parametrize("backend", fused_backends("small_conv"))
def test_small_conv_double_backward(backend):
    x, w, b = _rand(2, 2, 5, 5, seed=1), _rand(4, 1, 3, 3, seed=2), _rand(4, seed=3)

    def fn(backend):
        return lambda x, w, b: small_conv2d(x, w, b, 1, 2, backend=backend)

    for a, e in zip(_second_order(fn(backend), (x, w, b)), _second_order(fn("reference"), (x, w, b))):
        torch.testing.assert_close(a, e)


# --- norm_relu_pool: PyTorch's group_norm bugs stay out of reach -------------------------------------

def test_norm_relu_pool_channels_last_input_without_grad_does_not_crash():
    # PyTorch's CPU group_norm backward segfaults here: a subprocess, so a crash fails this test only.
    code = textwrap.dedent("""
        import torch, ddkernels
        for dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
            for backend in ("reference", "auto"):
                x = torch.rand(2, 3, 4, 4, dtype=dtype).to(memory_format=torch.channels_last)
                w = torch.rand(3, dtype=dtype, requires_grad=True)
                ddkernels.norm_relu_pool(x, w, None, backend=backend).sum().backward()
                assert w.grad is not None and torch.isfinite(w.grad.float()).all()
        print("ok")
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), (proc.returncode, proc.stderr[-2000:])


@pytest.mark.parametrize("backend", _with_reference("norm_relu_pool"))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_norm_relu_pool_bias_without_weight(backend, dtype):
    x = _rand(2, 3, 4, 4, dtype=dtype) * 4 - 2
    b = _rand(3, seed=1, dtype=dtype).requires_grad_()
    ddkernels.norm_relu_pool(x, None, b, backend=backend).sum().backward()
    b2 = b.detach().clone().requires_grad_()
    ddkernels.norm_relu_pool(x, torch.ones(3, dtype=dtype), b2, backend="reference").sum().backward()
    torch.testing.assert_close(b.grad, b2.grad)


def test_norm_relu_pool_half_types_reach_the_reference_safely():
    x = torch.rand(2, 3, 4, 4, dtype=torch.bfloat16).to(memory_format=torch.channels_last)
    b = torch.rand(3, dtype=torch.bfloat16, requires_grad=True)
    ddkernels.norm_relu_pool(x, None, b, backend="auto").sum().backward()
    assert b.grad is not None


# --- degenerate sizes: the reference returns what the kernels return ------------------------------

DEGENERATE = {
    "multi_formation C=0": ("multi_formation", lambda t, be: ddkernels.multi_formation(t[0], 2, backend=be),
                            [(2, 0, 4, 4)]),
    "multi_formation N=0": ("multi_formation", lambda t, be: ddkernels.multi_formation(t[0], 2, 3, backend=be),
                            [(0, 3, 4, 4)]),
    "grad_distance K=0": ("grad_distance", lambda t, be: ddkernels.grad_distance(t[:2], t[2:], batched=True, backend=be),
                          [(0, 3, 2), (0, 4)] * 2),
    "scale_shift Hn=0": ("scale_shift", lambda t, be: ddkernels.scale_shift(*t, backend=be),
                         [(0, 2, 3, 4, 4), (0, 3, 4, 4), (0, 3, 4, 4)]),
    "norm_relu_pool C=0": ("norm_relu_pool", lambda t, be: ddkernels.norm_relu_pool(*t, backend=be),
                           [(2, 0, 4, 4), (0,), (0,)]),
    "norm_relu_pool N=1 1x1 no pool": ("norm_relu_pool",
                                       lambda t, be: ddkernels.norm_relu_pool(*t, pool=False, backend=be),
                                       [(1, 3, 1, 1), (3,), (3,)]),
}


@pytest.mark.parametrize("case", sorted(DEGENERATE))
def test_degenerate_sizes_on_the_reference(case):
    op, fn, shapes = DEGENERATE[case]
    results = {}
    for backend in ["reference"] + [p.values[0] for p in fused_backends(op) if not p.marks]:
        xs = [_rand(*s, seed=i).requires_grad_() for i, s in enumerate(shapes)]
        out = fn(xs, backend)
        grads = torch.autograd.grad(out, xs, torch.ones_like(out), allow_unused=True, materialize_grads=True)
        results[backend] = (out, grads)
    out_ref, grads_ref = results.pop("reference")
    for backend, (out, grads) in results.items():
        torch.testing.assert_close(out, out_ref, msg=lambda m: f"{backend}: {m}")
        for a, e in zip(grads, grads_ref):
            torch.testing.assert_close(a, e)


# --- clear errors -------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", _with_reference("multi_formation"))
def test_multi_formation_empty_images_say_so(backend):
    with pytest.raises(ValueError, match=r"x must hold images of at least 1×1 pixels.*\(2, 3, 0, 0\)"):
        ddkernels.multi_formation(torch.rand(2, 3, 0, 0), 1, backend=backend)


def test_multi_formation_targets_bounds_the_factor():
    with pytest.raises(ValueError, match=rf"factor must be in \[1, {MAX_FACTOR}\], got 1000000"):
        ddkernels.multi_formation_targets(torch.arange(3), 10**6)
    assert ddkernels.multi_formation_targets(torch.arange(3), 3).shape == (27,)


def test_scale_shift_sampled_mode_on_meta_tensors():
    x = torch.empty(4, 3, 5, 5, device="meta")
    p = torch.empty(2, 3, device="meta")
    y = ddkernels.scale_shift(x, p, p, index=torch.zeros(4, dtype=torch.int64, device="meta"))
    assert y.shape == x.shape and y.device.type == "meta"


# --- torch.compile(fullgraph=True) and torch.func ------------------------------------------------

# Triton is left out: its interpreter (CPU tensors) reads raw storage pointers, which Dynamo cannot
# trace; on GPUs Dynamo traces Triton launches itself.
@pytest.mark.parametrize("backend", [p for p in _with_reference("norm_relu_pool") if p.values[0] != "triton"])
def test_norm_relu_pool_compiles_without_graph_breaks(backend):
    torch._dynamo.reset()
    x, w, b = _rand(2, 3, 6, 6, dtype=torch.float32), _rand(3, seed=1, dtype=torch.float32), _rand(3, seed=2, dtype=torch.float32)
    f = torch.compile(lambda x, w, b: ddkernels.norm_relu_pool(x, w, b, backend=backend), backend="aot_eager",
                      fullgraph=True)
    ws = [t.clone().requires_grad_() for t in (w, b)]
    f(x, *ws).square().sum().backward()
    we = [t.clone().requires_grad_() for t in (w, b)]
    ddkernels.norm_relu_pool(x, *we, backend=backend).square().sum().backward()
    for a, e in zip(ws, we):
        torch.testing.assert_close(a.grad, e.grad)


FUNC_OPS = {
    "affine_crop": lambda x, be: ddkernels.affine_crop(x, ddkernels.crop_grid(4, 4, 2, x.shape[0], dtype=x.dtype) + 0.3,
                                                       backend=be).square().sum(),
    "multi_formation": lambda x, be: ddkernels.multi_formation(x, 2, backend=be).square().sum(),
    "norm_relu_pool": lambda x, be: ddkernels.norm_relu_pool(x, backend=be).square().sum(),
    "grad_distance": lambda x, be: ddkernels.grad_distance([x], [x.detach() * 0.5 + 1], backend=be),
    "scale_shift": lambda x, be: ddkernels.scale_shift(x[None], torch.ones(1, 3, dtype=x.dtype),
                                                       torch.zeros(1, 3, dtype=x.dtype), normalize=True,
                                                       backend=be).square().sum(),
    "small_conv": lambda x, be: small_conv2d(x, torch.ones(2, 3, 2, 2, dtype=x.dtype), backend=be).square().sum(),
}


@pytest.mark.parametrize("op", sorted(FUNC_OPS))
def test_torch_func(op):
    f, x = FUNC_OPS[op], _rand(2, 3, 4, 4) * 2 - 1
    xr = x.clone().requires_grad_()
    (want,) = torch.autograd.grad(f(xr, "reference"), xr)
    for backend in ("auto", "reference"):  # auto takes the reference inside a transform
        torch.testing.assert_close(torch.func.grad(lambda t: f(t, backend))(x), want)
    per_sample = torch.func.vmap(lambda t: f(t[None], "auto"))(x)
    torch.testing.assert_close(per_sample, torch.stack([f(t[None], "reference") for t in x]))
    for p in fused_backends(op):
        if p.marks:
            continue
        with pytest.raises(BackendUnavailable, match="torch.func transforms"):
            torch.func.grad(lambda t: f(t, p.values[0]))(x)
