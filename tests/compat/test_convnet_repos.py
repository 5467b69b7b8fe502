"""compat.ConvNet under each repository's constructor convention and use: DatasetCondensation (in
test_compat.py), mtt-distillation (get_network's dist, ReparamModule), DatasetFactorization
(only_feat, forward(x, feat)) and Efficient-Dataset-Condensation (its own ConvNet)."""
import types

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import ddkernels.compat as compat
from ddkernels.testing import assert_close
from tests.compat.test_compat import DCConvNet


# --- test fixtures: minimal re-statements of the originals (not ddkernels code) ---------------------
class HaBaConvNet(DCConvNet):
    """DatasetFactorization networks.ConvNet: DC's layers, no classifier with only_feat, no embed,
    forward(x, feat) -> (logits, features)."""

    def __init__(self, channel, num_classes, net_width, net_depth, net_act, net_norm, net_pooling, im_size=(32, 32),
                 only_feat=False):
        super().__init__(channel, num_classes, net_width, net_depth, net_act, net_norm, net_pooling, im_size)
        if only_feat:
            del self.classifier

    def forward(self, x, feat=False):
        emb = self.features(x).flatten(1)
        out = self.classifier(emb)
        return (out, emb) if feat else out


class IDCConvNetOriginal(nn.Module):
    """Efficient-Dataset-Condensation models/convnet.ConvNet: num_classes first, one activation and one
    pooling module shared by the blocks, layers in a ModuleDict of ModuleLists."""

    def __init__(self, num_classes, net_norm="instance", net_depth=3, net_width=128, channel=3, net_act="relu",
                 net_pooling="avgpooling", im_size=(32, 32)):
        super().__init__()
        self.net_act = {"relu": nn.ReLU(), "sigmoid": nn.Sigmoid()}[net_act]
        self.net_pooling = {"avgpooling": nn.AvgPool2d(2, 2), "maxpooling": nn.MaxPool2d(2, 2), "none": None}[net_pooling]
        self.depth, self.net_norm = net_depth, net_norm
        h, w = (32, 32) if im_size[0] == 28 else im_size
        conv, norm, c = [], [], channel
        for d in range(net_depth):
            conv.append(nn.Conv2d(c, net_width, 3, padding=3 if channel == 1 and d == 0 else 1))
            if net_norm != "none":
                norm.append({"instance": lambda: nn.GroupNorm(net_width, net_width, affine=True),
                             "batch": lambda: nn.BatchNorm2d(net_width, affine=True)}[net_norm]())
            c = net_width
            if self.net_pooling is not None:
                h, w = h // 2, w // 2
        self.layers = nn.ModuleDict({
            "conv": nn.ModuleList(conv), "norm": nn.ModuleList(norm), "act": nn.ModuleList([self.net_act] * net_depth),
            "pool": nn.ModuleList([self.net_pooling] * net_depth if self.net_pooling is not None else [])})
        self.classifier = nn.Linear(net_width * h * w, num_classes)

    def _block(self, d, x):
        x = self.layers["conv"][d](x)
        if len(self.layers["norm"]):
            x = self.layers["norm"][d](x)
        x = self.layers["act"][d](x)
        return self.layers["pool"][d](x) if len(self.layers["pool"]) else x

    def forward(self, x, return_features=False):
        for d in range(self.depth):
            x = self._block(d, x)
        out = x.view(x.shape[0], -1)
        logit = self.classifier(out)
        return (logit, out) if return_features else logit

    def get_feature(self, x, idx_from, idx_to=-1, return_prob=False, return_logit=False):
        idx_to = idx_from if idx_to == -1 else idx_to
        features = []
        for d in range(self.depth):
            x = self._block(d, x)
            features.append(x)
            if idx_to < len(features):
                return features[idx_from:idx_to + 1]
        if return_prob or return_logit:
            logit = self.classifier(x.view(x.size(0), -1))
            return features, torch.softmax(logit, dim=-1) if return_prob else logit
        return features[idx_from:idx_to + 1]


