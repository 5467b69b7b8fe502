"""ZCA whitening (docs/spec.md §0.4): the fitted matrices, round trip, whitened covariance, storage, hooks."""
import pytest
import torch

from ddkernels.distill import data
from ddkernels.distill.methods import make_distiller
from ddkernels.distill.data.zca import DEFAULT_REG, ZCA, zca_reg

pytestmark = pytest.mark.usefixtures("single_thread")


def _cov(flat: torch.Tensor) -> torch.Tensor:
    c = flat.double() - flat.double().mean(0)
    return c.T @ c / (len(flat) - 1)


def test_matrices_follow_kornia(digits):
    zca = ZCA.fit(digits.train_x)
    assert zca.reg == DEFAULT_REG == 0.1 and zca.shape == (1, 8, 8)
    # kornia zca_mean: unbiased covariance, SVD, T = U diag(1/sqrt(S + eps)) U^T, T_inv with sqrt(S + eps)
    u, s, _ = torch.linalg.svd(_cov(digits.train_x.flatten(1)))
    w = u @ torch.diag((s + 0.1).rsqrt()) @ u.T
    w_inv = u @ torch.diag((s + 0.1).sqrt()) @ u.T
    torch.testing.assert_close(zca.transform.double(), w, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(zca.inverse_transform.double(), w_inv, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(zca.mean, digits.train_x.flatten(1).mean(0))


def test_round_trip_and_whitened_covariance(digits):
    x = digits.train_x
    zca = ZCA.fit(x)
    w = zca(x)
    assert w.shape == x.shape
    torch.testing.assert_close(zca.inverse(w), x, atol=1e-4, rtol=0)
    # With reg the whitened covariance is U diag(λ/(λ+reg)) Uᵀ: 1 along strong directions, shrunk along weak ones.
    lam, u = torch.linalg.eigh(_cov(x.flatten(1)))
    lam = lam.clamp_min(0)
    expected = u @ torch.diag(lam / (lam + 0.1)) @ u.T
    torch.testing.assert_close(_cov(w.flatten(1)), expected, atol=1e-4, rtol=0)
    # Full-rank data and a negligible reg: the whitened covariance is the identity.
    g = torch.Generator().manual_seed(0)
    y = (torch.randn(4000, 12, generator=g) @ torch.randn(12, 12, generator=g)).view(-1, 3, 2, 2)
    white = ZCA.fit(y, reg=1e-9)(y)
    torch.testing.assert_close(_cov(white.flatten(1)), torch.eye(12, dtype=torch.float64), atol=2e-3, rtol=0)


def test_state_dict_round_trip_and_errors(digits, tmp_path):
    zca = ZCA.fit(digits.train_x[:200], reg=0.05)
    torch.save(zca.state_dict(), tmp_path / "zca.pt")
    back = ZCA.from_state_dict(torch.load(tmp_path / "zca.pt", weights_only=True))
    assert back.reg == 0.05 and back.shape == zca.shape
    x = digits.test_x[:7]
    assert torch.equal(back(x), zca(x)) and torch.equal(back.inverse(x), zca.inverse(x))
    with pytest.raises(ValueError, match="x must be \\(N, 1, 8, 8\\)"):
        zca(torch.zeros(2, 3, 8, 8))
    with pytest.raises(ValueError, match="reg must be a positive number"):
        ZCA.fit(digits.train_x, reg=0)
    with pytest.raises(ValueError, match="at least 2 images"):
        ZCA.fit(digits.train_x[:1])
    with pytest.raises(ValueError, match="missing"):
        ZCA.from_state_dict({"mean": zca.mean})
    assert (zca_reg(False), zca_reg(None), zca_reg(True), zca_reg(0.3)) == (None, None, 0.1, 0.3)
    with pytest.raises(ValueError, match="hyperparameter zca"):
        zca_reg("yes")


def test_dataset_whitened_and_trainer_hook(digits):
    ds = digits.whitened()
    x = digits.test_x[:5]
    torch.testing.assert_close(ds.normalize(x), ds.zca(x))  # test images use the train-fitted transform
    torch.testing.assert_close(ds.denormalize(ds.normalize(x)), x, atol=1e-4, rtol=0)
    assert digits.zca is None  # the original dataset is untouched
    d = make_distiller("dm", digits, 2, "quick", seed=0, width=8, batch_real=8, zca=True)
    assert d.ds.zca is not None and d.ds.zca.reg == 0.1
    images, _ = d.training_set()
    # real init: the synthetic images are whitened real images, and the PNG view un-whitens them
    torch.testing.assert_close(d.pixel_images(), d.ds.denormalize(images).clamp(0, 1))
    assert make_distiller("dm", digits, 2, "quick", width=8, batch_real=8).ds.zca is None  # off by default
    with pytest.raises(ValueError, match="zca is for images"):
        digits.whitened(ZCA.fit(torch.rand(10, 1, 4, 4)))
