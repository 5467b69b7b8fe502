"""Evaluation protocol on tiny digits sets."""
import dataclasses

import pytest
import torch

from ddkernels.distill import data
from ddkernels.distill.data.augment import dc_augment
from ddkernels.distill.evaluate import PROTOCOLS, checkpoint_epochs, evaluate, get_protocol, train_network
from ddkernels.distill.methods import preset
from ddkernels.distill.runs import eval_protocol
from ddkernels.nn import ConvNet, ResNet18

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.mark.parametrize("name", ["dsa", "idc", "rtp"])
def test_evaluate_learns_digits(digits, name):
    idx = data.ClassSampler(digits.train_y, 10).indices_all(10, torch.Generator().manual_seed(0)).flatten()
    proto = get_protocol(name, "quick", epochs=20, width=16, n_nets=2, batch=50)
    res = evaluate(digits.normalize(digits.train_x[idx]), digits.train_y[idx], digits, proto, progress=False)
    assert res["n"] == 2 and len(res["accuracies"]) == 2 and res["std"] >= 0
    assert res["mean"] > 50.0  # 10 real digits per class: far above the 10% chance level
    one = dataclasses.replace(proto, n_nets=1)
    again = evaluate(digits.normalize(digits.train_x[idx]), digits.train_y[idx], digits, one, progress=False)
    assert again["accuracies"] == res["accuracies"][:1]  # seeded: repeatable


def test_protocol_constants_and_errors(digits):
    assert PROTOCOLS[("dsa", "paper")].epochs == 1000 and PROTOCOLS[("dsa", "paper")].batch == 256
    assert PROTOCOLS[("idc", "paper")].cutmix_p == 0.5 and PROTOCOLS[("idc", "paper")].schedule == "multistep"
    rtp = PROTOCOLS[("rtp", "paper")]
    assert (rtp.batch, rtp.schedule, rtp.aug, rtp.weight_decay, rtp.n_nets) == (640, "constant", "", 0.0, 10)
    with pytest.raises(ValueError, match="unknown evaluation protocol"):
        get_protocol("kip", "paper")
    with pytest.raises(ValueError, match="images must be"):
        evaluate(torch.zeros(2, 3, 8, 8), torch.zeros(2, dtype=torch.long), digits, get_protocol("dsa", "quick"))


def test_checkpoint_epochs_follow_idc():
    assert checkpoint_epochs(1000, 4) == [250, 500, 750, 1000]  # IDC test.py: every epochs // 4
    assert checkpoint_epochs(300, 4) == [75, 150, 225, 300]
    assert checkpoint_epochs(10, 4) == [2, 4, 6, 8, 10]
    assert checkpoint_epochs(9, 4) == [2, 4, 6, 8, 9]  # the final epoch is always tested
    assert checkpoint_epochs(301, 1) == [301] and checkpoint_epochs(3, 4) == [1, 2, 3]
    assert PROTOCOLS[("idc", "paper")].test_checkpoints == 4 and PROTOCOLS[("dsa", "paper")].test_checkpoints == 1


def test_best_of_checkpoints(digits):
    idx = data.ClassSampler(digits.train_y, 10).indices_all(3, torch.Generator().manual_seed(0)).flatten()
    x, y = digits.normalize(digits.train_x[idx]), digits.train_y[idx]
    proto = get_protocol("idc", "quick", epochs=8, width=8, n_nets=2, batch=32)
    res = evaluate(x, y, digits, proto, progress=False)
    assert res["best"]["epochs"] == [2, 4, 6, 8] and [len(c) for c in res["curves"]] == [4, 4]
    assert res["accuracies"] == [c[-1] for c in res["curves"]]  # "accuracy" is the final epoch's
    assert res["best"]["accuracies"] == [max(c) for c in res["curves"]]
    assert res["best"]["mean"] >= res["mean"]
    # testing along the way changes nothing in training: the final accuracies equal a run tested once
    once = evaluate(x, y, digits, dataclasses.replace(proto, test_checkpoints=1), progress=False)
    assert once["accuracies"] == res["accuracies"] and "best" not in once


