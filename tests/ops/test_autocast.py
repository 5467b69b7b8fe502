"""Mixed precision: the fused ops under torch.autocast follow the PyTorch ops they replace
(ddkernels.ops._autocast.POLICIES), and ConvNet-3 runs forward + backward under CPU bfloat16
autocast on the fused cpu backend, as accurate as PyTorch's own layers under autocast.

Flash-attention's rule: the fused result's error against a float64 run is at most 2x the error of
PyTorch's own computation under the same autocast (plus a small floor)."""
import copy

import pytest
import torch

import ddkernels
from ddkernels import _ext
from ddkernels.ops import _autocast
from ddkernels.ops.norm_relu_pool import BACKENDS as NRP_BACKENDS
from ddkernels.testing import assert_close

needs_cpu = pytest.mark.skipif(not _ext.cpu_available()[0], reason="C++ extension not built")
HALF = [pytest.param(torch.bfloat16, id="bf16"), pytest.param(torch.float16, id="f16")]


def _err(a, b):
    return (a.double() - b.double()).abs().max().item()


def _l2(a, b):
    return (a.double() - b.double()).norm().item()


@pytest.mark.parametrize("dtype", HALF)
def test_norm_relu_pool_mixed_dtypes_follow_cpu_group_norm(dtype):
    """A half x with float32 γ/β (a GroupNorm after an autocast conv): accepted, the result has x's
    dtype, as CPU F.group_norm; the same with and without autocast."""
    x = torch.randn(2, 3, 8, 8).to(dtype)
    w, b = torch.randn(3), torch.randn(3)
    expect = torch.nn.functional.group_norm(x, 3, w, b).relu()
    assert expect.dtype == dtype
    for backend in ("reference", "cpu") if _ext.cpu_available()[0] else ("reference",):
        y = ddkernels.norm_relu_pool(x, w, b, pool=False, backend=backend)
        assert y.dtype == dtype
        with torch.autocast("cpu", dtype=dtype):
            assert ddkernels.norm_relu_pool(x, w, b, pool=False, backend=backend).dtype == dtype
        assert_close(y.float(), expect.float(), atol=2e-2, rtol=2e-2, name=f"{backend} mixed")
    with pytest.raises(TypeError, match="weight must have the dtype of x .* float32"):
        ddkernels.norm_relu_pool(x, w.double(), b)


def test_policies_cover_every_op():
    assert set(_autocast.POLICIES) == set(ddkernels.ops.names())
    for op, by_device in _autocast.POLICIES.items():
        assert set(by_device) == {"cpu", "cuda"}, op


def test_autocast_dtypes_per_policy():
    x = torch.randn(2, 3, 8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        # keep: the input's dtype (float32 stays float32; bf16 stays bf16)
        assert ddkernels.multi_formation(x, 2).dtype == torch.float32
        assert ddkernels.multi_formation(x.bfloat16(), 2).dtype == torch.bfloat16
        # fp32: a loss over half gradients is computed in float32
        g = [torch.randn(4, 3).bfloat16()]
        assert ddkernels.grad_distance(g, [torch.randn(4, 3)], "mse").dtype == torch.float32
        # promote: half features with float32 parameters give float32, as scale * x + shift
        hb = torch.randn(2, 3, 3, 4, 4).bfloat16()
        assert ddkernels.scale_shift(hb, torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)).dtype == torch.float32
        # lower: a conv runs in the autocast dtype, float64 is left alone
        from ddkernels.ops.small_conv import small_conv2d
        assert small_conv2d(x, torch.randn(3, 3, 3, 3)).dtype == torch.bfloat16
        assert small_conv2d(x.double(), torch.randn(3, 3, 3, 3).double()).dtype == torch.float64


@needs_cpu
def test_auto_picks_cpu_for_half():
    for dtype in (torch.bfloat16, torch.float16):
        assert NRP_BACKENDS.select("auto", torch.device("cpu"), dtype) == "cpu"


@needs_cpu
# Whole-network errors are a sum of many independent bf16 roundings: compared in the L2 norm per
# tensor (the max over a few hundred elements of a narrow net swings ±2x between seeds).
@pytest.mark.parametrize("width", [32, 128])
def test_convnet_under_cpu_autocast_runs_fused_and_matches_pytorch(width):
    torch.manual_seed(0)
    fused = ddkernels.nn.ConvNet(1, 10, width=width, im_size=(28, 28), backend="cpu")
    ref = copy.deepcopy(fused)
    ref.backend = "reference"
    exact = copy.deepcopy(fused).double()
    exact.backend = "reference"
    x = torch.randn(16, 1, 28, 28)
    y = torch.randint(0, 10, (16,))

    def run(model, inp, amp):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            out = model(inp)
            loss = torch.nn.functional.cross_entropy(out, y)
        grads = torch.autograd.grad(loss, list(model.parameters()))
        return out, grads

    out, grads = run(fused, x, True)  # backend="cpu": raises if the fused kernel cannot run
    assert out.dtype == torch.bfloat16
    out_ref, grads_ref = run(ref, x, True)
    out64, grads64 = run(exact, x.double(), False)
    assert _l2(out, out64) <= 2 * _l2(out_ref, out64) + 1e-3
    for (name, _), g, gr, g64 in zip(fused.named_parameters(), grads, grads_ref, grads64):
        assert g.dtype == torch.float32, name
        assert _l2(g, g64) <= 2 * _l2(gr, g64) + 1e-4 * g64.norm().item(), name



