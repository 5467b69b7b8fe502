"""ConvNet-3: shapes and the parameter counts of docs/spec.md §0.1; the fused block path against the layers."""
import pytest
import torch
from torch import nn

from ddkernels.nn.convnet import ConvNet, nchw
from ddkernels.testing import assert_close

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.mark.parametrize("channels,classes,size,params", [(3, 10, 32, 320_010), (3, 100, 32, 504_420),
                                                          (1, 10, 28, 317_706)])
def test_param_count_and_shapes(channels, classes, size, params):
    net = ConvNet(channels, classes, im_size=(size, size))
    assert sum(p.numel() for p in net.parameters()) == params
    x = torch.randn(2, channels, size, size)
    assert net.embed(x).shape == (2, 2048)
    assert net(x).shape == (2, classes)
    assert isinstance(net.features[1], torch.nn.GroupNorm) and net.features[1].num_groups == 128


def test_digits_and_options():
    net = ConvNet(1, 10, width=16, im_size=(8, 8))
    assert net(torch.randn(3, 1, 8, 8)).shape == (3, 10)
    assert ConvNet(3, 10, width=8, norm="none", pooling="maxpooling")(torch.randn(1, 3, 32, 32)).shape == (1, 10)


def test_bad_arguments():
    with pytest.raises(ValueError, match="norm"):
        ConvNet(3, 10, norm="layernorm")
    with pytest.raises(ValueError, match="too small"):
        ConvNet(3, 10, depth=6, im_size=(8, 8))


@pytest.mark.parametrize("norm, pooling", [("instancenorm", "avgpooling"), ("instancenorm", "none"),
                                           ("instancenorm", "maxpooling"), ("batchnorm", "avgpooling")])
def test_fused_blocks_match_the_layers(norm, pooling):
    """The fused path (norm_relu_pool on the GroupNorm's own parameters) against the plain layer stack:
    same outputs and parameter gradients; the same parameters and state_dict keys either way."""
    size = (8, 8) if pooling == "none" else (28, 28)
    net = ConvNet(1, 10, width=16, depth=2 if pooling == "none" else 3, norm=norm, pooling=pooling, im_size=size)
    x = torch.randn(4, 1, *size)
    grads = {}
    for backend in ("reference", "auto"):
        net.backend = backend
        out = net(x)
        grads[backend] = (out, torch.autograd.grad(out.square().sum(), list(net.parameters())))
    assert_close(grads["auto"][0], grads["reference"][0], atol=1e-5, name="logits")
    for a, e in zip(grads["auto"][1], grads["reference"][1]):
        assert_close(a, e, atol=1e-4, rtol=1e-3, name="parameter gradient")


def test_nchw_restrides_without_copy():
    # DSA's crop permutes back: a 1-channel batch that is contiguous but has channel stride 1, which
    # PyTorch's conv reads as channels_last.
    x = torch.randn(4, 28, 28, 1).permute(0, 3, 1, 2)
    y = nchw(x)
    assert y.stride() == (784, 784, 28, 1) and y.data_ptr() == x.data_ptr() and torch.equal(x, y)
    assert nn.Conv2d(1, 4, 3)(y).is_contiguous()
    rgb = torch.randn(2, 8, 8, 3).permute(0, 3, 1, 2)  # a real channels_last batch is copied
    assert nchw(rgb).is_contiguous() and torch.equal(nchw(rgb), rgb)
    plain = torch.randn(2, 3, 4, 4)
    assert nchw(plain).data_ptr() == plain.data_ptr()
