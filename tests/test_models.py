"""ConvNet-3: shapes and the parameter counts of spec §0.1."""
import pytest
import torch

from ddkernels.models import ConvNet

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
