"""The end-to-end benchmark's plumbing (no timing): op ranges, profile attribution, and its
transcribed DatasetCondensation utils against ddkernels.compat, patched the way users patch."""
from types import SimpleNamespace

import pytest
import torch

import ddkernels
import ddkernels.compat
import ddkernels.distill.methods.matching as matching
from benchmarks import bench_e2e
from ddkernels.testing import assert_close
from tests.compat.test_compat import grad_lists


def test_op_ranges_wraps_and_restores():
    original = matching.grad_distance
    with bench_e2e.op_ranges():
        assert matching.grad_distance is not original and matching.grad_distance.__wrapped__ is original
        assert ddkernels.grad_distance is not original
    assert matching.grad_distance is original and ddkernels.grad_distance is original


@pytest.mark.parametrize("backend", ["reference", "auto"])
def test_profile_step_attributes_forward_and_backward(backend):
    w = torch.randn(16, 8, requires_grad=True)
    x = torch.randn(32, 8)

    def step():
        g = torch.autograd.grad((x @ w.t()).tanh().sum(), w, create_graph=True)[0]
        d = ddkernels.grad_distance([g], [torch.randn(16, 8)], "ours", backend=backend)
        d.backward()
        return d.detach()

    loss, prof = bench_e2e.profile_step(step)
    assert prof.op_s["grad_distance"] > 0 and prof.op_s["multi_formation"] == 0
    assert 0 < prof.share() <= 1 and 0 < prof.backward_s <= prof.total_s
    assert prof.top and all(0 < share <= 1 for _, share in prof.top)


def test_original_dc_utils_match_compat_and_patch():
    utils = bench_e2e.original_dc_utils()
    syn, real = grad_lists()
    for metric in ("ours", "mse", "cos"):
        args = SimpleNamespace(dis_metric=metric, device="cpu")
        assert_close(ddkernels.compat.match_loss(syn, real, args), utils.match_loss(syn, real, args))
    torch.manual_seed(0)
    net = utils.get_network("ConvNet", 1, 10, (28, 28))
    report = ddkernels.compat.patch(utils)
    assert set(report.patched) == {"distance_wb", "match_loss", "ConvNet"} and utils.match_loss is ddkernels.compat.match_loss
    torch.manual_seed(0)
    patched = utils.get_network("ConvNet", 1, 10, (28, 28))
    assert isinstance(patched, ddkernels.compat.ConvNet)
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), patched.state_dict().values()))
    x = torch.randn(3, 1, 28, 28)
    assert_close(patched(x), net(x), name="patched network")
    ddkernels.compat.unpatch(utils)
    assert utils.match_loss is not ddkernels.compat.match_loss and utils.ConvNet is not ddkernels.compat.ConvNet


@pytest.mark.parametrize("flavour", ["vico", "mtt"])
def test_original_dsa_transcription_matches_the_fixture_and_compat(flavour):
    from tests.compat.test_dsa import OriginalDSA

    utils = bench_e2e.original_dsa_utils() if flavour == "vico" else bench_e2e.original_haba_utils()
    x = torch.randn(5, 3, 16, 16)
    for seed in (-1, 7):
        for rng in range(4):
            param = utils.ParamDiffAug()
            torch.manual_seed(rng)
            want = OriginalDSA(flavour == "mtt")(x, bench_e2e.DSA_STRATEGY, seed)
            torch.manual_seed(rng)
            assert torch.equal(utils.DiffAugment(x, bench_e2e.DSA_STRATEGY, seed, param), want)
            torch.manual_seed(rng)
            assert torch.equal(ddkernels.compat.DiffAugment(x, bench_e2e.DSA_STRATEGY, seed, param), want)


def test_original_haba_utils_patch_and_step():
    from ddkernels.distill.data import load_dataset

    utils = bench_e2e.original_haba_utils()
    dry = ddkernels.compat.patch(utils, dry_run=True)
    assert {"ConvNet", "StyleTranslator", "DiffAugment", "ParamDiffAug", "rand_crop"} <= set(dry.patched)
    assert dry.replacements["ParamDiffAug"].endswith("MTTParamDiffAug") and "ReparamModule" not in dry.patched
    ds = load_dataset("digits")  # 8×8: fast; the benchmark runs Fashion-MNIST
    make = lambda: bench_e2e.OriginalHaBaLoop(utils, ds, 1, 3, 2, seed=0)  # noqa: E731
    before = make()
    ddkernels.compat.patch(utils)
    after = make()
    assert isinstance(after.styles[0], ddkernels.compat.StyleTranslator)
    assert all(torch.equal(a, b) for a, b in zip(before.styles.state_dict().values(), after.styles.state_dict().values()))
    patched_loss = after.step()
    ddkernels.compat.unpatch(utils)
    loss = before.step()
    assert abs(patched_loss - loss) <= 1e-4 * abs(loss)
    assert_close(after.image_syn, before.image_syn, atol=1e-4, rtol=1e-4, name="bases after one step")


def test_markdown_half_column():
    """Three providers fill the half-precision columns (speedups against fused fp32 and reference);
    two (the original-style loops) leave them "—"."""
    prof = bench_e2e.Profile(1.0, {op: 0.0 for op in bench_e2e.RANGES}, 0.5, 10.0, [("mm", 0.5)])
    three = bench_e2e.Result("dm", "case", seconds={"reference": [4.0], "auto": [2.0], "auto bf16": [1.0]},
                             losses={"reference": [1.0], "auto": [1.0], "auto bf16": [1.01]},
                             profiles={"reference": prof, "auto": prof, "auto bf16": prof})
    two = bench_e2e.Result("loop", "case", seconds={"reference": [3.0], "compat.patch": [1.5]},
                           losses={"reference": [1.0], "compat.patch": [1.0]},
                           profiles={"reference": prof, "compat.patch": prof})
    rows = bench_e2e.markdown([three, two]).splitlines()
    assert rows[0].startswith("| trainer | case | reference s/it | fused s/it | bf16 s/it | speedup | bf16 vs fused |")
    assert "| 4.000 | 2.000 | 1.000 | 2.00× | 2.00× | 4.00× |" in rows[2] and rows[2].endswith("| 10 / 10 / 10 | 0.0e+00; 1.0e-02 |")
    assert "| 3.000 | 1.500 | — | 2.00× | — | — |" in rows[3]
    assert bench_e2e.providers(torch.device("cpu"), "bf16") == {
        "reference": ("reference", "fp32"), "auto": ("auto", "fp32"), "auto bf16": ("auto", "bf16")}
    assert "auto none" not in bench_e2e.providers(torch.device("cpu"), "none")
