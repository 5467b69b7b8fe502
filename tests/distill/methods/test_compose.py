"""Trainers are a parameterization × an objective: the method table reads off the declarations, pairs
no named method uses run (an outer iteration, a checkpoint that resumes exactly), incompatible pairs
are refused before any work."""
import copy

import pytest
import torch

from ddkernels.distill.methods import (BPTT, METHODS, PRESET_NAMES, AddressableMemories, DistributionMatching,
                                       Distiller, MultiFormation, Parameterization, PlainImages,
                                       RealNetGradientMatching, TrajectoryMatching, method_table, method_table_markdown, preset)
from ddkernels.distill.methods.presets import DSA_STRATEGY

pytestmark = pytest.mark.usefixtures("single_thread")


def test_method_table():
    assert {m: (p, o) for m, p, o, _ in method_table()} == {
        "dc": ("PlainImages", "GradientMatching"), "dsa": ("PlainImages", "GradientMatching"),
        "dm": ("PlainImages", "DistributionMatching"), "idc": ("MultiFormation", "RealNetGradientMatching"),
        "kfs": ("CodesDecoders", "DiscriminativeDistributionMatching"), "mtt": ("PlainImages", "TrajectoryMatching"),
        "haba": ("BasesHallucinators",
                 "TrajectoryMatching (base=mtt), DistributionMatching (base=dm), GradientMatching (base=dc)"),
        "rtp": ("AddressableMemories", "BPTT")}
    assert PRESET_NAMES == ("paper", "quick")
    assert all(presets == PRESET_NAMES for *_, presets in method_table())
    assert "\n| rtp | AddressableMemories | BPTT | paper, quick |" in method_table_markdown()
    assert [m for m in METHODS] == ["dc", "dsa", "dm", "idc", "kfs", "mtt", "haba", "rtp"]


def _resumes_exactly(digits, hp, **parts):
    """Two outer iterations straight equal one, a checkpoint, a fresh trainer loading it, one more."""
    straight = Distiller(digits, 1, hp, seed=0, **parts)
    start = {k: v.detach().clone() for k, v in straight.synthetic_params().items()}
    straight.run(1, progress=False)
    state = copy.deepcopy(straight.state_dict())  # the optimizer's state_dict holds its live buffers
    straight.run(2, progress=False)
    resumed = Distiller(digits, 1, hp, seed=0, **parts)
    resumed.load_state_dict(state)
    resumed.run(2, progress=False)
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in straight.history]
    for k, v in straight.synthetic_params().items():
        assert torch.equal(resumed.synthetic_params()[k], v), k
        assert (v.detach() - start[k]).abs().max() > 0, k  # the objective's steps reach every stored tensor
    return straight


def test_multi_formation_under_distribution_matching(digits):
    # IDC's parameterization (decoded 2×2 tiles, clamped pixels) under DM's loss: no named method.
    hp = dict(preset("idc", "digits", 1, "quick"), aug=DSA_STRATEGY, width=8, batch_real=8, lr_img=0.1)
    t = _resumes_exactly(digits, hp, parameterization=MultiFormation, objective=DistributionMatching)
    assert isinstance(t.param, MultiFormation) and isinstance(t.objective, DistributionMatching)
    assert all(torch.isfinite(torch.tensor(h["loss"])) and h["loss"] > 0 for h in t.history)
    images, labels = t.training_set()
    assert images.shape == (10 * 4, 1, 8, 8) and torch.bincount(labels).tolist() == [4] * 10
    assert t.storage()["ratio"] == 1.0 and t.decodes and t.stored_space == "pixels [0, 1]"


def test_more_new_pairs(digits):
    # RTP's addressable memories under DM; plain images under IDC's schedule; IDC's under trajectory matching.
    rtp = dict(preset("rtp", "digits", 2, "quick"), aug=DSA_STRATEGY, inner_steps=3, batch_syn=2, batch_real=4,
               width=4)
    _resumes_exactly(digits, rtp, parameterization=AddressableMemories, objective=DistributionMatching)
    idc = dict(preset("idc", "digits", 1, "quick"), width=8, batch_real=8, inner_loop=1, n_data=16, init="real",
               lr_img=0.1, momentum_img=0.5)
    _resumes_exactly(digits, idc, parameterization=PlainImages, objective=RealNetGradientMatching)


def test_multi_formation_under_trajectory_matching(digits, expert_dir):
    hp = dict(preset("mtt", "digits", 1, "quick"), **{k: v for k, v in preset("idc", "digits", 1, "quick").items()
                                                      if k in ("factor", "decode_type", "batch_syn_max")},
              width=8, max_start_epoch=1, expert_dir=expert_dir, syn_steps=2, batch_syn=7, lr_img=0.1)
    t = _resumes_exactly(digits, hp, parameterization=MultiFormation, objective=TrajectoryMatching)
    assert t.param.num_slots() == 40 and set(t.synthetic_params()) == {"syn", "syn_lr"}


def test_incompatible_pairs_are_refused(digits):
    hp = preset("dm", "digits", 1, "quick")
    with pytest.raises(ValueError, match="objective BPTT needs the AddressableMemories parameterization"):
        Distiller(digits, 1, dict(hp, **preset("rtp", "digits", 1, "quick")), objective=BPTT,
                  parameterization=PlainImages)

    class NoSlots(PlainImages):
        drawn_slots = Parameterization.drawn_slots

    with pytest.raises(ValueError, match="objective TrajectoryMatching needs drawn_slots, which parameterization NoSlots"):
        Distiller(digits, 1, hp, parameterization=NoSlots, objective=TrajectoryMatching)
    with pytest.raises(ValueError, match="base must be one of \\('mtt', 'dm', 'dc'\\), got 'kip'"):
        METHODS["haba"](digits, 1, dict(preset("haba", "digits", 1, "quick"), base="kip"))
