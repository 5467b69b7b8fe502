"""ddkernels.compat against literal transcriptions of the original code's math (docs/spec.md §1a, §2a, §4a),
written here from the spec: DC's distance_wb/match_loss, IDC's dist and Synthesizer decodes, HaBa's
StyleTranslator state_dict; and patch()'s behaviour on made-up user modules."""
import io
import math
import types
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import ddkernels.compat as compat
from ddkernels.testing import assert_close, convnet_param_shapes
from tests.conftest import fused_backends
from tests.nn.test_hallucinator import HaBaHallucinator

# compat only forwards backend=; tests/ops cover every backend (Triton interpreted is slow here).
GD_BACKENDS = [p for p in fused_backends("grad_distance") if p.id == "cpu"] + ["reference", "auto"]
MF_BACKENDS = [p for p in fused_backends("multi_formation") if p.id == "cpu"] + ["reference", "auto"]


# --- transcriptions of the originals (spec), not ddkernels code ------------------------------------
def dc_distance_wb(gwr, gws):
    shape = gwr.shape
    if len(shape) in (3, 4):
        gwr, gws = gwr.reshape(shape[0], -1), gws.reshape(shape[0], -1)
    elif len(shape) == 1:
        return torch.tensor(0, dtype=torch.float, device=gwr.device)
    return torch.sum(1 - torch.sum(gwr * gws, dim=-1) / (torch.norm(gwr, dim=-1) * torch.norm(gws, dim=-1) + 0.000001))


def dc_match_loss(gw_syn, gw_real, args):
    dis = torch.tensor(0.0).to(args.device)  # float32, added to in place: the accumulation quirk
    if args.dis_metric == "ours":
        for gwr, gws in zip(gw_real, gw_syn):
            dis += dc_distance_wb(gwr, gws)
        return dis
    real = torch.cat([g.reshape(-1) for g in gw_real])
    syn = torch.cat([g.reshape(-1) for g in gw_syn])
    if args.dis_metric == "mse":
        return torch.sum((syn - real) ** 2)
    return 1 - torch.sum(real * syn, dim=-1) / (torch.norm(real, dim=-1) * torch.norm(syn, dim=-1) + 0.000001)


def idc_dist(x, y, method="mse"):
    if method == "mse":
        return (x - y).pow(2).sum()
    if method == "l1":
        return (x - y).abs().sum()
    if method == "l1_mean":
        return (x - y).abs().reshape(x.shape[0], -1).mean(-1).sum()
    x, y = x.reshape(x.shape[0], -1), y.reshape(y.shape[0], -1)  # "cos"
    return torch.sum(1 - torch.sum(x * y, dim=-1) / (torch.norm(x, dim=-1) * torch.norm(y, dim=-1) + 1e-6))