def test_dc_mnist_eval_augmentation_only_for_mnist(digits):
    assert preset("dc", "mnist", 10, "paper")["eval_dc_aug"] == "crop_scale_rotate"
    assert preset("dc", "mnist", 10, "paper")["eval_epochs"] == 1000  # VICO: 1000 epochs once an aug is used
    for method, name in (("dc", "fashion-mnist"), ("dc", "digits"), ("dc", "cifar10"), ("dsa", "mnist")):
        assert preset(method, name, 10, "paper")["eval_dc_aug"] == "", (method, name)
    assert preset("dc", "fashion-mnist", 10, "paper")["eval_epochs"] == 300
    assert eval_protocol(preset("dc", "mnist", 10, "quick"), "quick").dc_aug == "crop_scale_rotate"
    assert eval_protocol(preset("dc", "fashion-mnist", 10, "quick"), "quick").dc_aug == ""
    with pytest.raises(ValueError, match="only without DSA"):
        get_protocol("dsa", "quick", dc_aug="crop")
    # the protocol's dc_aug reaches training: same seed, different networks
    x, y = digits.normalize(digits.train_x[:40]), digits.train_y[:40]
    plain = get_protocol("dsa", "quick", aug="", epochs=1, width=4)
    nets = [train_network(x, y, digits, dataclasses.replace(plain, dc_aug=a), seed=0) for a in ("", "crop_scale_rotate")]
    assert not torch.equal(nets[0].classifier.weight, nets[1].classifier.weight)


def test_dc_augment_ops(digits):
    x = digits.normalize(digits.train_x[:16])
    g = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    for strategy in ("crop", "scale", "rotate", "noise", "crop_scale_rotate"):
        out = dc_augment(x, strategy, generator=g())
        assert out.shape == x.shape and torch.equal(out, dc_augment(x, strategy, generator=g())), strategy
    assert torch.equal(x, digits.normalize(digits.train_x[:16]))  # the input is not modified
    # crop: every image is a window of itself padded by 4 with the batch mean
    out, fill = dc_augment(x, "crop", generator=g()), float(x.mean())
    for i in range(len(x)):
        padded = torch.nn.functional.pad(x[i], (4, 4, 4, 4), value=fill)
        assert any(torch.equal(out[i], padded[:, r:r + 8, c:c + 8]) for r in range(8) for c in range(8))
    assert (dc_augment(x, "noise", generator=g()) - x).abs().max() < 0.01
    with pytest.raises(ValueError, match="ops must be"):
        dc_augment(x, "crop_flip")


def test_evaluation_architectures(digits):
    """``arch`` picks the network by its get_network name; the default is today's ConvNet, protocol.width wide."""
    idx = data.ClassSampler(digits.train_y, 10).indices_all(10, torch.Generator().manual_seed(0)).flatten()
    x, y = digits.normalize(digits.train_x[idx]), digits.train_y[idx]
    proto = get_protocol("rtp", "quick", epochs=2, width=16, n_nets=1, batch=50)
    default, named = (train_network(x, y, digits, proto, seed=0, **kw) for kw in ({}, {"arch": "ConvNet"}))
    assert type(default) is ConvNet and default.classifier.in_features == 16
    assert all(torch.equal(a, b) for a, b in zip(default.state_dict().values(), named.state_dict().values()))
    assert train_network(x, y, digits, proto, seed=0, arch="convnetw32").classifier.in_features == 32
    assert isinstance(train_network(x, y, digits, proto, seed=0, arch="resnet18bn_ap"), ResNet18)
    res = evaluate(x, y, digits, dataclasses.replace(proto, epochs=40), arch="mlp", progress=False)
    assert res["mean"] > 50.0
    with pytest.raises(ValueError, match="unknown network 'resnet50'"):
        evaluate(x, y, digits, proto, arch="resnet50", progress=False)


def test_soft_labels_train_with_the_soft_target_cross_entropy(digits):
    """One-hot distributions as soft labels train the same network as the hard labels (soft-target CE
    of a one-hot q is CE), through DSA and CutMix (IDC's protocol); other distributions are recorded as
    soft, hard and soft results never share a record; malformed labels are refused by name."""
    idx = data.ClassSampler(digits.train_y, 10).indices_all(3, torch.Generator().manual_seed(0)).flatten()
    x, y = digits.normalize(digits.train_x[idx]), digits.train_y[idx]
    proto = get_protocol("idc", "quick", epochs=3, width=8, n_nets=1, batch=10, cutmix_p=1.0)
    nets = [train_network(x, lab, digits, proto, seed=0) for lab in (y, torch.eye(10)[y])]
    for (name, a), b in zip(nets[0].named_parameters(), nets[1].parameters()):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6), name
    hard = evaluate(x, y, digits, proto, progress=False)
    soft_y = 0.8 * torch.eye(10)[y] + 0.02  # a smoothed distribution per row
    soft = evaluate(x, soft_y, digits, proto, progress=False)
    assert hard["labels"] == "hard" and "loss" not in hard
    assert soft["labels"] == "soft" and soft["loss"].startswith("soft-target cross-entropy")
    for bad in (torch.eye(11)[y], 2 * torch.eye(10)[y], -soft_y, torch.eye(10, dtype=torch.long)[y], y.float()):
        with pytest.raises(ValueError, match="labels"):
            evaluate(x, bad, digits, proto, progress=False)
