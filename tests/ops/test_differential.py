"""Randomized differential test: every public op on every fused backend against the reference.

A fixed seed draws, per op, cases over shapes (degenerate sizes included), dtypes, layouts
(non-contiguous, channels_last, expanded, storage-offset views), ``requires_grad`` patterns and
upstream gradients (random, all ones, which the fused grad_distance treats specially), and checks
the forward, the gradients and, for some cases, a second derivative (``create_graph=True``).

Rules: the fused result's error against the float64 reference is at most 2x the reference's own
error in that dtype, plus a floor (a few ulps; float64, where the reference is the yardstick, uses
ddkernels.testing's float64 tolerance); an input the reference refuses must be refused with the same
exception type (and vice versa) — a fused result where the reference raises (or the reverse) is a
failure, as is any NaN the other side does not have.

Crash isolation: each op's cases run in a subprocess that announces every case before running it,
so a segfault (e.g. PyTorch's CPU group_norm backward on a channels_last input) fails the test with
the case that crashed instead of killing pytest. Triton runs interpreted here: a few small cases only.
"""
from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import traceback

import pytest
import torch

from ddkernels.testing import TOLERANCES

SEED = 20260518
CASES_PER_OP = 40
TRITON_CASES = 3  # interpreted Triton runs one program at a time
HALF = (torch.float16, torch.bfloat16)
LAYOUTS = ("contiguous", "noncontig", "channels_last", "expanded", "offset")


# --- inputs ------------------------------------------------------------------------------------

class Leaf:
    """One tensor input: its values (a leaf that may require grad) and the layout it is passed in."""

    def __init__(self, name, values, layout, grad, shape):
        self.name, self.values, self.layout, self.grad, self.shape = name, values, layout, grad, shape

    def to(self, dtype):
        return Leaf(self.name, self.values.detach().to(dtype), self.layout, self.grad, self.shape)

    def leaf(self):
        return self.values.detach().clone().requires_grad_(self.grad)


def laid_out(leaf: torch.Tensor, layout: str, shape) -> torch.Tensor:
    """``leaf`` in ``layout``, through differentiable ops (gradients flow back to ``leaf``).
    An expanded input's leaf has a leading 1 that expands to ``shape[0]``."""
    if layout == "expanded":
        return leaf.expand(shape)
    if layout == "channels_last" and leaf.dim() == 4:
        return leaf.contiguous(memory_format=torch.channels_last)
    if layout in ("noncontig", "channels_last") and leaf.dim() >= 2:
        return leaf.transpose(-1, -2).contiguous().transpose(-1, -2)
    if layout == "offset":
        flat = torch.cat([leaf.new_zeros(3), leaf.reshape(-1)])
        return flat[3:].view(leaf.shape)
    return leaf


def make_leaf(rng: random.Random, name, shape, dtype, grad, layouts=LAYOUTS, low=-1.0, high=1.0) -> Leaf:
    layout = rng.choice(layouts)
    if layout == "expanded" and (not shape or shape[0] == 0):
        layout = "offset"
    leaf_shape = (1, *shape[1:]) if layout == "expanded" else tuple(shape)
    g = torch.Generator().manual_seed(rng.randrange(2**31))
    values = torch.rand(leaf_shape, generator=g, dtype=torch.float64) * (high - low) + low
    return Leaf(name, values.to(dtype), layout, grad, tuple(shape))


class Case:
    def __init__(self, op, cid, fn, leaves, dtype, upstream="random", second=False, triton=False):
        self.op, self.cid, self.fn, self.leaves, self.dtype = op, cid, fn, leaves, dtype
        self.upstream, self.second, self.triton = upstream, second, triton

    def describe(self):
        ins = ", ".join(f"{l.name}{tuple(l.shape)}:{l.layout}{'+g' if l.grad else ''}" for l in self.leaves)
        return (f"{self.op}#{self.cid} [{self.fn.desc}] dtype={str(self.dtype).replace('torch.', '')} "
                f"upstream={self.upstream} second={self.second}: {ins}")


class Call:
    """``fn(args, backend)`` with a description; ``args`` are the laid-out inputs in leaf order."""

    def __init__(self, fn, desc):
        self.fn, self.desc = fn, desc

    def __call__(self, args, backend):
        return self.fn(args, backend)


def _dtype(rng, fused_ok=True):
    # Half types run on every fused backend that declares them (on the reference, through auto,
    # where one does not: that checks its crash paths).
    r = rng.random()
    if r < 0.35:
        return torch.float32
    if r < 0.7 or not fused_ok:
        return torch.float64
    return rng.choice(HALF)


def _grad_pattern(rng, n):
    return [rng.random() < 0.6 for _ in range(n)]


# --- case generators, one per op -----------------------------------------------------------------

