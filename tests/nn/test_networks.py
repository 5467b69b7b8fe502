"""The evaluation networks by their DatasetCondensation names: parameter counts of the originals, output
shapes, a backward pass, the ConvNet entries as ddkernels' ConvNet, the fused layers against PyTorch's."""
import pytest
import torch
from torch import nn

from ddkernels.nn import NETWORKS, ConvNet, ConvNetVariant, convnet, get_network, network_name, networks
from ddkernels.ops.norm_relu_pool import norm_relu_pool
from ddkernels.testing import assert_close

pytestmark = pytest.mark.usefixtures("single_thread")

# (parameters for 1×28×28 inputs, for 3×32×32 inputs, number of parameter tensors), 10 classes:
# counted by building the original classes of VICO-UoE/DatasetCondensation networks.py with the
# arguments its utils.py:get_network passes (ResNet18_AP: networks.py's own ResNet18_AP, which
# get_network does not reach).
ORIGINAL_PARAMS = {
    "ConvNet": (317_706, 320_010, 14),
    "ConvNetD1": (329_226, 331_530, 6),
    "ConvNetD2": (231_306, 233_610, 10),
    "ConvNetD3": (317_706, 320_010, 14),
    "ConvNetD4": (450_186, 452_490, 18),
    "ConvNetW32": (24_138, 24_714, 14),
    "ConvNetW64": (85_130, 86_282, 14),
    "ConvNetW128": (317_706, 320_010, 14),
    "ConvNetW256": (1_225_226, 1_229_834, 14),
    "ConvNetAS": (317_706, 320_010, 14),
    "ConvNetAR": (317_706, 320_010, 14),
    "ConvNetAL": (317_706, 320_010, 14),
    "ConvNetASwish": (317_706, 320_010, 14),
    "ConvNetASwishBN": (317_706, 320_010, 14),
    "ConvNetNN": (316_938, 319_242, 8),
    "ConvNetBN": (317_706, 320_010, 14),
    "ConvNetLN": (661_002, 663_306, 14),
    "ConvNetIN": (317_706, 320_010, 14),
    "ConvNetGN": (317_706, 320_010, 14),
    "ConvNetNP": (1_607_946, 1_610_250, 14),
    "ConvNetMP": (317_706, 320_010, 14),
    "ConvNetAP": (317_706, 320_010, 14),
    "MLP": (118_282, 411_146, 6),
    "LeNet": (61_706, 62_006, 10),
    "AlexNet": (1_865_802, 1_872_202, 12),
    "AlexNetBN": (1_867_722, 1_874_122, 22),
    "VGG11": (9_229_962, 9_231_114, 34),
    "VGG11BN": (9_229_962, 9_231_114, 34),
    "ResNet18": (11_172_810, 11_173_962, 62),
    "ResNet18BN": (11_172_810, 11_173_962, 62),
    "ResNet18_AP": (11_213_770, 11_250_762, 62),
    "ResNet18BN_AP": (11_213_770, 11_250_762, 62),
}

# The ConvNet options each ConvNet entry stands for (VICO-UoE/DatasetCondensation utils.py:get_network).
CONVNET_OPTIONS = {
    "ConvNet": {}, **{f"ConvNetD{d}": {"depth": d} for d in (1, 2, 3, 4)},
    **{f"ConvNetW{w}": {"width": w} for w in (32, 64, 128, 256)},
    "ConvNetAS": {"act": "sigmoid"}, "ConvNetAR": {}, "ConvNetAL": {"act": "leakyrelu"},
    "ConvNetASwish": {"act": "swish"}, "ConvNetASwishBN": {"act": "swish", "norm": "batchnorm"},
    "ConvNetNN": {"norm": "none"}, "ConvNetBN": {"norm": "batchnorm"}, "ConvNetLN": {"norm": "layernorm"},
    "ConvNetIN": {}, "ConvNetGN": {"norm": "groupnorm"},
    "ConvNetNP": {"pooling": "none"}, "ConvNetMP": {"pooling": "maxpooling"}, "ConvNetAP": {},
}


def test_registry_is_the_original_list():
    assert set(NETWORKS) == set(ORIGINAL_PARAMS)
    assert {n for n in NETWORKS if n.startswith("ConvNet")} == set(CONVNET_OPTIONS)


@pytest.mark.parametrize("name", list(ORIGINAL_PARAMS))
def test_parameter_count_shape_and_backward(name):
    for (channels, size), params in zip([(1, 28), (3, 32)], ORIGINAL_PARAMS[name]):
        net = get_network(name, channels, 10, (size, size))
        assert sum(p.numel() for p in net.parameters()) == params, (name, channels)
        assert len(list(net.parameters())) == ORIGINAL_PARAMS[name][2]
        x = torch.randn(2, channels, size, size)
        out = net(x)
        assert out.shape == (2, 10)
        out.square().sum().backward()
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())
        last = [m for m in net.modules() if isinstance(m, nn.Linear)][-1]
        assert net.embed(x).shape == (2, last.in_features)