class IDCSynthesizer:
    """The decode methods of IDC's Synthesizer, from the spec's step list."""

    def __init__(self, size):
        self.size = size
        self.resize = nn.Upsample(size=size, mode="bilinear")

    def decode_zoom(self, img, target, factor):
        h = img.shape[-1]
        if h % factor:
            img = F.pad(img, (0, factor - h % factor, 0, factor - h % factor), value=0.5)
        s = math.ceil(h / factor)
        crops = [img[:, :, i * s:(i + 1) * s, j * s:(j + 1) * s] for i in range(factor) for j in range(factor)]
        return self.resize(torch.cat(crops)), torch.cat([target] * factor ** 2)

    def decode_zoom_multi(self, img, target, factor_max):
        outs = [self.decode_zoom(img, target, f) for f in range(1, factor_max + 1)]
        return torch.cat([o[0] for o in outs]), torch.cat([o[1] for o in outs])

    def decode_zoom_bound(self, img, target, factor_max, bound=128):
        bound_cur, budget, idx, total, data, tgt = bound - len(img), len(img), 0, 0, [], []
        for factor in range(factor_max, 0, -1):
            n = min(bound_cur // factor ** 2, budget) if factor > 1 else budget
            d, t = self.decode_zoom(img[idx:idx + n], target[idx:idx + n], factor)
            data.append(d)
            tgt.append(t)
            idx, budget, total = idx + n, budget - n, total + n * factor ** 2
            bound_cur = bound - total - budget
            if budget == 0:
                break
        return torch.cat(data), torch.cat(tgt)


def grad_lists(dtype=torch.float32, width=16, channels=1, classes=10):
    """A ConvNet-3-shaped gradient pair (conv, GN γ/β, biases, linear) with a graph on the syn side."""
    shapes = convnet_param_shapes(channels, classes, width=width)
    real = [torch.randn(s, dtype=dtype) for s in shapes]
    syn = [(r + 0.5 * torch.randn_like(r)).requires_grad_() for r in real]
    return syn, real


# --- DC ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", GD_BACKENDS)
@pytest.mark.parametrize("shape", [(8, 3, 3, 3), (6, 4, 5), (10, 32), (4, 2, 3, 3, 2), (7,)])
def test_distance_wb(shape, backend):
    gwr = torch.randn(shape)
    gws = (gwr + torch.randn(shape)).requires_grad_()
    got = compat.distance_wb(gwr, gws, backend=backend)
    want = dc_distance_wb(gwr, gws)
    assert got.dtype == want.dtype and got.shape == want.shape
    assert_close(got, want, name="distance_wb")
    if len(shape) == 1:  # the original's constant: no graph
        assert not got.requires_grad
        return
    (g_got,) = torch.autograd.grad(got, gws)
    (g_want,) = torch.autograd.grad(want, gws)
    assert_close(g_got, g_want, name="d distance_wb / d gws")


@pytest.mark.parametrize("backend", GD_BACKENDS)
@pytest.mark.parametrize("metric", ["ours", "mse", "cos"])
def test_match_loss(metric, backend):
    syn, real = grad_lists()
    args = SimpleNamespace(dis_metric=metric, device="cpu")
    got = compat.match_loss(syn, real, args, backend=backend)
    want = dc_match_loss(syn, real, args)
    assert got.dtype == want.dtype == torch.float32 and got.shape == want.shape == ()
    assert_close(got, want, name=f"match_loss {metric}")
    g_got = torch.autograd.grad(got, syn, allow_unused=True)
    g_want = torch.autograd.grad(want, syn, allow_unused=True)
    for i, (a, b) in enumerate(zip(g_got, g_want)):
        if b is None:  # 'ours' never reads 1-D layers
            assert a is None or not a.any()
        else:
            assert_close(a, b, name=f"d match_loss / d gw_syn[{i}]")


def test_match_loss_float32_accumulator_quirk():
    # The original adds float64 layer distances into a float32 tensor in place: a float32 result.
    syn, real = grad_lists(torch.float64)
    args = SimpleNamespace(dis_metric="ours", device="cpu")
    got, want = compat.match_loss(syn, real, args), dc_match_loss(syn, real, args)
    assert got.dtype == want.dtype == torch.float32
    # One rounding at the end here, one per layer there: within a few float32 ulp.
    assert_close(got, want, atol=0, rtol=4 * torch.finfo(torch.float32).eps)
    # 'mse' and 'cos' reassign the accumulator, so they keep the gradients' dtype.
    for metric in ("mse", "cos"):
        args.dis_metric = metric
        out = compat.match_loss(syn, real, args)
        assert out.dtype == torch.float64
        assert_close(out, dc_match_loss(syn, real, args))


def test_match_loss_only_1d_layers_and_errors():
    r = [torch.randn(5), torch.randn(3)]
    s = [torch.randn(5), torch.randn(3)]
    out = compat.match_loss(s, r, SimpleNamespace(dis_metric="ours", device="cpu"))
    assert out.dtype == torch.float32 and out.item() == 0.0
    with pytest.raises(ValueError, match="args.dis_metric must be one of"):
        compat.match_loss(s, r, SimpleNamespace(dis_metric="l2", device="cpu"))
    with pytest.raises(ValueError, match="same number of layers"):
        compat.match_loss(s, r[:1], SimpleNamespace(dis_metric="mse", device="cpu"))
    with pytest.raises(ValueError, match=r"gw_syn\[1\] and gw_real\[1\] must have the same shape"):
        compat.match_loss(s, [r[0], torch.randn(4)], SimpleNamespace(dis_metric="mse", device="cpu"))


# --- IDC --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", GD_BACKENDS)
@pytest.mark.parametrize("method", ["mse", "l1", "l1_mean", "cos"])
@pytest.mark.parametrize("shape", [(16, 1, 3, 3), (10, 64), (16,)])
def test_dist(method, shape, backend):
    x = torch.randn(shape)
    y = (x + torch.randn(shape)).requires_grad_()
    got, want = compat.dist(x, y, method, backend=backend), idc_dist(x, y, method)
    assert_close(got, want, name=f"dist {method}")
    if method == "cos" and len(shape) == 1:
        assert want.item() != 0  # IDC's cos does not skip 1-D tensors (DC's distance_wb does)
    assert_close(torch.autograd.grad(got, y)[0], torch.autograd.grad(want, y)[0], name=f"d dist {method} / dy")


def test_dist_errors():
    with pytest.raises(ValueError, match="method must be one of"):
        compat.dist(torch.randn(3), torch.randn(3), "l2")
    with pytest.raises(ValueError, match="x and y must have the same shape"):
        compat.dist(torch.randn(3), torch.randn(4), "mse")


@pytest.mark.parametrize("backend", MF_BACKENDS)
@pytest.mark.parametrize("h,factor,size", [(28, 2, None), (32, 3, None), (31, 2, None), (28, 1, None), (32, 2, (24, 24))])
def test_decode_zoom(h, factor, size, backend):
    img = torch.rand(3, 2, h, h, requires_grad=True)
    target = torch.tensor([4, 1, 7])
    orig = IDCSynthesizer(size or (h, h))
    data, tgt = compat.decode_zoom(img, target, factor, size, backend=backend)
    want_data, want_tgt = orig.decode_zoom(img, target, factor)
    assert torch.equal(tgt, want_tgt)
    assert_close(data, want_data, name="decode_zoom")
    g = torch.randn_like(want_data)
    assert_close(torch.autograd.grad(data, img, g)[0], torch.autograd.grad(want_data, img, g)[0], name="d decode_zoom")


@pytest.mark.parametrize("backend", ["reference", "auto"])
def test_decode_zoom_multi_and_bound(backend):
    img = torch.rand(5, 3, 32, 32)
    target = torch.arange(5)
    orig = IDCSynthesizer((32, 32))
    for got, want in ((compat.decode_zoom_multi(img, target, 3, backend=backend), orig.decode_zoom_multi(img, target, 3)),
                      (compat.decode_zoom_bound(img, target, 3, bound=30, backend=backend),
                       orig.decode_zoom_bound(img, target, 3, bound=30))):
        assert torch.equal(got[1], want[1])
        assert_close(got[0], want[0])
    with pytest.raises(ValueError, match="img must be square"):
        compat.decode_zoom(torch.rand(1, 1, 28, 32), target[:1], 2)


# --- HaBa -------------------------------------------------------------------------------------------
def test_style_translator_matches_original():
    torch.manual_seed(3)
    orig = HaBaHallucinator(3, 3, 3, 3, (30, 30))  # the original creates enc, scale, shift, dec in this order
    torch.manual_seed(3)
    mine = compat.StyleTranslator(in_channel=3, mid_channel=3, out_channel=3, image_size=32, kernel_size=3)
    sd_o, sd_m = orig.state_dict(), mine.state_dict()
    assert list(sd_m) == list(sd_o) and all(sd_m[k].shape == sd_o[k].shape for k in sd_o)
    assert all(torch.equal(sd_m[k], sd_o[k]) for k in sd_o)  # same seed, same initial weights
    with torch.no_grad():
        orig.scale.normal_(1, 0.5)
        orig.shift.normal_()
    mine.load_state_dict(orig.state_dict())
    x = torch.randn(4, 3, 32, 32)
    y_m, y_o = mine(x), orig(x)
    assert_close(y_m, y_o, name="StyleTranslator forward")
    g = torch.randn_like(y_o)
    for (name, p_m), p_o in zip(mine.named_parameters(), orig.parameters()):
        assert_close(torch.autograd.grad(y_m, p_m, g, retain_graph=True)[0],
                     torch.autograd.grad(y_o, p_o, g, retain_graph=True)[0], name=f"d / d {name}")
    assert compat.StyleTranslator().scale.shape == (1, 3, 32, 32)  # the original's kernel_size=1 default
    with pytest.raises(ValueError, match="image_size"):
        mine(torch.randn(1, 3, 28, 28))


def test_haba_state_dict_round_trip():
    # What distill_fac.py saves: nn.ModuleList(StyleTranslator ...).state_dict() -> styles_<it>.pt
    styles = nn.ModuleList(HaBaHallucinator(3, 3, 3, 3, (14, 14)) for _ in range(4))
    with torch.no_grad():
        for t in styles:
            t.scale.normal_(1, 0.5)
            t.shift.normal_()
    buf = io.BytesIO()
    torch.save(styles.state_dict(), buf)
    saved = torch.load(io.BytesIO(buf.getvalue()))

    bank = compat.bank_from_state_dict(saved)
    assert (bank.num_hallucinators, bank.feature_size, bank.kernel_size) == (4, (14, 14), 3)
    bases = torch.randn(6, 3, 16, 16)
    index = torch.tensor([0, 3, 1, 1, 2, 0])
    want = torch.cat([styles[int(k)](bases[b:b + 1]) for b, k in enumerate(index)])
    assert_close(bank(bases, index=index), want, name="bank(sampled) vs the saved translators")
    assert_close(bank(bases).view(6, 4, 3, 16, 16)[:, 2], styles[2](bases), name="bank(product)")

    back = compat.translators_from_bank(bank)
    sd = back.state_dict()
    assert list(sd) == list(saved) and all(torch.equal(sd[k], saved[k]) for k in saved)
    again = compat.bank_from_translators(styles)  # the original modules convert too
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), bank.state_dict().values()))

    with pytest.raises(KeyError, match="missing"):
        compat.bank_from_state_dict({k: v for k, v in saved.items() if k != "2.shift"})
    with pytest.raises(KeyError, match="0.scale"):
        compat.bank_from_state_dict({"weight": torch.zeros(1)})
    with pytest.raises(ValueError, match=r"translators\[1\]"):
        compat.bank_from_translators([styles[0], HaBaHallucinator(3, 3, 3, 3, (6, 6))])