def cases_multi_formation(rng, i):
    import ddkernels
    n, c = rng.choice([0, 1, 2, 3]), rng.choice([0, 1, 3, 3])
    h, w = rng.randint(1, 9), rng.randint(1, 9)
    factor = rng.randint(1, min(h, w, 4))
    size = rng.choice([None, rng.randint(1, 10), (rng.randint(1, 9), rng.randint(1, 9))])
    multi = rng.random() < 0.25
    dtype = _dtype(rng)
    x = make_leaf(rng, "x", (n, c, h, w), dtype, rng.random() < 0.8)
    fn = Call(lambda a, be: ddkernels.multi_formation(a[0], factor, size, multi=multi, backend=be),
              f"factor={factor} size={size} multi={multi}")
    return [x], fn, dtype


def _param_shape(rng):
    nd = rng.choice([1, 1, 2, 2, 3, 4, 4, 5])
    dims = [rng.randint(1, 4) for _ in range(nd)]
    if rng.random() < 0.1:
        dims[rng.randrange(nd)] = 0
    return tuple(dims)


def cases_grad_distance(rng, i):
    import ddkernels
    metric = rng.choice(["ours", "ours", "mse", "l1", "l1_mean", "l1_mean", "global_cos"])
    batched = rng.random() < 0.6
    k = rng.choice([0, 1, 2, 3]) if batched else None
    shapes = [_param_shape(rng) for _ in range(rng.randint(1, 3))]
    dtype = _dtype(rng)
    need_syn, need_real = rng.random() < 0.85, rng.random() < 0.3
    lead = (k,) if batched else ()
    syn = [make_leaf(rng, f"g_syn[{j}]", lead + s, dtype, need_syn) for j, s in enumerate(shapes)]
    real = [make_leaf(rng, f"g_real[{j}]", lead + s, dtype, need_real) for j, s in enumerate(shapes)]
    n = len(shapes)
    fn = Call(lambda a, be: ddkernels.grad_distance(a[:n], a[n:], metric, batched=batched, backend=be),
              f"metric={metric} batched={batched}")
    return syn + real, fn, dtype


def cases_scale_shift(rng, i):
    import ddkernels
    sampled = rng.random() < 0.5
    hn = rng.randint(1, 3) if sampled else rng.choice([0, 1, 2, 3])
    b, c, h, w = rng.choice([0, 1, 2, 3]), rng.randint(1, 3), rng.randint(1, 5), rng.randint(1, 5)
    per = rng.choice(["pixel", "channel2", "channel4"])
    pshape = {"pixel": (hn, c, h, w), "channel2": (hn, c), "channel4": (hn, c, 1, 1)}[per]
    normalize = rng.random() < 0.5
    dtype = _dtype(rng)
    gx, gs, gt = _grad_pattern(rng, 3)
    x = make_leaf(rng, "x", (b, c, h, w) if sampled else (hn, b, c, h, w), dtype, gx)
    scale = make_leaf(rng, "scale", pshape, dtype, gs)
    shift = make_leaf(rng, "shift", pshape, dtype, gt)
    index = torch.tensor([rng.randrange(hn) for _ in range(b)], dtype=torch.int64) if sampled else None
    fn = Call(lambda a, be: ddkernels.scale_shift(a[0], a[1], a[2], index=index, normalize=normalize, backend=be),
              f"sampled={sampled} per={per} normalize={normalize}")
    return [x, scale, shift], fn, dtype


def cases_norm_relu_pool(rng, i):
    import ddkernels
    n, c = rng.choice([1, 1, 2, 3]), rng.choice([0, 1, 2, 4])
    pool = rng.random() < 0.6
    h, w = (rng.randint(2, 7), rng.randint(2, 7)) if pool else rng.choice([(1, 1), (rng.randint(1, 6), rng.randint(1, 6))])
    dtype = _dtype(rng)
    gx, gw, gb = _grad_pattern(rng, 3)
    has_w, has_b = rng.random() < 0.7, rng.random() < 0.7
    x = make_leaf(rng, "x", (n, c, h, w), dtype, gx, low=-2.0, high=3.0)
    leaves = [x]
    if has_w:
        leaves.append(make_leaf(rng, "weight", (c,), dtype, gw, low=-1.5, high=1.5))
    if has_b:
        leaves.append(make_leaf(rng, "bias", (c,), dtype, gb, low=-0.5, high=0.5))

    def call(a, be):
        it = iter(a[1:])
        weight = next(it) if has_w else None
        bias = next(it) if has_b else None
        return ddkernels.norm_relu_pool(a[0], weight, bias, pool=pool, backend=be)

    return leaves, Call(call, f"pool={pool} weight={has_w} bias={has_b}"), dtype


