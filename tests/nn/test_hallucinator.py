"""HallucinatorBank against Hn separate HaBa hallucinators run in a Python loop (the official way)."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import ddkernels
from ddkernels.nn import HallucinatorBank
from ddkernels.ops.scale_shift import reference
from ddkernels.testing import assert_close
from tests.conftest import fused_backends

BACKENDS = fused_backends("scale_shift") + ["reference"]
INTERPRETED = not torch.cuda.is_available()


class HaBaHallucinator(nn.Module):
    """One hallucinator as in Huage001/DatasetFactorization's ``StyleTranslator``:
    conv (valid) -> scale ⊙ features + shift -> transposed conv, optionally instance-normalized."""

    def __init__(self, in_ch, mid, out, k, feature_size, normalize=False):
        super().__init__()
        self.enc = nn.Conv2d(in_ch, mid, k)
        self.scale = nn.Parameter(torch.ones(1, mid, *feature_size))
        self.shift = nn.Parameter(torch.zeros(1, mid, *feature_size))
        self.dec = nn.ConvTranspose2d(mid, out, k)
        self.normalize = normalize

    def forward(self, x):
        f = self.enc(x)
        if self.normalize:
            f = reference.instance_norm(f, 1e-5)
        return self.dec(self.scale * f + self.shift)


def _bank_and_loop(hn=3, in_ch=3, mid=3, out=3, k=3, feature_size=(6, 7), normalize=False, backend="auto"):
    bank = HallucinatorBank(hn, in_ch, mid, out, k, feature_size, normalize, backend=backend).double()
    with torch.no_grad():  # away from the (1, 0) init so scale and shift matter
        bank.scale.normal_(1.0, 0.5)
        bank.shift.normal_()
    loop = []
    for s in range(hn):
        h = HaBaHallucinator(in_ch, mid, out, k, feature_size, normalize).double()
        with torch.no_grad():
            h.enc.weight.copy_(bank.enc_weight[s * mid:(s + 1) * mid])
            h.enc.bias.copy_(bank.enc_bias[s * mid:(s + 1) * mid])
            h.scale.copy_(bank.scale[s:s + 1])
            h.shift.copy_(bank.shift[s:s + 1])
            h.dec.weight.copy_(bank.dec_weight[s * mid:(s + 1) * mid])
            h.dec.bias.copy_(bank.dec_bias[s * out:(s + 1) * out])
        loop.append(h)
    return bank, loop


def _loop_grads(loop, bank):
    """The loop's parameter gradients stacked in the bank's layout."""
    cat = lambda f: torch.cat([f(h) for h in loop])  # noqa: E731
    return {"enc_weight": cat(lambda h: h.enc.weight.grad), "enc_bias": cat(lambda h: h.enc.bias.grad),
            "scale": cat(lambda h: h.scale.grad), "shift": cat(lambda h: h.shift.grad),
            "dec_weight": cat(lambda h: h.dec.weight.grad), "dec_bias": cat(lambda h: h.dec.bias.grad)}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("normalize", [False, True], ids=["plain", "norm"])
def test_product_matches_loop(backend, normalize):
    bank, loop = _bank_and_loop(normalize=normalize, backend=backend)
    bases = torch.rand(4, 3, 8, 9, dtype=torch.float64)
    b_bank, b_loop = bases.clone().requires_grad_(), bases.clone().requires_grad_()
    y = bank(b_bank)
    assert y.shape == (4 * 3, 3, 8, 9)
    ys = torch.stack([h(b_loop) for h in loop], dim=1)  # (B, Hn, ...): base-major like the bank
    assert_close(y, ys.flatten(0, 1), name="product forward")
    g = torch.randn_like(y)
    y.backward(g)
    ys.flatten(0, 1).backward(g)
    assert_close(b_bank.grad, b_loop.grad, name="grad bases")
    for name, expected in _loop_grads(loop, bank).items():
        assert_close(getattr(bank, name).grad, expected, name=f"grad {name}")


@pytest.mark.parametrize("backend", BACKENDS)
def test_sampled_matches_loop(backend):
    bank, loop = _bank_and_loop(backend=backend)
    bases = torch.rand(5, 3, 8, 9, dtype=torch.float64)
    index = torch.tensor([2, 0, 2, 2, 0])  # hallucinator 1 unused: its gradients must be zero
    b_bank, b_loop = bases.clone().requires_grad_(), bases.clone().requires_grad_()
    y = bank(b_bank, index=index)
    ys = torch.cat([loop[int(k)](b_loop[i:i + 1]) for i, k in enumerate(index)])
    assert_close(y, ys, name="sampled forward")
    g = torch.randn_like(y)
    y.backward(g)
    ys.backward(g)
    assert_close(b_bank.grad, b_loop.grad, name="grad bases")
    for p in loop[1].parameters():  # unused by the loop too: no gradient, i.e. zero
        p.grad = torch.zeros_like(p)
    for name, expected in _loop_grads(loop, bank).items():
        assert_close(getattr(bank, name).grad, expected, name=f"grad {name}")


def test_cifar_haba_shapes_and_parameter_count():
    """HaBa's CIFAR setting: 5 hallucinators of 5,568 parameters each (docs/spec.md §4a), 32×32 in and out."""
    bank = HallucinatorBank(5, 3)
    assert bank.image_size == (32, 32)
    assert sum(p.numel() for p in bank.parameters()) == 5 * 5568
    assert torch.equal(bank.scale, torch.ones(5, 3, 30, 30)) and torch.equal(bank.shift, torch.zeros(5, 3, 30, 30))
    bases = torch.rand(10, 3, 32, 32)
    assert bank(bases).shape == (50, 3, 32, 32)
    assert bank(bases, index=torch.randint(0, 5, (10,))).shape == (10, 3, 32, 32)


