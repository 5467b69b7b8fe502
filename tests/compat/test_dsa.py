"""ddkernels.compat.dsa against the original DSA of VICO-UoE/DatasetCondensation utils.py and its copies
in GeorgeCazenavette/mtt-distillation and Huage001/DatasetFactorization utils.py."""
import math
import types
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

import ddkernels.compat as compat
from ddkernels.compat import dsa


# --- test fixture: a minimal re-statement of the original DSA (not ddkernels code) -------------------
# What it keeps of the original: every draw from the global RNG with the original's shape, dtype and
# device, in the original's order; with a seed, a reseed with seed, seed+1, ... before each draw; the
# Siamese copy of the first image's draw over the batch, in place; the affine matrices built from
# per-image Python lists; crop and cutout through index grids. `clone=True` inserts the .clone() that
# the in-place copy needs on current PyTorch at batch 1; `align_corners` is VICO's False or the
# copies' True.
class OriginalDSA:
    GROUPS = {"color": ("brightness", "saturation", "contrast"), "crop": ("crop",), "cutout": ("cutout",),
              "flip": ("flip",), "scale": ("scale",), "rotate": ("rotate",)}

    def __init__(self, align_corners=False, clone=True, aug_mode="S"):
        self.ac, self.clone, self.aug_mode = align_corners, clone, aug_mode

    def _reseed(self):
        if self.latestseed != -1:
            torch.random.manual_seed(self.latestseed)
            self.latestseed += 1

    def _share(self, t):
        if self.siamese:
            t[:] = t[0].clone() if self.clone else t[0]

    def __call__(self, x, strategy, seed=-1):
        self.siamese, self.latestseed = seed != -1, seed
        groups = strategy.split("_")
        if self.aug_mode == "S":
            self._reseed()
            groups = [groups[torch.randint(0, len(groups), size=(1,)).item()]]
        for g in groups:
            for t in self.GROUPS[g]:
                x = getattr(self, t)(x)
        return x.contiguous()

    def _resample(self, x, rows):
        theta = torch.tensor(rows, dtype=torch.float)
        self._share(theta)
        grid = F.affine_grid(theta, x.shape, align_corners=self.ac).to(x.device)
        return F.grid_sample(x, grid, align_corners=self.ac)

    def scale(self, x, r=1.2):
        self._reseed()
        sx = torch.rand(x.shape[0]) * (r - 1.0 / r) + 1.0 / r
        self._reseed()
        sy = torch.rand(x.shape[0]) * (r - 1.0 / r) + 1.0 / r
        return self._resample(x, [[[sx[i], 0, 0], [0, sy[i], 0]] for i in range(x.shape[0])])

    def rotate(self, x, r=15.0):
        self._reseed()
        a = (torch.rand(x.shape[0]) - 0.5) * 2 * r / 180 * math.pi
        return self._resample(x, [[[torch.cos(a[i]), torch.sin(-a[i]), 0], [torch.sin(a[i]), torch.cos(a[i]), 0]]
                                  for i in range(x.shape[0])])

    def _u(self, x, **kw):
        self._reseed()
        u = torch.rand(x.size(0), 1, 1, 1, device=x.device, **kw)
        self._share(u)
        return u

    def flip(self, x):
        return torch.where(self._u(x) < 0.5, x.flip(3), x)

    def brightness(self, x):
        return x + (self._u(x, dtype=x.dtype) - 0.5) * 1.0

    def saturation(self, x):
        m = x.mean(dim=1, keepdim=True)
        return (x - m) * (self._u(x, dtype=x.dtype) * 2.0) + m

    def contrast(self, x):
        m = x.mean(dim=[1, 2, 3], keepdim=True)
        return (x - m) * (self._u(x, dtype=x.dtype) + 0.5) + m

    def _ints(self, x, lo, hi):
        out = []
        for a, b in zip(lo, hi):
            self._reseed()
            out.append(torch.randint(a, b, size=[x.size(0), 1, 1], device=x.device))
        for t in out:
            self._share(t)
        return out

    def _grid(self, x, h, w):
        return torch.meshgrid(torch.arange(x.size(0)), torch.arange(h), torch.arange(w), indexing="ij")

    def crop(self, x, ratio=0.125):
        sh, sw = int(x.size(2) * ratio + 0.5), int(x.size(3) * ratio + 0.5)
        ty, tx = self._ints(x, (-sh, -sw), (sh + 1, sw + 1))
        b, gy, gx = self._grid(x, x.size(2), x.size(3))
        gy = torch.clamp(gy + ty + 1, 0, x.size(2) + 1)
        gx = torch.clamp(gx + tx + 1, 0, x.size(3) + 1)
        return F.pad(x, [1, 1, 1, 1]).permute(0, 2, 3, 1).contiguous()[b, gy, gx].permute(0, 3, 1, 2)

    def cutout(self, x, ratio=0.5):
        ch, cw = int(x.size(2) * ratio + 0.5), int(x.size(3) * ratio + 0.5)
        oy, ox = self._ints(x, (0, 0), (x.size(2) + (1 - ch % 2), x.size(3) + (1 - cw % 2)))
        b, gy, gx = self._grid(x, ch, cw)
        gy = torch.clamp(gy + oy - ch // 2, min=0, max=x.size(2) - 1)
        gx = torch.clamp(gx + ox - cw // 2, min=0, max=x.size(3) - 1)
        mask = torch.ones(x.size(0), x.size(2), x.size(3), dtype=x.dtype)
        mask[b, gy, gx] = 0
        return x * mask.unsqueeze(1)


STRATEGIES = ["color", "crop", "cutout", "flip", "scale", "rotate", "color_crop_cutout_flip_scale_rotate"]


def _images(n, c=3, h=32, w=32):
    g = torch.Generator().manual_seed(n * 7 + h)
    return torch.randn(n, c, h, w, generator=g)


def _both(x, strategy, seed, align_corners, aug_mode="S", rng=11):
    """(original, compat) outputs from the same global RNG state."""
    param = compat.MTTParamDiffAug() if align_corners else compat.ParamDiffAug()
    param.aug_mode = aug_mode
    torch.manual_seed(rng)
    want = OriginalDSA(align_corners, aug_mode=aug_mode)(x, strategy, seed)
    torch.manual_seed(rng)
    got = compat.DiffAugment(x, strategy, seed=seed, param=param)
    return want, got, param


@pytest.mark.parametrize("align_corners", [False, True], ids=["vico", "mtt-haba"])
@pytest.mark.parametrize("seed", [-1, 5], ids=["per-image", "siamese"])
@pytest.mark.parametrize("n", [1, 6])
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_same_images_as_the_original(strategy, n, seed, align_corners):
    x = _images(n)
    for rng in (11, 12, 13):  # 'S' mode picks a different group per RNG state
        want, got, _ = _both(x, strategy, seed, align_corners, rng=rng)
        assert torch.equal(got, want), f"{strategy} n={n} seed={seed} rng={rng}: max |diff| {(got - want).abs().max()}"
        assert got.is_contiguous()
    # The global RNG is left where the original leaves it (a Siamese call reseeds it).
    torch.manual_seed(3)
    OriginalDSA(align_corners)(x, strategy, seed)
    after_original = torch.rand(4)
    torch.manual_seed(3)
    compat.DiffAugment(x, strategy, seed, compat.MTTParamDiffAug() if align_corners else compat.ParamDiffAug())
    assert torch.equal(torch.rand(4), after_original)


@pytest.mark.parametrize("seed", [-1, 9])
def test_multiple_mode_and_odd_sizes(seed):
    # aug_mode 'M' applies every group in order; odd sizes and one channel exercise crop/cutout bounds.
    for shape in [(3, 1, 28, 28), (2, 3, 17, 23)]:
        x = _images(shape[0], *shape[1:])
        want, got, _ = _both(x, "color_crop_cutout_flip_scale_rotate", seed, False, aug_mode="M")
        assert torch.equal(got, want)


def test_siamese_protocol():
    """Real and synthetic batches given the same seed get the same transform, the param object says so,
    and each image of a Siamese batch is augmented as it would be alone."""
    param = compat.ParamDiffAug()
    real, syn = _images(5), _images(2)
    s = "color_crop_cutout_flip_scale_rotate"
    for seed in range(20):
        both = compat.DiffAugment(torch.cat([real, syn]), s, seed=seed, param=param)
        assert param.Siamese and param.batchmode
        assert param.latestseed > seed  # advanced once per draw
        assert torch.allclose(compat.DiffAugment(real, s, seed=seed, param=param), both[:5], atol=1e-6)
        assert torch.allclose(compat.DiffAugment(syn, s, seed=seed, param=param), both[5:], atol=1e-6)
    compat.DiffAugment(real, s, seed=-1, param=param)
    assert not param.Siamese and param.latestseed == -1


def test_original_fails_at_one_image_where_compat_does_not():
    # The bug the drop-in removes: the in-place Siamese copy through an alias, at batch 1 (IPC 1).
    x = _images(1)
    with pytest.raises(RuntimeError, match="single memory location"):
        OriginalDSA(clone=False)(x, "color", seed=3)
    out = compat.DiffAugment(x, "color", seed=3, param=compat.ParamDiffAug())
    assert torch.equal(out, OriginalDSA()(x, "color", seed=3))


def test_one_channel_crop_feeds_a_plain_convnet():
    """The original's 1-channel crop output has channels_last-like strides that current PyTorch's conv
    keeps, and the original ConvNet's .view raises on it; compat's output is plain NCHW."""
    from tests.compat.test_compat import DCConvNet

    net = DCConvNet(1, 10, 8, 3, "relu", "instancenorm", "avgpooling", (28, 28))
    x = _images(4, 1, 28, 28)
    with pytest.raises(RuntimeError, match="view size is not compatible"):
        net(OriginalDSA()(x, "crop", 3))
    out = compat.DiffAugment(x, "crop", 3, compat.ParamDiffAug())
    assert out.stride() == (784, 784, 28, 1) and net(out).shape == (4, 10)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_gradients_match(strategy):
    # DSA is used inside the distillation loss: the image gradient must match the original's.
    x = _images(4)
    w = torch.randn_like(x)
    grads = []
    for run in ("original", "compat"):
        xi = x.clone().requires_grad_()
        torch.manual_seed(21)
        if run == "original":
            out = OriginalDSA()(xi, strategy, 4)
        else:
            out = compat.DiffAugment(xi, strategy, 4, compat.ParamDiffAug())
        grads.append(torch.autograd.grad((out * w).sum(), xi)[0])
    assert torch.equal(grads[1], grads[0])


def test_original_param_objects_and_flavour():
    """A ParamDiffAug of the original code works; the copies' (with ratio_noise) resample with align_corners=True."""
    fields = dict(aug_mode="S", prob_flip=0.5, ratio_scale=1.2, ratio_rotate=15.0, ratio_crop_pad=0.125,
                  ratio_cutout=0.5, brightness=1.0, saturation=2.0, contrast=0.5)
    vico, copy = SimpleNamespace(**fields), SimpleNamespace(ratio_noise=0.05, **fields)
    x = _images(3)
    for param, ac in ((vico, False), (copy, True)):
        torch.manual_seed(2)
        want = OriginalDSA(ac, aug_mode="M")(x, "scale_rotate", 8)
        param.aug_mode = "M"
        torch.manual_seed(2)
        assert torch.equal(compat.DiffAugment(x, "scale_rotate", 8, param), want)
        assert vars(param)["Siamese"] and param.latestseed == 11
    assert compat.MTTParamDiffAug().ratio_noise == 0.05 and compat.MTTParamDiffAug().align_corners
    assert not compat.ParamDiffAug().align_corners


def test_rand_functions_and_identity():
    x = _images(4)
    param = compat.ParamDiffAug()
    param.Siamese, param.latestseed = True, 30
    out = dsa.rand_flip(dsa.rand_crop(x, param), param)
    assert param.latestseed == 33 and out.shape == x.shape
    torch.manual_seed(0)
    orig = OriginalDSA()
    orig.siamese, orig.latestseed = True, 30
    assert torch.equal(out, orig.flip(orig.crop(x)))
    for s in ("", "none", "None"):
        assert compat.DiffAugment(x, s, param=None) is x


def test_errors_name_the_argument():
    x = _images(2)
    with pytest.raises(ValueError, match="unknown group"):
        compat.DiffAugment(x, "color_jitter", param=compat.ParamDiffAug())
    p = compat.ParamDiffAug()
    p.aug_mode = "X"
    with pytest.raises(ValueError, match="aug_mode must be"):
        compat.DiffAugment(x, "color", param=p)
    with pytest.raises(TypeError, match="param must be a ParamDiffAug"):
        compat.DiffAugment(x, "color")


def _dsa_utils(name, copy):
    """A module shaped like the originals' utils.py DSA section (test fixture)."""
    m = types.ModuleType(name)

    class ParamDiffAug:
        def __init__(self):
            self.aug_mode, self.prob_flip, self.ratio_scale, self.ratio_rotate = "S", 0.5, 1.2, 15.0
            self.ratio_crop_pad, self.ratio_cutout, self.brightness, self.saturation, self.contrast = \
                0.125, 0.5, 1.0, 2.0, 0.5
            if copy:
                self.ratio_noise = 0.05

    def DiffAugment(x, strategy='', seed=-1, param=None):
        return OriginalDSA(copy)(x, strategy, seed)

    def set_seed_DiffAug(param):
        pass

    m.ParamDiffAug, m.DiffAugment, m.set_seed_DiffAug = ParamDiffAug, DiffAugment, set_seed_DiffAug
    for t in ("scale", "rotate", "flip", "brightness", "saturation", "contrast", "crop", "cutout"):
        setattr(m, f"rand_{t}", lambda x, param: x)
    m.AUGMENT_FNS = {}
    return m


@pytest.mark.parametrize("copy", [False, True], ids=["vico", "mtt-haba"])
def test_patch_replaces_the_dsa(copy):
    m = _dsa_utils("dsa_utils", copy)
    original = m.DiffAugment
    dry = compat.patch(m, dry_run=True)
    assert m.DiffAugment is original and compat.patched(m) == []  # a dry run changes nothing
    want_param = "ddkernels.compat.dsa." + ("MTTParamDiffAug" if copy else "ParamDiffAug")
    assert dry.dry_run and dry.replacements["ParamDiffAug"] == want_param
    assert dry.replacements["DiffAugment"] == "ddkernels.compat.dsa.DiffAugment"
    assert "would patch dsa_utils" in str(dry) and "AUGMENT_FNS" not in dry.patched

    report = compat.patch(m)
    assert report.patched == dry.patched and not report.dry_run
    assert {"DiffAugment", "ParamDiffAug", "set_seed_DiffAug", "rand_scale", "rand_cutout"} <= set(report.patched)
    param = m.ParamDiffAug()
    assert param.align_corners == copy
    x = _images(2)
    torch.manual_seed(4)
    want = original(x, "scale", 6)
    torch.manual_seed(4)
    assert torch.equal(m.DiffAugment(x, "scale", 6, param), want)
    compat.unpatch(m)
    assert m.DiffAugment is original