@pytest.mark.parametrize("name", list(CONVNET_OPTIONS))
def test_convnet_entries_are_ddkernels_convnet(name):
    opts = dict(CONVNET_OPTIONS[name])
    variant = opts.get("norm") in ("layernorm", "groupnorm")
    torch.manual_seed(3)
    net = get_network(name, 1, 10, (28, 28))
    assert type(net) is (ConvNetVariant if variant else ConvNet)
    torch.manual_seed(3)
    expected = (ConvNetVariant if variant else ConvNet)(1, 10, im_size=(28, 28), **opts)
    assert str(net) == str(expected)
    sd, esd = net.state_dict(), expected.state_dict()
    assert sd.keys() == esd.keys() and all(torch.equal(sd[k], esd[k]) for k in sd)


def test_convnet_variant_norms():
    ln = get_network("ConvNetLN", 3, 10, (32, 32)).features
    assert [m.normalized_shape for m in ln if isinstance(m, nn.LayerNorm)] == [(128, 32, 32), (128, 16, 16),
                                                                               (128, 8, 8)]
    gn = [m for m in get_network("ConvNetGN", 3, 10).features if isinstance(m, nn.GroupNorm)]
    assert len(gn) == 3 and all(m.num_groups == 4 and m.num_channels == 128 for m in gn)
    with pytest.raises(ValueError, match="norm"):  # ConvNet itself keeps its three norms
        ConvNet(3, 10, norm="groupnorm")


def test_names_width_and_bad_arguments():
    assert network_name("resnet18bn_ap") == "ResNet18BN_AP" and network_name("CONVNET") == "ConvNet"
    assert type(get_network("resnet18", 3, 10)) is type(get_network("ResNet18", 3, 10))
    with pytest.raises(ValueError, match="unknown network 'resnet50'.*ConvNet, ConvNetD1.*ResNet18BN_AP"):
        get_network("resnet50", 3, 10)
    torch.manual_seed(0)
    narrow = get_network("convnet", 3, 10, width=64)
    torch.manual_seed(0)
    assert str(narrow) == str(ConvNet(3, 10, width=64))
    assert get_network("ConvNetD2", 3, 10, width=16).classifier.in_features == 16 * 8 * 8
    with pytest.raises(ValueError, match="width.*ConvNetW32"):
        get_network("ConvNetW32", 3, 10, width=64)
    with pytest.raises(ValueError, match="width.*ResNet18"):
        get_network("ResNet18", 3, 10, width=64)
    with pytest.raises(ValueError, match="im_size"):
        get_network("LeNet", 3, 10, (8, 8))
    with pytest.raises(ValueError, match="im_size"):
        get_network("ResNet18", 3, 10, (2, 2))
    with pytest.raises(ValueError, match="im_size"):
        get_network("MLP", 3, 10, (32, 0))
    with pytest.raises(ValueError, match="channels"):
        get_network("VGG11", 0, 10)
    with pytest.raises(ValueError, match="act"):
        ConvNet(3, 10, act="gelu")


@pytest.mark.parametrize("name, channels, size, fused", [("ResNet18", 1, 28, 9), ("ResNet18_AP", 1, 28, 9),
                                                          ("VGG11", 3, 32, 8), ("ConvNetAS", 3, 32, 0)])
def test_fused_layers_match_pytorch_layers(name, channels, size, fused, monkeypatch):
    """Instance-norm networks on norm_relu_pool (ResNet: the stem and each block's first norm, with the
    odd 7×7 → 3×3 pool of ResNet18_AP on 28×28; VGG: every norm; no block with another activation)
    against PyTorch's layers (backend "reference"): same logits and parameter gradients."""
    calls = []

    def counted(*args, **kwargs):
        calls.append(kwargs["backend"])
        return norm_relu_pool(*args, **kwargs)

    for module in (convnet, networks):
        monkeypatch.setattr(module, "norm_relu_pool", counted)
    net = get_network(name, channels, 10, (size, size))
    x = torch.randn(2, channels, size, size)
    res = {}
    for backend in ("reference", "auto"):
        net.backend = backend
        out = net(x)
        res[backend] = (out, torch.autograd.grad(out.square().sum(), list(net.parameters())))
    assert calls == ["reference"] * fused + ["auto"] * fused
    assert_close(res["auto"][0], res["reference"][0], atol=1e-5, rtol=1e-4, name="logits")
    scale = max(float(g.abs().max()) for g in res["reference"][1])
    for a, e in zip(res["auto"][1], res["reference"][1]):
        # conv biases before a norm have ~0 gradients: compare at the scale of the largest gradient
        assert_close(a, e, atol=1e-4 * scale, rtol=1e-3, name="parameter gradient")
