"""KFS's generator: class-major latent codes × a bank of tiny decoders (see :class:`LatentDecoderBank`)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .._checks import check_int, check_tensor
from .hallucinator import _pair
from ..ops.small_conv import small_conv2d


def _up_geometry(scale: int) -> tuple[int, int]:
    """(kernel, padding) of a stride-``scale`` transposed conv whose output is exactly ``scale``× its
    input: out = (h−1)·s − 2p + k = h·s for k = s + 2p (p = ⌈s/2⌉ gives DCGAN's 4/2/1 at s = 2)."""
    pad = (scale + 1) // 2
    return scale + 2 * pad, pad


def decoder_floats(num_decoders: int, code_channels: int, hidden_channels: int, out_channels: int,
                   scale: int, kernel_size: int) -> int:
    """Stored floats of ``num_decoders`` decoders of :class:`LatentDecoderBank` (weights and biases)."""
    k_up, _ = _up_geometry(scale)
    per = (code_channels * hidden_channels * k_up * k_up + hidden_channels
           + hidden_channels * out_channels * kernel_size * kernel_size + out_channels)
    return num_decoders * per


def codes_for_budget(budget_floats: int, num_classes: int, num_decoders: int, code_channels: int,
                     hidden_channels: int, out_channels: int, image_size: tuple[int, int], scale: int,
                     kernel_size: int) -> int:
    """The most codes per class whose codes plus decoders fit in ``budget_floats`` (0 if none fit)."""
    h, w = image_size
    code = code_channels * (h // scale) * (w // scale)
    left = budget_floats - decoder_floats(num_decoders, code_channels, hidden_channels, out_channels, scale,
                                          kernel_size)
    return max(0, left // (num_classes * code))


class LatentDecoderBank(nn.Module):
    """KFS's factorized synthetic set: ``num_classes·codes_per_class`` latent codes of
    ``code_channels × (H/scale) × (W/scale)`` (class-major) and ``num_decoders`` tiny decoders shared
    by all classes; the images are every decoder applied to every code, labelled by the code's class.

    Decoder ``k`` maps a code ``z`` to ``up(z) + conv_k(act(convT_k(z)))``: ``convT_k`` is a stride-
    ``scale`` transposed conv to ``hidden_channels`` at the image size, ``act`` a LeakyReLU(0.2),
    ``conv_k`` a ``kernel_size`` same-padded conv to ``out_channels``, and ``up`` a fixed bilinear
    upsampling (only with ``residual``, which needs ``code_channels == out_channels``). The skip makes
    a code an image-like thumbnail (it can be initialised from downsampled real images) and the
    decoders learn per-decoder variations of it. [KFS's paper gives no decoder architecture; this is
    our choice, see docs/methods.md, KFS.]

    All decoders run at once: every decoder sees every code, so the ``K`` transposed convs are one
    ungrouped ``conv_transpose2d`` with ``K·hidden`` output channels (PyTorch; it is strided, so the
    direct kernel below does not apply), and the ``K`` output convs are one grouped
    :mod:`ddkernels.ops.small_conv` call (``groups=K``; the C++ direct kernel on CPU, cuDNN elsewhere).
    The upsampled skip is computed once per code and broadcast over the decoders.

    Args:
        num_classes: ``C``.
        codes_per_class: ``M``; 0 for a bank of decoders alone, whose codes the caller stores and
            passes to :meth:`decode` (HaBa's latent bases).
        num_decoders: ``K``.
        out_channels: image channels.
        image_size: ``(H, W)`` (int for square); each must be a multiple of ``scale``.
        code_channels: latent channels ``c_z``.
        scale: image size / code size.
        hidden_channels: channels between a decoder's two layers.
        kernel_size: the output conv's kernel (odd).
        residual: add the bilinear upsampled code.
        residual_init: factor on the output conv's default initialisation (small, so the decoded
            images start near the upsampled codes).
        backend: passed to the grouped output conv on every call.

    Shapes:
        ``codes``: ``(C·M, c_z, H/scale, W/scale)``, class ``c`` owning rows ``c·M … c·M+M−1``.
        ``forward()`` / ``decode(codes)`` with ``N`` codes: ``(N·K, out, H, W)``, code-major: row
        ``n·K + k`` is decoder ``k`` on code ``n`` (so ``forward()`` is class-major, ``M·K`` rows a
        class). :meth:`targets` gives ``forward()``'s labels.
    """

    def __init__(self, num_classes: int, codes_per_class: int, num_decoders: int, out_channels: int,
                 image_size: int | tuple[int, int], *, code_channels: int | None = None, scale: int = 2,
                 hidden_channels: int = 8, kernel_size: int = 3, residual: bool = True, residual_init: float = 0.1,
                 backend: str = "auto", device=None, dtype=None):
        super().__init__()
        code_channels = out_channels if code_channels is None else code_channels
        check_int(codes_per_class, "codes_per_class", low=0)
        for name, v in (("num_classes", num_classes), ("num_decoders", num_decoders), ("out_channels", out_channels),
                        ("code_channels", code_channels), ("scale", scale), ("hidden_channels", hidden_channels),
                        ("kernel_size", kernel_size)):
            check_int(v, name, low=1)
        if kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd (same padding), got {kernel_size}")
        h, w = _pair(image_size, "image_size")
        if h % scale or w % scale:
            raise ValueError(f"image_size {(h, w)} must be a multiple of scale={scale}")
        if residual and code_channels != out_channels:
            raise ValueError(f"residual=True adds the upsampled code to the image, so code_channels "
                             f"({code_channels}) must equal out_channels ({out_channels})")
        self.num_classes, self.codes_per_class, self.num_decoders = num_classes, codes_per_class, num_decoders
        self.out_channels, self.code_channels, self.hidden_channels = out_channels, code_channels, hidden_channels
        self.image_size, self.scale, self.kernel_size = (h, w), scale, kernel_size
        self.residual, self.residual_init, self.backend = bool(residual), float(residual_init), backend
        self.up_kernel, self.up_padding = _up_geometry(scale)
        kw = dict(device=device, dtype=dtype)
        kd, hid, k = num_decoders, hidden_channels, kernel_size
        self.codes = nn.Parameter(torch.empty(num_classes * codes_per_class, code_channels, h // scale, w // scale, **kw))
        # conv_transpose2d layout (in, out, k, k): the K decoders' first layers side by side in ``out``.
        self.up_weight = nn.Parameter(torch.empty(code_channels, kd * hid, self.up_kernel, self.up_kernel, **kw))
        self.up_bias = nn.Parameter(torch.empty(kd * hid, **kw))
        # grouped conv2d layout (groups·out, in/groups, k, k): decoder k owns rows k·out … k·out+out−1.
        self.out_weight = nn.Parameter(torch.empty(kd * out_channels, hid, k, k, **kw))
        self.out_bias = nn.Parameter(torch.empty(kd * out_channels, **kw))
        self.reset_parameters()

    @property
    def code_size(self) -> tuple[int, int]:
        return self.image_size[0] // self.scale, self.image_size[1] // self.scale

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Codes ~ N(0, 1); each decoder's layers as freshly built ``nn.ConvTranspose2d`` / ``nn.Conv2d``
        (PyTorch's default init), the output conv scaled by ``residual_init`` when ``residual``.
        Uses the global RNG (fork it and seed it to make this reproducible)."""
        self.codes.normal_()
        hid, out = self.hidden_channels, self.out_channels
        gain = self.residual_init if self.residual else 1.0
        for k in range(self.num_decoders):
            up = nn.ConvTranspose2d(self.code_channels, hid, self.up_kernel, stride=self.scale, padding=self.up_padding)
            conv = nn.Conv2d(hid, out, self.kernel_size, padding=self.kernel_size // 2)
            self.up_weight[:, k * hid:(k + 1) * hid].copy_(up.weight)
            self.up_bias[k * hid:(k + 1) * hid].copy_(up.bias)
            self.out_weight[k * out:(k + 1) * out].copy_(conv.weight * gain)
            self.out_bias[k * out:(k + 1) * out].copy_(conv.bias * gain)

    def upsample(self, codes: torch.Tensor) -> torch.Tensor:
        """The bilinear skip path: codes at the image size (also how codes are viewed as images)."""
        return F.interpolate(codes, size=self.image_size, mode="bilinear", align_corners=False)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Every decoder on every one of ``codes`` ``(N, c_z, H/scale, W/scale)`` -> ``(N·K, out, H, W)``."""
        check_tensor(codes, "codes", ndim=4, layout="(N, c_z, H/scale, W/scale)")
        if codes.shape[1:] != self.codes.shape[1:]:
            raise ValueError(f"codes must be (N, {self.code_channels}, {self.code_size[0]}, {self.code_size[1]}), "
                             f"got shape {tuple(codes.shape)}")
        n, kd, out = codes.shape[0], self.num_decoders, self.out_channels
        hidden = F.conv_transpose2d(codes, self.up_weight, self.up_bias, stride=self.scale, padding=self.up_padding)
        hidden = F.leaky_relu(hidden, 0.2)
        y = small_conv2d(hidden, self.out_weight, self.out_bias, padding=self.kernel_size // 2, groups=kd,
                         backend=self.backend)
        y = y.view(n, kd, out, *self.image_size)
        if self.residual:
            y = y + self.upsample(codes).unsqueeze(1)
        return y.reshape(n * kd, out, *self.image_size)

    def forward(self) -> torch.Tensor:
        """The synthetic set: every decoder on every code, ``(C·M·K, out, H, W)`` class-major."""
        return self.decode(self.codes)

    def code_labels(self) -> torch.Tensor:
        """The class of each code: ``(C·M,)``."""
        return torch.arange(self.num_classes, device=self.codes.device).repeat_interleave(self.codes_per_class)

    def targets(self) -> torch.Tensor:
        """Labels of :meth:`forward`'s rows: ``(C·M·K,)``, each code's class repeated ``K`` times."""
        return self.code_labels().repeat_interleave(self.num_decoders)

    def stored_floats(self) -> int:
        """Every stored float: codes plus decoder weights and biases."""
        return sum(p.numel() for p in self.parameters())

    def extra_repr(self) -> str:
        return (f"num_classes={self.num_classes}, codes_per_class={self.codes_per_class}, "
                f"num_decoders={self.num_decoders}, code_shape={tuple(self.codes.shape[1:])}, "
                f"hidden_channels={self.hidden_channels}, out_channels={self.out_channels}, scale={self.scale}, "
                f"kernel_size={self.kernel_size}, residual={self.residual}, backend={self.backend!r}")


__all__ = ["LatentDecoderBank", "codes_for_budget", "decoder_floats"]