# --- ConvNet ----------------------------------------------------------------------------------------
class DCConvNet(nn.Module):
    """DatasetCondensation's networks.ConvNet, from docs/spec.md §0.1: conv (padding 3 for a 1-channel
    first layer), optional norm, activation, optional pool, per block; 28 px counted as 32."""

    def __init__(self, channel, num_classes, net_width, net_depth, net_act, net_norm, net_pooling, im_size=(32, 32)):
        super().__init__()
        h, w = (32, 32) if im_size[0] == 28 else im_size
        layers, c = [], channel
        for d in range(net_depth):
            layers.append(nn.Conv2d(c, net_width, 3, padding=3 if channel == 1 and d == 0 else 1))
            if net_norm == "instancenorm":
                layers.append(nn.GroupNorm(net_width, net_width, affine=True))
            elif net_norm == "batchnorm":
                layers.append(nn.BatchNorm2d(net_width))
            elif net_norm == "layernorm":
                layers.append(nn.LayerNorm([net_width, h, w]))
            layers.append({"relu": nn.ReLU(inplace=True), "sigmoid": nn.Sigmoid()}[net_act])
            c = net_width
            if net_pooling != "none":
                layers.append(nn.AvgPool2d(2, 2) if net_pooling == "avgpooling" else nn.MaxPool2d(2, 2))
                h, w = h // 2, w // 2
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(net_width * h * w, num_classes)

    def embed(self, x):
        out = self.features(x)
        return out.view(out.size(0), -1)

    def forward(self, x):
        return self.classifier(self.embed(x))


