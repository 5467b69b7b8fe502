"""DSA with explicit parameters: Siamese semantics, the transforms' formulas, differentiability, CutMix."""
import pytest
import torch

from ddkernels.distill.data.augment import TRANSFORMS, DiffAugment, apply_transform, cutmix, cutmix_loss, sample_transform

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.mark.parametrize("name", TRANSFORMS)
def test_gradcheck_each_transform(name):
    # Parameters fixed, the transform is linear in the images: gradcheck checks its adjoint.
    g = torch.Generator().manual_seed(3)
    p = sample_transform(name, 2, (6, 6), generator=g)
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: apply_transform(name, t, p), (x,))


@pytest.mark.parametrize("name", TRANSFORMS)
def test_adjoint_matches_autograd(name):
    # <T x, v> = <x, T* v> with T* from autograd, for the linear transforms (colour ops are affine).
    g = torch.Generator().manual_seed(1)
    p = sample_transform(name, 3, (8, 8), generator=g)
    x, v = torch.randn(3, 2, 8, 8, dtype=torch.float64), torch.randn(3, 2, 8, 8, dtype=torch.float64)
    x.requires_grad_()
    y = apply_transform(name, x, p)
    offset = apply_transform(name, torch.zeros_like(x), p)  # the constant part (brightness)
    (adj,) = torch.autograd.grad(y, x, v)
    assert torch.allclose(((y - offset) * v).sum(), (x * adj).sum())


@pytest.mark.parametrize("mode", ["single", "idc"])
def test_siamese_same_parameters_on_both_batches(mode):
    aug = DiffAugment("color_crop_cutout_flip_scale_rotate", mode=mode)
    real, syn = torch.randn(5, 3, 16, 16), torch.randn(2, 3, 16, 16)
    for seed in range(6):
        p = aug.sample(1, (16, 16), generator=torch.Generator().manual_seed(seed))
        out = aug.apply(torch.cat([real, syn]), p)
        # The shared set acts on each image on its own: the batches' outputs equal the joint one.
        assert torch.allclose(aug.apply(real, p), out[:5], atol=1e-6)
        assert torch.allclose(aug.apply(syn, p), out[5:], atol=1e-6)
        # and equal one image augmented alone: every image sees the same parameters.
        assert torch.allclose(aug.apply(syn[1:], p), out[6:], atol=1e-6)


def test_per_sample_parameters_differ():
    p = sample_transform("rotate", 4, (8, 8), generator=torch.Generator().manual_seed(0))["theta"]
    assert p.shape == (4, 2, 3) and not torch.allclose(p[0], p[1])
    x = torch.rand(4, 1, 8, 8)
    out = DiffAugment("crop")(x, generator=torch.Generator().manual_seed(0))
    assert out.shape == x.shape


def test_formulas():
    x = torch.arange(16.0).view(1, 1, 4, 4)
    # crop = translation with zero fill: out[i, j] = x[i + dy, j + dx].
    out = apply_transform("crop", x, {"dy": torch.tensor([1]), "dx": torch.tensor([-1])})
    assert torch.equal(out[0, 0, :3, 1:], x[0, 0, 1:, :3]) and out[0, 0, 3].abs().sum() == 0
    assert out[0, 0, :, 0].abs().sum() == 0
    # cutout: side int(0.5*4+0.5)=2 centred at (oy, ox) = (0, 3): rows [-1, 1), cols [2, 4).
    out = apply_transform("cutout", x, {"oy": torch.tensor([0]), "ox": torch.tensor([3]), "size": torch.tensor([2, 2])})
    assert out[0, 0, 0, 2:].abs().sum() == 0 and torch.equal(out[0, 0, 1:], x[0, 0, 1:])
    assert torch.equal(out[0, 0, 0, :2], x[0, 0, 0, :2])
    # identity affine leaves the image unchanged; contrast factor 1 too.
    eye = torch.tensor([[[1.0, 0, 0], [0, 1.0, 0]]])
    assert torch.allclose(apply_transform("scale", x, {"theta": eye}), x, atol=1e-5)
    assert torch.allclose(apply_transform("contrast", x, {"factor": torch.ones(1)}), x)
    assert torch.equal(apply_transform("flip", x, {"flip": torch.tensor([True])}), x.flip(3))


def test_idc_order_and_single_mode():
    aug = DiffAugment("color_crop_cutout", mode="idc")
    names = [n for n, _ in aug.sample(1, (8, 8))]
    assert names == ["brightness", "saturation", "contrast", "crop", "cutout"]
    single = DiffAugment("color_crop_cutout_flip_scale_rotate")
    seen = {tuple(n for n, _ in single.sample(1, (8, 8), generator=torch.Generator().manual_seed(s))) for s in range(40)}
    assert ("brightness", "saturation", "contrast") in seen and ("crop",) in seen and len(seen) == 6
    assert DiffAugment("none").sample(1, (8, 8)) == []
    with pytest.raises(ValueError, match="unknown group 'blur'"):
        DiffAugment("color_blur")


def test_cutmix():
    x = torch.rand(6, 1, 8, 8, requires_grad=True)
    y = torch.arange(6)
    mixed, ya, yb, ratio = cutmix(x, y, prob=1.0, generator=torch.Generator().manual_seed(2))
    assert 0.0 <= ratio <= 1.0 and torch.equal(ya, y)
    kept = (mixed == x).flatten(1).float().mean(1)
    assert torch.allclose(kept[yb != ya], torch.full_like(kept[yb != ya], ratio), atol=1e-6)
    loss = cutmix_loss(torch.randn(6, 10), ya, yb, ratio)
    mixed.sum().backward()
    assert loss.isfinite() and x.grad is not None
    same = cutmix(x, y, prob=0.0)
    assert same[0] is x and same[3] == 1.0
