"""Mixed precision for the trainers, the experts and the evaluation (issue 21): ``precision`` is
``"fp32"`` (default: everything in float32, as before), ``"bf16"`` or ``"fp16"``.

Under ``bf16``/``fp16`` the networks' forward passes (and the backward passes autograd derives from
them) run under :func:`torch.autocast`: convolutions and linear layers in the half type, the ops autocast
keeps in float32 (losses, softmax, norms' statistics) in float32. One measured exception on CPU:
ConvNet's conv with a single input channel takes its backward in float32 on small batches
(:func:`ddkernels.ops._autocast.conv_float_backward`; oneDNN's bfloat16 backward for it is 2-4x
slower). What is *stored* stays float32: the synthetic tensors are float32 leaves (autocast casts
copies of them), so their gradients and every optimizer state are float32; the networks' parameters
likewise. ``fp16`` needs a CUDA device (this is
where float16 is fast; CPUs without AVX512-FP16 emulate it) and adds a gradient scaler
(:func:`grad_scaler`) to every optimizer step so small gradients do not underflow.
"""
from __future__ import annotations

import contextlib

import torch

PRECISIONS = ("fp32", "bf16", "fp16")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def check_precision(precision, device: str | torch.device | None = None, what: str = "precision") -> str:
    """``precision`` if it is valid on ``device`` (``None``: checked by name only), else a ValueError
    naming ``what``."""
    if precision not in PRECISIONS:
        raise ValueError(f"{what} must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "fp16" and device is not None and torch.device(device).type != "cuda":
        raise ValueError(f"{what}='fp16' needs a CUDA device (float16 with a gradient scaler); on "
                         f"{torch.device(device).type} use 'bf16' (this CPU has no fast float16 arithmetic)")
    return precision


def autocast(precision: str, device: str | torch.device):
    """The context the networks run in: :func:`torch.autocast` to the half type, or nothing for fp32.

    Without autocast's cast cache: it keys a leaf weight's half copy by the tensor alone, so within
    one region a weight updated in place (DC's and IDC's inner network training, HaBa's and KFS's
    stored networks stepped several times per outer iteration) would keep running with its stale copy."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=_DTYPES[precision], cache_enabled=False)


def grad_scaler(precision: str, device: str | torch.device) -> torch.amp.GradScaler | None:
    """A gradient scaler for ``fp16`` (``None`` otherwise: bfloat16 has float32's range)."""
    return torch.amp.GradScaler(torch.device(device).type) if precision == "fp16" else None


def scaled(loss: torch.Tensor, scaler: torch.amp.GradScaler | None) -> torch.Tensor:
    """The loss to differentiate: ``loss`` times the scaler's scale (``loss`` itself without one)."""
    return loss if scaler is None else scaler.scale(loss)


def step(opt: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None) -> None:
    """``opt.step()`` on gradients of :func:`scaled`: through ``scaler`` when there is one (it unscales
    them, skips a step whose gradients overflowed and adapts the scale)."""
    if scaler is None:
        opt.step()
    else:
        scaler.step(opt)
        scaler.update()


__all__ = ["PRECISIONS", "autocast", "check_precision", "grad_scaler", "scaled", "step"]