@pytest.mark.parametrize("channels", [1, 3])
def test_single_channel_conv_takes_float32_backward_under_cpu_autocast(channels):
    # _autocast.conv_float_backward: oneDNN's bfloat16 backward for one input channel is the slow one;
    # ConvNet's run_features keeps that conv's forward in bfloat16 and takes the float32 conv's gradients.
    from ddkernels.nn.convnet import run_features

    conv = torch.nn.Conv2d(channels, 8, 3, padding=3)
    x = torch.randn(2, channels, 28, 28, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert _autocast.conv_float_backward(x, conv) == (channels == 1)
        big = torch.randn(_autocast.FLOAT_BACKWARD_MAX_BATCH + 1, channels, 28, 28)
        assert not _autocast.conv_float_backward(big, conv)  # large batches: autocast's own conv
        y = run_features(torch.nn.Sequential(conv), x)
    assert y.dtype == torch.bfloat16
    gy = torch.randn_like(y)
    got = torch.autograd.grad(y, [x, conv.weight, conv.bias], gy)
    assert all(g.dtype == torch.float32 for g in got)
    want = torch.ops.aten.convolution_backward(gy.float(), x.detach(), conv.weight.detach(), [8], [1, 1], [3, 3],
                                               [1, 1], False, [0, 0], 1, [True, True, True])
    if channels == 1:  # the float32 conv's backward, bitwise
        for g, w in zip(got, want):
            assert torch.equal(g, w)
    else:  # PyTorch's own bfloat16 backward, as autocast runs it
        assert not torch.equal(got[1], want[1])
    assert not _autocast.conv_float_backward(x, conv)  # autocast off


def test_half_forward_float_backward_is_twice_differentiable():
    # Trajectory matching differentiates the first-order gradient again (create_graph=True).
    x = torch.randn(2, 1, 6, 6, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, 1, 3, 3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, dtype=torch.float64, requires_grad=True)

    def f(x, w, b):
        return _autocast._HalfForwardFloatBackward.apply(x, w, b, (1, 1), (3, 3), (1, 1), 1, torch.float64)

    assert torch.autograd.gradcheck(f, (x, w, b))
    assert torch.autograd.gradgradcheck(f, (x, w, b))


def test_half_forward_float_backward_has_a_forward_mode():
    # The unroll's reverse pass runs the student in forward mode (reverse over forward): the tangent is
    # conv(tx, W) + conv(x, tW) + tb, each conv again half forward / float backward.
    import torch.autograd.forward_ad as fwAD

    ins = [torch.randn(s, dtype=torch.float64, requires_grad=True) for s in ((2, 1, 6, 6), (3, 1, 3, 3), (3,))]
    tangents = [torch.randn_like(t).requires_grad_() for t in ins]

    def tangent(x, w, b, tx, tw, tb, dtype=torch.float64):
        with fwAD.dual_level():
            duals = [fwAD.make_dual(p, t) for p, t in zip((x, w, b), (tx, tw, tb))]
            y = _autocast._HalfForwardFloatBackwardDual.apply(*duals, (1, 1), (3, 3), (1, 1), 1, dtype)
            return fwAD.unpack_dual(y).tangent

    want = torch.nn.functional.conv2d(tangents[0], ins[1], tangents[2], padding=3) + torch.nn.functional.conv2d(
        ins[0], tangents[1], padding=3)
    assert_close(tangent(*ins, *tangents), want)
    assert torch.autograd.gradcheck(tangent, (*ins, *tangents))
    # bfloat16: the tangent in bfloat16 (as the forward), its gradients float32 (as the backward)
    ins32 = [t.detach().float().requires_grad_() for t in (*ins, *tangents)]
    t16 = tangent(*ins32, dtype=torch.bfloat16)
    assert t16.dtype == torch.bfloat16
    bf = [t.detach().bfloat16() for t in (*ins, *tangents)]  # PyTorch's own bfloat16 convs of the same terms
    conv = torch.nn.functional.conv2d
    own = conv(bf[3], bf[1], bf[5], padding=3) + conv(bf[0], bf[4], padding=3)
    assert _err(t16, want) <= 2 * _err(own, want) + 1e-3 * want.abs().max().item()
    assert all(g.dtype == torch.float32 for g in torch.autograd.grad(t16.float().sum(), ins32[:2] + ins32[3:5]))
