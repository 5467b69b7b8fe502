"""ZCA whitening as MTT and HaBa use it (docs/spec.md §0.4: ``kornia.enhance.ZCAWhitening(eps=0.1)``).

Fitted once on the whole training set (raw [0, 1] pixels, no mean/std normalization), then applied
to training, synthetic and test images alike::

    zca = ZCA.fit(ds.train_x)               # (N, C, H, W) in [0, 1]
    w = zca(x)                              # whiten: (x − μ) W, per image flattened to C·H·W
    x_back = zca.inverse(w)                 # (w W⁻¹) + μ
    torch.save(zca.state_dict(), "zca.pt"); zca = ZCA.from_state_dict(torch.load("zca.pt"))

With Σ = U diag(λ) Uᵀ the (unbiased) covariance of the flattened training images,
``W = U diag(1/√(λ + reg)) Uᵀ`` and ``W⁻¹ = U diag(√(λ + reg)) Uᵀ``. ``reg`` (kornia's ``eps``,
0.1 in MTT's code) keeps low-variance directions from being blown up, so the whitened covariance
is ``U diag(λ / (λ + reg)) Uᵀ``: close to the identity only along directions with λ ≫ reg.

In the trainers, hyperparameter ``zca`` (False, True for ``reg = 0.1``, or a positive float
``reg``) whitens the dataset: :meth:`ddkernels.distill.data.Dataset.whitened` attaches a fitted ZCA, after
which ``Dataset.normalize`` whitens and ``Dataset.denormalize`` inverts (PNG grids show
un-whitened pixels). A run directory stores the transform in ``zca.pt`` so ``ddkernels evaluate``
whitens the test set with the train-fitted transform (MTT issue #11).
"""
from __future__ import annotations

import torch
from tqdm import tqdm

from ..._checks import check_tensor

#: MTT's ``kornia.enhance.ZCAWhitening(eps=0.1)``
DEFAULT_REG = 0.1