def test_order_and_labels():
    bank = HallucinatorBank(3, 1, feature_size=4)
    labels = torch.tensor([7, 8])
    assert bank.targets(labels).tolist() == [7, 7, 7, 8, 8, 8]
    assert bank.product_index(2).tolist() == [0, 1, 2, 0, 1, 2]
    bases = torch.rand(2, 1, 6, 6)
    y = bank(bases)
    for row, (b, k) in enumerate([(b, k) for b in range(2) for k in range(3)]):
        single = bank(bases[b:b + 1], index=torch.tensor([k]))
        assert_close(y[row], single[0], name=f"row {row}")


def test_single_channel_bases_and_normalize_runs():
    bank = HallucinatorBank(2, 1, mid_channels=4, out_channels=3, kernel_size=5, feature_size=(10, 12), normalize=True)
    assert bank.image_size == (14, 16)
    y = bank(torch.rand(3, 1, 14, 16))
    assert y.shape == (6, 3, 14, 16) and torch.isfinite(y).all()
    assert "normalize=True" in repr(bank)


def test_bank_auto_backend_matches_reference_float32():
    bank = HallucinatorBank(5, 3)
    with torch.no_grad():
        bank.scale.normal_(1.0, 0.5)
        bank.shift.normal_()
    bases = torch.rand(8, 3, 32, 32)
    y_auto = bank(bases)  # the cpu kernel when the extension is built
    bank.backend = "reference"
    assert_close(y_auto, bank(bases), name="bank auto vs reference")


@pytest.mark.parametrize("bad, match, exc", [
    (dict(bases=torch.rand(2, 3, 30, 30)), r"bases must be 32x32 images \(feature_size \(30, 30\) \+ kernel_size 3 - 1\)", ValueError),
    (dict(bases=torch.rand(2, 1, 32, 32)), "bases must have in_channels=3 channels", ValueError),
    (dict(bases=torch.rand(3, 32, 32)), r"bases must be 4-D \(B, C, H, W\)", ValueError),
    (dict(index=torch.tensor([0, 5])), r"index must hold hallucinator numbers in \[0, Hn=5\)", ValueError),
    (dict(index=torch.tensor([0, 1], dtype=torch.int32)), "index must have dtype int64", TypeError),
])
def test_bad_input(bad, match, exc):
    bank = HallucinatorBank(5, 3)
    args = dict(bases=torch.rand(2, 3, 32, 32), index=None)
    args.update(bad)
    with pytest.raises(exc, match=match):
        bank(args["bases"], index=args["index"])


@pytest.mark.parametrize("kwargs, match", [
    (dict(num_hallucinators=0), r"num_hallucinators must be in \[1, inf\]"),
    (dict(feature_size=(30,)), "feature_size must be a positive int or a pair"),
    (dict(kernel_size=2.5), "kernel_size must be an int"),
])
def test_bad_constructor_arguments(kwargs, match):
    args = dict(num_hallucinators=5, in_channels=3)
    args.update(kwargs)
    with pytest.raises((TypeError, ValueError), match=match):
        HallucinatorBank(**args)


def test_scale_shift_exported():
    assert ddkernels.scale_shift is ddkernels.ops.scale_shift.scale_shift
    assert "scale_shift" in ddkernels.__all__
