"""Reference ConvNet-3 block epilogue: exactly the layers every original repository stacks after
each conv (docs/spec.md §0.1) — ``GroupNorm(C, C)`` ("instancenorm"), ``ReLU``, ``AvgPool2d(2, 2)``."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .._autograd import empty_result


def norm_relu_pool(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float,
                   pool: bool) -> torch.Tensor:
    """``avg_pool2d(relu(group_norm(x, C, weight, bias, eps)), 2)``, kept off two PyTorch bugs and one
    refusal, with the same result:

    * the CPU ``group_norm`` backward crashes the process (segfault) on a channels_last ``x`` that
      needs no gradient: ``x`` goes in contiguous;
    * ``weight=None`` with a ``bias`` that needs a gradient raises "tensor does not have a device"
      in the backward: ``None`` becomes explicit ones / zeros;
    * ``F.group_norm`` refuses one value per group when N = 1 (a training-mode batch-size check
      meant for batch norm); ``torch.group_norm`` is the same kernel without it, and the plane's
      value normalizes to 0 as in the fused kernels.
    """
    c = x.shape[1]
    if c == 0:  # group_norm cannot split 0 channels into 0 groups; the result is empty
        out = (x.shape[0], 0, x.shape[2] // 2, x.shape[3] // 2) if pool else x.shape
        empty = empty_result(x, out)
        return sum((t.sum() for t in (weight, bias) if t is not None), empty)
    weight = x.new_ones(c) if weight is None else weight
    bias = x.new_zeros(c) if bias is None else bias
    if x.device.type != "cpu" and weight.dtype != x.dtype:
        # float32 γ/β with a half x: CPU group_norm takes the mix (float32 math), other devices' may not
        weight, bias = weight.to(x.dtype), bias.to(x.dtype)
    y = F.relu(torch.group_norm(x.contiguous(), c, weight, bias, eps, torch.backends.cudnn.enabled))
    return F.avg_pool2d(y, 2, 2) if pool else y


def spread(grad_out: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """The adjoint of ``avg_pool2d(·, 2)``: each pooled gradient shared by its 2×2 window (×0.25),
    zero on the odd last row/column floor mode drops; ``shape`` is the pool's input shape."""
    u = grad_out.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3) * 0.25
    return F.pad(u, (0, shape[3] - u.shape[3], 0, shape[2] - u.shape[2]))


def double_backward(grad_out, x, weight, bias, eps: float, pool: bool, ggx, ggw, ggb):
    """Gradients of ``J = <ggx, dx> + <ggw, dweight> + <ggb, dbias>`` — the first-order gradients
    of :func:`norm_relu_pool` contracted with their own upstream gradients (None: zero) — with
    respect to ``(grad_out, x, weight, bias)``, in closed form.

    Per plane, with x̂ = (x − μ)·r, d = [γx̂ + β > 0] ⊙ spread(grad_out) and means over the plane:
    dβ = Σd, dγ = Σd·x̂, dx = γr(d − d̄ − x̂A) with A = mean(d·x̂). Writing ḡ = mean(ggx),
    B = mean(ggx·x̂), C = mean(ggx·d) − ḡd̄, J = Σ d·e with e = γr(ggx − ḡ − x̂B) + ggw·x̂ + ggb, so

    * ∂J/∂grad_out = pool([·] ⊙ e) (the ReLU mask and the pool's adjoint, transposed),
    * ∂J/∂x = γr²(−B(d − d̄) − A(ggx − ḡ) + x̂(3AB − C)) + ggw·r(d − d̄ − x̂A),
    * ∂J/∂γ = Σ_planes r·L·(C − AB), ∂J/∂β = 0 (β and γ reach the mask only, whose derivative is 0).

    Everything is recomputed from ``x`` with differentiable torch ops, so autograd can take one
    more derivative (triple backward) through this function too.
    """
    c = x.shape[1]
    dims = (2, 3)
    mu = x.mean(dims, keepdim=True)
    r = torch.rsqrt((x - mu).square().mean(dims, keepdim=True) + eps)
    xh = (x - mu) * r
    g = (torch.ones(c, dtype=x.dtype, device=x.device) if weight is None else weight).view(1, c, 1, 1)
    b = (torch.zeros(c, dtype=x.dtype, device=x.device) if bias is None else bias).view(1, c, 1, 1)
    mask = (g * xh + b > 0).to(x.dtype)
    d = mask * (spread(grad_out, x.shape) if pool else grad_out)
    d_mean = d.mean(dims, keepdim=True)
    a = (d * xh).mean(dims, keepdim=True)
    e = torch.zeros_like(x)
    g_x = torch.zeros_like(x)
    g_w = None
    if ggx is not None:
        gx_mean = ggx.mean(dims, keepdim=True)
        bb = (ggx * xh).mean(dims, keepdim=True)
        cc = (ggx * d).mean(dims, keepdim=True) - gx_mean * d_mean
        e = e + g * r * (ggx - gx_mean - xh * bb)
        g_x = g_x + g * r * r * (-bb * (d - d_mean) - a * (ggx - gx_mean) + xh * (3 * a * bb - cc))
        g_w = (r * (cc - a * bb)).sum((0, 2, 3)) * (x.shape[2] * x.shape[3])
    if ggw is not None:
        e = e + ggw.view(1, c, 1, 1) * xh
        g_x = g_x + ggw.view(1, c, 1, 1) * r * (d - d_mean - xh * a)
    if ggb is not None:
        e = e + ggb.view(1, c, 1, 1)
    g_go = mask * e
    if pool:
        g_go = F.avg_pool2d(g_go, 2)
    return g_go, g_x, g_w, None
