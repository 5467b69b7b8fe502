"""scale_shift and the HallucinatorBank on HaBa's CIFAR shapes: 5 hallucinators, 3×30×30 encoded
features (3×32×32 bases), B = 100 and 500 bases, product mode (all Hn·B combinations).

Two kinds of case:
* "op": the scale-shift alone on ``(Hn, B, 3, 30, 30)`` features with per-pixel parameters (also
  in bfloat16: half the bytes);
* "bank": whole hallucinators (encoder conv → scale-shift → decoder transposed conv), forward and
  backward into bases and every parameter, against Hn separate hallucinators in a Python loop.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import ddkernels
from ddkernels.nn import HallucinatorBank
from ddkernels.ops.scale_shift import reference

from .harness import Case, Provider, dtype_label, dtype_name

FUSED = "cpu"  # the provider the table's ratio column is about, on CPU machines
EAGER = ("reference", "broadcast-eager", "torch.compile")

HN, C, FEAT, KERNEL = 5, 3, 30, 3


def _leaves(*tensors):
    return [t.detach().clone().requires_grad_() for t in tensors]


def _op_case(b: int, normalize: bool, device: str, dtype: torch.dtype = torch.float32) -> Case:
    x = torch.randn(HN, b, C, FEAT, FEAT, device=device).to(dtype)
    scale = (1 + 0.1 * torch.randn(HN, C, FEAT, FEAT, device=device)).to(dtype)
    shift = (0.1 * torch.randn(HN, C, FEAT, FEAT, device=device)).to(dtype)
    kernel = "triton" if device == "cuda" else "cpu"
    compiled = torch.compile(reference.scale_shift_eager, dynamic=False)
    r, e, c, k = (_leaves(x, scale, shift) for _ in range(4))
    providers = [
        Provider("reference", lambda r=r: reference.scale_shift(*r, normalize=normalize), r),
        Provider("broadcast-eager", lambda e=e: reference.scale_shift_eager(*e, normalize), e),
        Provider("torch.compile", lambda c=c: compiled(*c, normalize), c, warmup=3),
        Provider(kernel, lambda k=k: ddkernels.scale_shift(*k, normalize=normalize, backend=kernel), k),
    ]
    n, p, elem = x.numel(), scale.numel(), x.element_size()
    # forward: read x, scale, shift, write y. backward: read dy, x, scale; write dx, dscale, dshift.
    # Normalization statistics are recomputed from cache-resident planes, so they add no traffic.
    fwd, bwd = (2 * n + 2 * p) * elem, (3 * n + 3 * p) * elem
    norm = ", instance-norm" if normalize else ""
    return Case("scale_shift", f"op, Hn={HN}, B={b}, 3x30x30{norm}{dtype_label(dtype)}", providers,
                {"forward": fwd, "backward": bwd, "full": fwd + bwd},
                params=dict(kind="op", Hn=HN, B=b, C=C, h=FEAT, normalize=normalize, dtype=dtype_name(dtype)))


def _separate_hallucinators(bank: HallucinatorBank) -> list[nn.Module]:
    """The official formulation: one module per hallucinator, weights copied from ``bank``."""
    mid, out = bank.mid_channels, bank.out_channels
    loop = []
    for s in range(bank.num_hallucinators):
        enc = nn.Conv2d(bank.in_channels, mid, bank.kernel_size).to(bank.scale.device)
        dec = nn.ConvTranspose2d(mid, out, bank.kernel_size).to(bank.scale.device)
        with torch.no_grad():
            enc.weight.copy_(bank.enc_weight[s * mid:(s + 1) * mid])
            enc.bias.copy_(bank.enc_bias[s * mid:(s + 1) * mid])
            dec.weight.copy_(bank.dec_weight[s * mid:(s + 1) * mid])
            dec.bias.copy_(bank.dec_bias[s * out:(s + 1) * out])
        scale = nn.Parameter(bank.scale.detach()[s:s + 1].clone())
        shift = nn.Parameter(bank.shift.detach()[s:s + 1].clone())
        loop.append(nn.ParameterList([enc.weight, enc.bias, scale, shift, dec.weight, dec.bias]))
    return loop


def _run_loop(loop, bases):
    outs = []
    for enc_w, enc_b, scale, shift, dec_w, dec_b in loop:
        outs.append(F.conv_transpose2d(scale * F.conv2d(bases, enc_w, enc_b) + shift, dec_w, dec_b))
    return torch.cat(outs)


def bank_eager(params, bases, hn: int):
    """The bank in plain PyTorch: one conv, one broadcast scale-shift, one grouped transposed conv."""
    enc_w, enc_b, scale, shift, dec_w, dec_b = params
    b = bases.shape[0]
    f = F.conv2d(bases, enc_w, enc_b)
    f = torch.addcmul(shift, scale, f.view(b, hn, *scale.shape[1:]))
    # The bank's own layout choice for the grouped transposed conv, so the comparison is the op.
    f = f.view(b, -1, *f.shape[-2:]).contiguous(memory_format=torch.channels_last)
    y = F.conv_transpose2d(f, dec_w, dec_b, groups=hn)
    return y.contiguous().view(b * hn, -1, *y.shape[-2:])


def _bank_case(b: int, device: str) -> Case:
    kernel = "triton" if device == "cuda" else "cpu"
    bank = HallucinatorBank(HN, C, feature_size=FEAT, backend=kernel).to(device)
    with torch.no_grad():
        bank.scale.normal_(1.0, 0.1)
        bank.shift.normal_(0.0, 0.1)
    bases = torch.rand(b, C, FEAT + KERNEL - 1, FEAT + KERNEL - 1, device=device)
    params = [bank.enc_weight, bank.enc_bias, bank.scale, bank.shift, bank.dec_weight, bank.dec_bias]
    loop = _separate_hallucinators(bank)
    compiled = torch.compile(bank_eager, dynamic=False)
    br, be, bc, bk = (_leaves(bases)[0] for _ in range(4))
    pe, pc = _leaves(*params), _leaves(*params)
    providers = [
        Provider("reference", lambda: _run_loop(loop, br), [br, *[p for h in loop for p in h]]),
        Provider("broadcast-eager", lambda: bank_eager(pe, be, HN), [be, *pe]),
        Provider("torch.compile", lambda: compiled(pc, bc, HN), [bc, *pc], warmup=3),
        Provider(kernel, lambda: bank(bk), [bk, *bank.parameters()]),
    ]
    elem = bases.element_size()
    nb, ni = bases.numel(), HN * bases.numel()
    np_ = sum(p.numel() for p in params)
    # The traffic of a hallucinator fused end to end (features stay on chip): bases and parameters
    # in, images out; backward reads dy and bases, writes dbases and the parameter gradients.
    fwd, bwd = (nb + np_ + ni) * elem, (ni + 2 * nb + 2 * np_) * elem
    return Case("scale_shift", f"bank fwd+bwd, Hn={HN}, B={b}, 3x32x32", providers,
                {"forward": fwd, "backward": bwd, "full": fwd + bwd},
                params=dict(kind="bank", Hn=HN, B=b, C=C, h=FEAT + KERNEL - 1, normalize=False))


def cases(quick: bool = False, device: str = "cpu") -> list[Case]:
    batches = (100, 500)
    out = [_op_case(b, False, device) for b in batches]
    if not quick:
        out += [_op_case(b, True, device) for b in batches]
    out += [_op_case(b, False, device, torch.bfloat16) for b in batches]
    out += [_bank_case(b, device) for b in (batches[:1] if quick else batches)]
    return out
