"""Half precision (bfloat16, float16) through every op's kernel backends at realistic shapes.

Flash-attention's rule: the fused half result's error against a float64 reference is at most 2x
the error of PyTorch's own computation in that half dtype (the reference backend run on the half
inputs), plus a floor of two half ulps of the result's scale — forward and every gradient.
Interpreted Triton gets small shapes only."""
import dataclasses

import pytest
import torch

import ddkernels
from ddkernels.ops.small_conv import small_conv2d
from tests.conftest import fused_backends

HALF = [pytest.param(torch.bfloat16, id="bf16"), pytest.param(torch.float16, id="f16")]
INTERPRETED = not torch.cuda.is_available()


def _norm_relu_pool(big):
    shape = (8, 32, 32, 32) if big else (2, 3, 8, 8)
    n, c = shape[:2]
    x = torch.randn(shape, dtype=torch.float64) * (1 + torch.rand(n, c, 1, 1, dtype=torch.float64)) \
        + 3 * torch.randn(n, c, 1, 1, dtype=torch.float64)
    return [x, torch.randn(c, dtype=torch.float64), 0.5 * torch.randn(c, dtype=torch.float64)], \
        lambda a, be: ddkernels.norm_relu_pool(*a, backend=be)


def _scale_shift(big, normalize=False):
    hn, b, c, h, w = (5, 20, 3, 30, 30) if big else (2, 3, 2, 5, 6)
    x = torch.randn(hn, b, c, h, w, dtype=torch.float64)
    s, t = torch.randn(hn, c, h, w, dtype=torch.float64), torch.randn(hn, c, h, w, dtype=torch.float64)
    return [x, s, t], lambda a, be: ddkernels.scale_shift(*a, normalize=normalize, backend=be)


def _multi_formation(big):
    x = torch.rand((10, 3, 32, 32) if big else (2, 2, 8, 8), dtype=torch.float64)
    return [x], lambda a, be: ddkernels.multi_formation(a[0], 2, backend=be)


def _affine_crop(big):
    n, c, h = (10, 3, 32) if big else (2, 2, 8)
    x = torch.rand(n, c, h, h, dtype=torch.float64)
    # Offsets on a 1/8-pixel grid: exact in bfloat16 up to 32 px, so the half inputs are the float64 ones (a
    # rounded window would move the taps, and the window gradient is discontinuous where a tap crosses a pixel).
    offsets = torch.randint(-4, 5, (n, 4, 4)).to(torch.float64) / 8
    theta = ddkernels.crop_grid(h, h, 2, n, dtype=torch.float64) + offsets
    return [x, theta], lambda a, be: ddkernels.affine_crop(a[0], a[1], backend=be)


def _grad_distance(big, metric="ours"):
    shapes = [(10, 128, 3, 3, 3), (10, 128), (10, 10, 2048)] if big else [(2, 4, 3, 3, 3), (2, 4)]
    syn = [torch.randn(s, dtype=torch.float64) for s in shapes]
    real = [torch.randn(s, dtype=torch.float64) for s in shapes]
    n = len(shapes)
    return syn + real, lambda a, be: ddkernels.grad_distance(a[:n], a[n:], metric, batched=True, backend=be)


def _small_conv(big):
    x = torch.randn((16, 6, 30, 30) if big else (2, 2, 6, 6), dtype=torch.float64)
    wt = torch.randn((6, 2, 3, 3) if big else (2, 2, 3, 3), dtype=torch.float64)
    groups = 3 if big else 1
    return [x, wt, torch.randn(wt.shape[0], dtype=torch.float64)], \
        lambda a, be: small_conv2d(a[0], a[1], a[2], 1, groups, backend=be)


CASES = {
    "norm_relu_pool": _norm_relu_pool,
    "scale_shift": _scale_shift,
    "scale_shift-normalize": lambda big: _scale_shift(big, normalize=True),
    "multi_formation": _multi_formation,
    "affine_crop": _affine_crop,
    "grad_distance": _grad_distance,
    "grad_distance-mse": lambda big: _grad_distance(big, "mse"),
    "small_conv": _small_conv,
}


def _declares_half(op: str, backend: str) -> bool:
    return not ddkernels.dispatch.OpBackends.registry[op].reasons(backend, torch.device("cpu"), torch.bfloat16)


def _params():
    """(case, backend) for every fused backend that declares half kernels."""
    out = []
    for case in CASES:
        op = case.split("-")[0]
        for b in fused_backends(op):
            if _declares_half(op, b.values[0]):
                out.append(pytest.param(case, b.values[0], marks=b.marks, id=f"{case}-{b.id}"))
    return out


def _cpu_params():
    """(case, "cpu") for every case whose op has a cpu kernel (skipped with reasons where it cannot run)."""
    return [pytest.param(case, b.values[0], marks=b.marks, id=f"{case}-{b.id}")
            for case in CASES for b in fused_backends(case.split("-")[0]) if b.values[0] == "cpu"]


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("case, backend", _cpu_params())
def test_backends_without_half_kernels_say_so(case, backend, dtype, monkeypatch):
    # Every cpu kernel now declares the half types, so the rule is checked on a declaration without
    # them: an explicit backend refuses by name (the dtype), auto falls back to the reference.
    op = case.split("-")[0]
    table = ddkernels.dispatch.OpBackends.registry[op].backends
    monkeypatch.setitem(table, backend, dataclasses.replace(table[backend], dtypes=(torch.float32, torch.float64)))
    inputs, fn = CASES[case](big=False)
    xs = [t.to(dtype) for t in inputs]
    with pytest.raises(ddkernels.BackendUnavailable, match=str(dtype).replace("torch.", "")):
        fn(xs, backend)
    assert fn(xs, "auto").dtype == dtype


def _run(fn, inputs, backend, dtype, up):
    xs = [t.to(dtype).requires_grad_() for t in inputs]
    y = fn(xs, backend)
    return [y.detach(), *torch.autograd.grad(y, xs, up.to(y.dtype), allow_unused=True, materialize_grads=True)]


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("case, backend", _params())
def test_half_within_twice_pytorch_half_error(case, backend, dtype):
    inputs, fn = CASES[case](big=not (backend == "triton" and INTERPRETED))
    up = torch.rand(fn([t.float() for t in inputs], "reference").shape, dtype=torch.float64) - 0.5
    fused = _run(fn, inputs, backend, dtype, up)
    ref = _run(fn, inputs, "reference", dtype, up)
    exact = _run(fn, inputs, "reference", torch.float64, up)
    eps = torch.finfo(dtype).eps
    for name, f, r, e in zip(["forward"] + [f"grad {i}" for i in range(len(inputs))], fused, ref, exact):
        assert f.dtype == dtype, name
        err, ref_err = (f.double() - e).abs().max().item(), (r.double() - e).abs().max().item()
        allowed = 2 * ref_err + 2 * eps * max(1.0, e.abs().max().item())
        assert err <= allowed, f"{case} {backend} {name}: error {err:.3g} > {allowed:.3g} (PyTorch half: {ref_err:.3g})"