CONVNETS = [  # (channel, im_size, net_act, net_norm, net_pooling)
    (1, (28, 28), "relu", "instancenorm", "avgpooling"),   # (Fashion-)MNIST, the default
    (3, (32, 32), "relu", "instancenorm", "avgpooling"),   # CIFAR
    (3, (32, 32), "relu", "instancenorm", "none"),
    (3, (32, 32), "relu", "instancenorm", "maxpooling"),
    (3, (32, 32), "relu", "batchnorm", "avgpooling"),
    (1, (28, 28), "relu", "layernorm", "avgpooling"),
    (3, (32, 32), "sigmoid", "instancenorm", "avgpooling"),
]


@pytest.mark.parametrize("cfg", CONVNETS, ids=lambda c: "-".join(map(str, c[2:])) + f"-{c[0]}ch")
@pytest.mark.parametrize("backend", [p for p in fused_backends("norm_relu_pool") if p.id == "cpu"] + ["auto"])
def test_convnet_matches_original(cfg, backend):
    channel, im_size, act, norm, pool = cfg
    depth = 2 if pool == "none" else 3
    torch.manual_seed(3)
    orig = DCConvNet(channel, 10, 16, depth, act, norm, pool, im_size)
    torch.manual_seed(3)
    ours = compat.ConvNet(channel, 10, 16, depth, act, norm, pool, im_size, backend=backend)
    so, sc = orig.state_dict(), ours.state_dict()
    assert list(so) == list(sc) and all(torch.equal(so[k], sc[k]) for k in so)  # same init from one seed
    x = torch.randn(6, channel, *im_size)
    assert_close(ours.embed(x), orig.embed(x), name="embed")
    # DC's step: parameter gradients with create_graph, matched, differentiated w.r.t. the images.
    xs = x.clone().requires_grad_()
    grads = []
    for net in (orig, ours):
        xi = xs.clone()
        gw = torch.autograd.grad(F.cross_entropy(net(xi), torch.arange(6) % 10), list(net.parameters()), create_graph=True)
        loss = sum((g ** 2).sum() for g in gw)
        grads.append((gw, torch.autograd.grad(loss, xs)[0]))
    for a, e in zip(grads[1][0], grads[0][0]):
        assert_close(a, e, atol=1e-5, rtol=1e-3, name="parameter gradient")
    assert_close(grads[1][1], grads[0][1], atol=1e-5, rtol=1e-3, name="image meta-gradient")