class ReparamModule(nn.Module):
    """The idea of mtt-distillation's / DatasetFactorization's reparam_module.ReparamModule: the wrapped
    net's parameters become views of one flat vector, set as plain attributes for each forward."""

    def __init__(self, module):
        super().__init__()
        self.module = module
        self._infos = [(m, n, p.shape) for m in module.modules() for n, p in list(m.named_parameters(recurse=False))]
        self.flat_param = nn.Parameter(torch.cat([getattr(m, n).detach().reshape(-1) for m, n, _ in self._infos]))
        for m, n, _ in self._infos:
            delattr(m, n)

    def forward(self, *inputs, flat_param):
        views = flat_param.split([s.numel() for _, _, s in self._infos])
        for (m, n, s), v in zip(self._infos, views):
            setattr(m, n, v.view(s))
        return self.module(*inputs)


def _same_init(orig_cls, args, kwargs=None, seed=3):
    kwargs = kwargs or {}
    torch.manual_seed(seed)
    orig = orig_cls(*args, **kwargs)
    torch.manual_seed(seed)
    ours = compat.ConvNet(*args, **kwargs)
    so, sc = orig.state_dict(), ours.state_dict()
    assert list(so) == list(sc) and all(torch.equal(so[k], sc[k]) for k in so)
    assert [n for n, _ in orig.named_parameters()] == [n for n, _ in ours.named_parameters()]
    return orig, ours


# --- DatasetFactorization ---------------------------------------------------------------------------
def test_haba_only_feat_and_feat_output():
    args = (3, 10, 16, 3, "relu", "instancenorm", "avgpooling", (32, 32))
    orig, ours = _same_init(HaBaConvNet, args)
    x = torch.randn(4, 3, 32, 32)
    (lo, eo), (lc, ec) = orig(x, feat=True), ours(x, feat=True)
    assert_close(lc, lo, name="logits")
    assert_close(ec, eo, name="features")
    assert_close(ours(x), orig(x))

    orig, ours = _same_init(HaBaConvNet, args, {"only_feat": True})
    assert not any(k.startswith("classifier") for k in ours.state_dict())
    assert_close(ours(x), orig.features(x).flatten(1), name="only_feat features")
    with pytest.raises(ValueError, match="only_feat"):
        ours(x, feat=True)
    # positional, as DatasetFactorization's get_network passes it by keyword or not at all
    assert compat.ConvNet(*args, True).only_feat


# --- mtt-distillation / DatasetFactorization student ------------------------------------------------
def _get_network(convnet_cls, dist):
    """Their get_network('ConvNet', ...): keyword construction, then DataParallel when dist and GPUs exist."""
    net = convnet_cls(channel=3, num_classes=10, net_width=16, net_depth=3, net_act="relu", net_norm="instancenorm",
                      net_pooling="avgpooling", im_size=(32, 32))
    return nn.DataParallel(net) if dist else net


@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_mtt_student_step_through_reparam_module(backend):
    """MTT's inner loop: a ReparamModule student, CE, grad w.r.t. the flat parameters with create_graph, a
    parameter step, and the loss differentiated back to the synthetic images."""
    torch.manual_seed(0)
    orig = _get_network(DCConvNet, dist=False)
    torch.manual_seed(0)
    ours = _get_network(compat.ConvNet, dist=False)
    ours.backend = backend
    x0 = torch.randn(6, 3, 32, 32)
    y = torch.arange(6) % 10
    results = []
    for net in (orig, ours):
        student = ReparamModule(net)
        x = x0.clone().requires_grad_()
        params = [student.flat_param.detach().clone().requires_grad_()]
        for _ in range(2):
            loss = F.cross_entropy(student(x, flat_param=params[-1]), y)
            g = torch.autograd.grad(loss, params[-1], create_graph=True)[0]
            params.append(params[-1] - 0.01 * g)
        target = params[0].detach() + 0.1
        param_loss = ((params[-1] - target) ** 2).sum()
        results.append((params[-1].detach(), torch.autograd.grad(param_loss, x)[0]))
    assert_close(results[1][0], results[0][0], atol=1e-5, rtol=1e-4, name="student parameters")
    assert_close(results[1][1], results[0][1], atol=1e-6, rtol=1e-3, name="image gradient through the unroll")