def cases_small_conv(rng, i):
    from ddkernels.ops.small_conv import small_conv2d, small_conv_transpose2d
    groups = rng.choice([1, 1, 2, 3])
    n, k = rng.choice([0, 1, 2]), rng.choice([1, 2, 3])
    cg, og = rng.randint(1, 2), rng.randint(1, 2)
    h, w = rng.randint(k, 6), rng.randint(k, 6)
    transpose = rng.random() < 0.4
    dtype = _dtype(rng)
    gx, gw, gb = _grad_pattern(rng, 3)
    has_b = rng.random() < 0.6
    x = make_leaf(rng, "x", (n, cg * groups, h, w), dtype, gx)
    wshape = (cg * groups, og, k, k) if transpose else (og * groups, cg, k, k)
    weight = make_leaf(rng, "weight", wshape, dtype, gw)
    leaves = [x, weight] + ([make_leaf(rng, "bias", (og * groups,), dtype, gb)] if has_b else [])
    padding = rng.randint(0, k - 1)

    def call(a, be):
        bias = a[2] if has_b else None
        if transpose:
            return small_conv_transpose2d(a[0], a[1], bias, groups, backend=be)
        return small_conv2d(a[0], a[1], bias, padding, groups, backend=be)

    return leaves, Call(call, f"transpose={transpose} groups={groups} padding={padding}"), dtype


GENERATORS = {"multi_formation": cases_multi_formation, "grad_distance": cases_grad_distance,
              "scale_shift": cases_scale_shift, "norm_relu_pool": cases_norm_relu_pool,
              "small_conv": cases_small_conv}


def make_cases(op: str) -> list[Case]:
    rng = random.Random(f"{SEED}-{op}")
    cases = []
    for i in range(CASES_PER_OP):
        leaves, fn, dtype = GENERATORS[op](rng, i)
        upstream = rng.choice(["random", "random", "ones"])
        cases.append(Case(op, i, fn, leaves, dtype, upstream, second=rng.random() < 0.3))
    # The Triton subset: the first few small, non-degenerate cases of each kind (float, half).
    small = [c for c in cases if all(0 < l.values.numel() <= 256 for l in c.leaves)]
    for c in [c for c in small if c.dtype not in HALF][:TRITON_CASES] + [c for c in small if c.dtype in HALF][:2]:
        c.triton = True
    return cases


# --- running one case ------------------------------------------------------------------------------

def run(case: Case, backend: str, dtype: torch.dtype):
    """Forward, gradients of the requiring leaves and (``second``) the gradient of a weighted sum of
    those gradients; returns ``("ok", tensors)`` or ``("raise", exception type name)``."""
    leaves = [l.to(dtype) for l in case.leaves]
    xs = [l.leaf() for l in leaves]
    args = [laid_out(x, l.layout, l.shape) for x, l in zip(xs, leaves)]
    try:
        out = case.fn(args, backend)
    except Exception as e:  # noqa: BLE001 — which exception is part of what is compared
        return "raise", type(e).__name__, str(e)
    results = [out.detach()]
    wanted = [x for x in xs if x.requires_grad]
    if wanted and not out.requires_grad:  # a constant output (the reference's "ours" over 1-D tensors)
        zeros = [torch.zeros_like(x) for x in wanted]
        return "ok", results + zeros + (zeros + [torch.zeros_like(out)] if case.second else []), ""
    if wanted:
        g = torch.Generator().manual_seed(case.cid)
        up = (torch.ones(out.shape, dtype=torch.float64) if case.upstream == "ones"
              else torch.rand(out.shape, generator=g, dtype=torch.float64) - 0.5).to(dtype)
        # Second order also differentiates with respect to the upstream gradient (the backward's
        # own input: multi_formation's only one).
        up.requires_grad_(case.second)
        grads = torch.autograd.grad(out, wanted, up, create_graph=case.second, allow_unused=True,
                                    materialize_grads=True)
        results += [t.detach() for t in grads]
        if case.second:
            # A gradient that comes back outside the graph counts as zero second derivative: a
            # backend that silently drops the graph disagrees with the reference here.
            weights = [(torch.rand(t.shape, generator=g, dtype=torch.float64) - 0.5).to(dtype) for t in grads]
            total = sum((t * v).sum() for t, v in zip(grads, weights))
            if total.requires_grad:
                results += [t.detach() for t in torch.autograd.grad(total, [*wanted, up], allow_unused=True,
                                                                    materialize_grads=True)]
            else:
                results += [torch.zeros_like(x) for x in (*wanted, up)]
    return "ok", results, ""


def _floor(dtype, scale):
    """The error allowed on top of 2x the reference's own: in float64 the reference *is* the
    yardstick (its own error is 0), so the house tolerance for float64; otherwise a few ulps (two
    for the half types, whose ulp is large)."""
    if dtype == torch.float64:
        atol, rtol = TOLERANCES[torch.float64]
        return atol + rtol * scale
    return (2 if dtype in HALF else 16) * torch.finfo(dtype).eps * max(1.0, scale)