class ZCA:
    """A fitted ZCA transform for images of one shape ``(C, H, W)``.

    Args:
        mean: ``(D,)`` per-feature mean of the training images, ``D = C·H·W``.
        transform: ``(D, D)`` whitening matrix ``W`` (symmetric).
        inverse_transform: ``(D, D)`` ``W⁻¹``.
        shape: the image shape ``(C, H, W)``.
        reg: the regularization the matrices were computed with.
    """

    def __init__(self, mean: torch.Tensor, transform: torch.Tensor, inverse_transform: torch.Tensor,
                 shape: tuple[int, int, int], reg: float):
        d = 1
        for s in shape:
            d *= int(s)
        if mean.shape != (d,) or transform.shape != (d, d) or inverse_transform.shape != (d, d):
            raise ValueError(f"ZCA for images {tuple(shape)} needs mean ({d},) and ({d}, {d}) matrices, got "
                             f"{tuple(mean.shape)}, {tuple(transform.shape)}, {tuple(inverse_transform.shape)}")
        self.mean, self.transform, self.inverse_transform = mean, transform, inverse_transform
        self.shape, self.reg = tuple(int(s) for s in shape), float(reg)

    @classmethod
    def fit(cls, x: torch.Tensor, reg: float = DEFAULT_REG, *, chunk: int = 8192, progress: bool = False) -> "ZCA":
        """Fit on images ``x`` (the whole training set, as MTT does).

        Args:
            x: ``(N, C, H, W)`` floating point, ``N >= 2``.
            reg: added to every eigenvalue of the covariance before the inverse square root (> 0).
            chunk: images per step of the covariance accumulation (bounds the float64 copy).
            progress: show a progress bar over the chunks.

        Returns:
            The fitted :class:`ZCA` (float32 matrices on ``x``'s device).
        """
        check_tensor(x, "x", ndim=4, layout="(N, C, H, W)")
        if x.shape[0] < 2:
            raise ValueError(f"x must hold at least 2 images to estimate a covariance, got {x.shape[0]}")
        if isinstance(reg, bool) or not isinstance(reg, (int, float)) or not reg > 0:
            raise ValueError(f"reg must be a positive number, got {reg!r}")
        flat = x.reshape(x.shape[0], -1)
        n, d = flat.shape
        # float64 accumulation: Σ over 60k images of products of [0, 1] pixels loses digits in float32
        mean = flat.mean(0, dtype=torch.float64)
        cov = torch.zeros(d, d, dtype=torch.float64, device=x.device)
        for part in tqdm(flat.split(chunk), desc="ZCA fit", disable=not progress, leave=False):
            c = part.to(torch.float64) - mean
            cov.addmm_(c.T, c)
        cov /= n - 1  # unbiased, as kornia's default
        lam, u = torch.linalg.eigh(cov)  # symmetric PSD: eigh equals kornia's SVD up to ordering
        lam = lam.clamp_min(0) + reg
        w = (u * lam.rsqrt()) @ u.T
        w_inv = (u * lam.sqrt()) @ u.T
        return cls(mean.float(), w.float(), w_inv.float(), tuple(x.shape[1:]), reg)

    def _check(self, x: torch.Tensor, name: str) -> None:
        check_tensor(x, name, ndim=4, layout="(N, C, H, W)")
        if tuple(x.shape[1:]) != self.shape:
            raise ValueError(f"{name} must be (N, {', '.join(map(str, self.shape))}) for this ZCA, "
                             f"got {tuple(x.shape)}")

    def _matrices(self, x: torch.Tensor, *names: str) -> list[torch.Tensor]:
        return [getattr(self, n).to(device=x.device, dtype=x.dtype) for n in names]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Whiten ``x`` ``(N, C, H, W)``; differentiable in ``x``."""
        self._check(x, "x")
        mean, w = self._matrices(x, "mean", "transform")
        return ((x.reshape(len(x), -1) - mean) @ w).view(x.shape)

    def inverse(self, x: torch.Tensor) -> torch.Tensor:
        """Undo :meth:`__call__` on whitened ``x`` ``(N, C, H, W)``; differentiable in ``x``."""
        self._check(x, "x")
        mean, w_inv = self._matrices(x, "mean", "inverse_transform")
        return (x.reshape(len(x), -1) @ w_inv + mean).view(x.shape)

    def to(self, device) -> "ZCA":
        """This transform with its matrices on ``device``."""
        return ZCA(self.mean.to(device), self.transform.to(device), self.inverse_transform.to(device), self.shape,
                   self.reg)

    def state_dict(self) -> dict:
        """Tensors and metadata, for ``torch.save`` (``weights_only`` loading works)."""
        return {"mean": self.mean, "transform": self.transform, "inverse_transform": self.inverse_transform,
                "shape": list(self.shape), "reg": self.reg}

    @classmethod
    def from_state_dict(cls, state: dict) -> "ZCA":
        missing = {"mean", "transform", "inverse_transform", "shape", "reg"} - set(state)
        if missing:
            raise ValueError(f"not a ZCA state dict: missing {sorted(missing)}")
        return cls(state["mean"], state["transform"], state["inverse_transform"], tuple(state["shape"]), state["reg"])

    def __repr__(self) -> str:
        return f"ZCA(shape={self.shape}, reg={self.reg})"


def zca_reg(value) -> float | None:
    """The regularization a ``zca`` hyperparameter asks for: ``None`` when off (False/None/0),
    :data:`DEFAULT_REG` for True, or the given positive float."""
    if value is None or value is False or (not isinstance(value, bool) and value == 0):
        return None
    if value is True:
        return DEFAULT_REG
    if isinstance(value, (int, float)) and value > 0:
        return float(value)
    raise ValueError(f"hyperparameter zca must be false, true or a positive regularization, got {value!r}")


__all__ = ["DEFAULT_REG", "ZCA", "zca_reg"]