def test_get_network_dist_wraps_in_data_parallel():
    net = _get_network(compat.ConvNet, dist=True)  # on CPU DataParallel calls the module itself
    assert isinstance(net.module, compat.ConvNet) and net(torch.randn(2, 3, 32, 32)).shape == (2, 10)


# --- Efficient-Dataset-Condensation -----------------------------------------------------------------
def _tensors(r):
    return [r] if torch.is_tensor(r) else [t for part in r for t in _tensors(part)]


@pytest.mark.parametrize("call", [
    ((10,), {"net_norm": "instance", "net_depth": 3, "net_width": 16, "channel": 3, "im_size": (32, 32)}),  # train.py
    ((10, "instance", 3, 16, 3, "relu", "avgpooling", (32, 32)), {}),   # all positional
    ((10,), {"net_norm": "batch", "net_width": 16, "channel": 1, "im_size": (28, 28)}),
    ((10,), {"net_norm": "none", "net_width": 16, "net_depth": 2, "net_pooling": "none", "im_size": (16, 16)}),
], ids=["train.py", "positional", "batch-1ch", "none-none"])
def test_idc_convention(call):
    args, kwargs = call
    orig, ours = _same_init(IDCConvNetOriginal, args, kwargs)
    assert isinstance(ours, compat.IDCConvNet) and isinstance(ours, compat.ConvNet)
    c = kwargs.get("channel", 3)
    size = kwargs.get("im_size", (32, 32))
    x = torch.randn(4, c, *size)
    ours.train(), orig.train()
    (lo, fo), (lc, fc) = orig(x, return_features=True), ours(x, return_features=True)
    assert_close(lc, lo, name="logits")
    assert_close(fc, fo, name="features")
    assert_close(ours.embed(x), fo, name="embed")
    if kwargs.get("net_norm") != "none":  # the original's get_feature indexes a missing norm there
        for q in [(0,), (1, 2), (0, -1), (ours.depth - 1, -1, True), (ours.depth - 1, -1, False, True)]:
            a, b = _tensors(ours.get_feature(x, *q)), _tensors(orig.get_feature(x, *q))
            assert len(a) == len(b)
            for u, v in zip(a, b):
                assert_close(u, v, name=f"get_feature{q}")
    sd = orig.state_dict()
    fresh = compat.ConvNet(*args, **kwargs)
    fresh.load_state_dict(sd)  # the original's checkpoints load


def test_convention_detection_and_errors():
    assert type(compat.ConvNet(3, 10, 8, 3, "relu", "instancenorm", "avgpooling")) is compat.ConvNet
    assert type(compat.ConvNet(channel=3, num_classes=10, net_width=8, net_depth=3, net_act="relu",
                               net_norm="instancenorm", net_pooling="avgpooling")) is compat.ConvNet
    assert type(compat.ConvNet(10)) is compat.IDCConvNet  # IDC's defaults
    with pytest.raises(ValueError, match="net_norm must be one of instance, batch"):
        compat.ConvNet(10, net_norm="instancenorm")
    with pytest.raises(TypeError):
        compat.ConvNet()


def test_patch_takes_every_repository_convnet():
    for cls in (DCConvNet, HaBaConvNet, IDCConvNetOriginal):
        m = types.ModuleType("networks")
        m.ConvNet = cls
        dry = compat.patch(m, dry_run=True)
        assert dry.patched == ["ConvNet"] and dry.replacements["ConvNet"] == "ddkernels.compat.convnet.ConvNet"
        assert m.ConvNet is cls
        compat.patch(m)
        assert m.ConvNet is compat.ConvNet
        compat.unpatch(m)

    class Other(nn.Module):
        def __init__(self, depth, width):
            super().__init__()

    m = types.ModuleType("networks")
    m.ConvNet = Other
    report = compat.patch(m, dry_run=True)
    assert report.patched == [] and "only_feat" in report.skipped["ConvNet"]  # the reason names what it expects
    assert "left alone: ConvNet" in str(report)