def compare(case: Case, backend: str) -> str | None:
    """None if ``backend`` agrees with the reference on ``case``, else what went wrong."""
    fused = run(case, backend, case.dtype)
    ref = run(case, "reference", case.dtype)
    exact = run(case, "reference", torch.float64)
    if ref[0] == "raise" or fused[0] == "raise":
        if fused[:2] != ref[:2]:
            what = lambda r: f"raises {r[1]}: {r[2][:200]}" if r[0] == "raise" else "returns a result"
            return f"{backend} {what(fused)}; reference {what(ref)}"
        return None
    if exact[0] == "raise":
        return f"the float64 reference raises {exact[1]}: {exact[2][:200]}"
    names = ["forward"] + [f"grad {i}" for i in range(len(fused[1]) - 1)]
    if not (len(fused[1]) == len(ref[1]) == len(exact[1])):
        return f"{backend} gives {len(fused[1])} results, the reference {len(ref[1])}"
    for name, f, r, e in zip(names, fused[1], ref[1], exact[1]):
        if f.shape != e.shape or f.dtype != r.dtype:
            return f"{name}: {backend} gives {tuple(f.shape)} {f.dtype}, reference {tuple(e.shape)} {r.dtype}"
        f64, r64 = f.double(), r.double()
        nan = torch.isnan(f64) | torch.isnan(e)
        if not torch.equal(torch.isnan(f64), torch.isnan(e)):
            return f"{name}: NaN where the float64 reference has none (or the reverse)"
        if not f.numel() or nan.all():
            continue
        f64, r64, e = f64[~nan], r64[~nan], e[~nan]
        ref_err = (r64 - e).abs().max().item()
        err = (f64 - e).abs().max().item()
        allowed = 2 * ref_err + _floor(case.dtype, e.abs().max().item())
        if err > allowed:
            return (f"{name}: {backend} error {err:.3g} vs float64 > allowed {allowed:.3g} "
                    f"(2x the reference's own {ref_err:.3g} + a floor)")
    return None


def worker(op: str) -> None:
    """Run every case of ``op``; print ``START <id>`` before each (flushed) and a JSON summary."""
    from tests.conftest import fused_backends  # noqa: F401 — sets TRITON_INTERPRET, imports ddkernels
    from ddkernels import dispatch

    backends = dispatch.OpBackends.registry[op].backends
    fused = [b for b in ("cpu", "triton") if b in backends and backends[b].devices
             and not dispatch.OpBackends.registry[op].reasons(b, torch.device("cpu"), torch.float32)]
    failures, ran = [], 0
    for case in make_cases(op):
        for backend in fused:
            if backend == "triton" and not case.triton:
                continue
            if case.dtype in HALF and dispatch.OpBackends.registry[op].reasons(backend, torch.device("cpu"),
                                                                                 case.dtype):
                backend = "auto"  # a backend without half kernels: auto's path (the reference), never a crash
            print(f"START {case.describe()} backend={backend}", flush=True)
            try:
                why = compare(case, backend)
            except Exception:  # noqa: BLE001 — an unexpected error is a failure with its traceback
                why = "error:\n" + traceback.format_exc(limit=4)
            ran += 1
            if why:
                failures.append(f"{case.describe()} backend={backend}: {why}")
    print("SUMMARY " + json.dumps({"backends": fused, "ran": ran, "failures": failures}), flush=True)


# --- the tests ----------------------------------------------------------------------------------

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.parametrize("op", sorted(GENERATORS))
def test_differential(op):
    env = dict(os.environ, TRITON_INTERPRET=os.environ.get("TRITON_INTERPRET", "1"), PYTHONPATH=ROOT,
               OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", f"from tests.ops.test_differential import worker; worker({op!r})"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    lines = proc.stdout.splitlines()
    summary = [l for l in lines if l.startswith("SUMMARY ")]
    if proc.returncode != 0 or not summary:
        started = [l for l in lines if l.startswith("START ")]
        last = started[-1][6:] if started else "(before the first case)"
        pytest.fail(f"{op}: the case process died (exit {proc.returncode}) during {last}\n{proc.stderr[-2000:]}")
    result = json.loads(summary[-1][8:])
    if not result["backends"]:  # as tests.conftest.fused_backends: skipped with a reason, never dropped
        pytest.skip(f"{op}: no fused backend can run here (no C++ extension, no triton)")
    assert result["ran"] >= (CASES_PER_OP if "cpu" in result["backends"] else TRITON_CASES)
    assert not result["failures"], f"{len(result['failures'])} of {result['ran']} cases disagree:\n" + \
        "\n".join(result["failures"])