def test_convnet_errors_name_the_argument():
    with pytest.raises(ValueError, match="net_act must be one of"):
        compat.ConvNet(3, 10, 8, 3, "gelu", "instancenorm", "avgpooling")
    with pytest.raises(ValueError, match="net_norm must be one of"):
        compat.ConvNet(3, 10, 8, 3, "relu", "rmsnorm", "avgpooling")
    with pytest.raises(ValueError, match="net_pooling must be one of"):
        compat.ConvNet(3, 10, 8, 3, "relu", "instancenorm", "lppool")


def test_patch_swaps_convnet_for_get_network():
    """The original utils.get_network looks ConvNet up in utils at call time: patching the name is enough."""
    m = types.ModuleType("dc_utils")
    m.ConvNet, m.match_loss = DCConvNet, dc_match_loss

    def get_network(model, channel, num_classes, im_size=(32, 32)):
        return m.ConvNet(channel=channel, num_classes=num_classes, net_width=128, net_depth=3, net_act="relu",
                         net_norm="instancenorm", net_pooling="avgpooling", im_size=im_size)

    m.get_network = get_network
    report = compat.patch(m)
    assert set(report.patched) == {"ConvNet", "match_loss"}
    net = m.get_network("ConvNet", 1, 10, (28, 28))
    assert isinstance(net, compat.ConvNet) and net(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    compat.unpatch(m)
    assert m.ConvNet is DCConvNet


# --- patch ------------------------------------------------------------------------------------------
def _fake_utils():
    m = types.ModuleType("fake_utils")
    m.distance_wb, m.match_loss, m.dist = dc_distance_wb, dc_match_loss, idc_dist
    m.StyleTranslator, m.Synthesizer = HaBaStyle, FakeSynth
    return m


class HaBaStyle(HaBaHallucinator):  # the original's constructor signature
    def __init__(self, in_channel=3, mid_channel=3, out_channel=3, image_size=32, kernel_size=1):
        s = image_size - kernel_size + 1
        super().__init__(in_channel, mid_channel, out_channel, kernel_size, (s, s))


class FakeSynth(IDCSynthesizer):
    pass


def test_patch_replaces_and_unpatch_restores():
    m = _fake_utils()
    report = compat.patch(m)
    assert set(report.patched) == {"distance_wb", "match_loss", "dist", "StyleTranslator", "Synthesizer"}
    assert "decode_zoom" in report.absent and not report.skipped and "patched fake_utils" in str(report)
    assert m.match_loss is compat.match_loss and m.dist is compat.dist and m.StyleTranslator is compat.StyleTranslator
    syn, real = grad_lists()
    args = SimpleNamespace(dis_metric="ours", device="cpu")
    assert_close(m.match_loss(syn, real, args), dc_match_loss(syn, real, args))
    img, target = torch.rand(2, 1, 28, 28), torch.tensor([1, 2])
    s = FakeSynth((28, 28))
    data, tgt = s.decode_zoom(img, target, 2)
    assert FakeSynth.decode_zoom is not IDCSynthesizer.decode_zoom
    assert_close(data, IDCSynthesizer((28, 28)).decode_zoom(img, target, 2)[0])
    assert compat.patch(m).patched == report.patched  # twice is harmless
    restored = compat.unpatch(m)
    assert set(restored) == {"distance_wb", "match_loss", "dist", "StyleTranslator", "Synthesizer.decode_zoom",
                             "Synthesizer.decode_zoom_multi"}
    assert m.match_loss is dc_match_loss and m.StyleTranslator is HaBaStyle and "decode_zoom" not in FakeSynth.__dict__
    assert compat.patched(m) == []


def test_patch_refuses():
    empty = types.ModuleType("empty_utils")
    with pytest.raises(compat.PatchError, match="none of distance_wb, match_loss, dist"):
        compat.patch(empty)
    with pytest.raises(TypeError, match="module must be an imported module"):
        compat.patch(object())

    m = types.ModuleType("ddp_utils")
    m.dist = torch.distributed  # `import torch.distributed as dist` is not IDC's dist
    m.distance_wb = dc_distance_wb
    m.match_loss = lambda a, b: 0  # wrong signature
    report = compat.patch(m)
    assert report.patched == ["distance_wb"]
    assert "module torch.distributed" in report.skipped["dist"] and "match_loss" in report.skipped
    assert m.dist is torch.distributed
    compat.unpatch(m)

    with pytest.raises(compat.PatchError, match=r"dist \(it is the module torch.distributed.*Nothing was patched"):
        compat.patch(m, names=["distance_wb", "dist"])
    with pytest.raises(compat.PatchError, match=r"StyleTranslator \(not found\)"):
        compat.patch(m, names=["distance_wb", "StyleTranslator"])
    assert m.distance_wb is dc_distance_wb and compat.patched(m) == []  # all or nothing
    with pytest.raises(compat.PatchError, match="no replacement for foo"):
        compat.patch(m, names=["foo"])


def test_module_wide_backend():
    assert compat.get_backend() == "auto"
    with compat.use_backend("reference"):
        assert compat.get_backend() == "reference"
        x, y = torch.randn(4, 3), torch.randn(4, 3)
        assert_close(compat.dist(x, y, "cos"), idc_dist(x, y, "cos"))
    assert compat.get_backend() == "auto"
    with pytest.raises(ValueError, match="backend must be one of"):
        compat.set_backend("gpu")
