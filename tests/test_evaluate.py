"""Evaluation protocol on tiny digits sets."""
import dataclasses

import pytest
import torch

from ddkernels import data
from ddkernels.evaluate import PROTOCOLS, evaluate, get_protocol

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def digits():
    return data.load_dataset("digits")


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
