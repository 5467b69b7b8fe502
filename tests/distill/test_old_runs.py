"""Run directories written before the package was split into kernels and framework (git 3b8c02b,
`fixtures/old_runs/make_fixture.py`) still resume and evaluate, and resuming them reaches what the
old code reached running straight through."""
import os
import shutil

import pytest
import torch

from ddkernels.distill import runs
from ddkernels.testing import assert_close

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "old_runs")
GOLDEN = torch.load(os.path.join(FIXTURE, "golden.pt"), weights_only=False)

pytestmark = pytest.mark.usefixtures("single_thread")  # the fixture was written with one thread


@pytest.fixture
def old_runs(tmp_path, monkeypatch):
    shutil.copytree(FIXTURE, tmp_path / "old_runs")
    monkeypatch.chdir(tmp_path / "old_runs")  # the MTT/HaBa runs name their experts as "experts"
    return tmp_path / "old_runs"


def _distill(case, out, iterations, resume):
    g = GOLDEN[case]
    return runs.distill(g["method"], "digits", g["ipc"], str(out), iterations=iterations, resume=resume,
                        overrides=g["overrides"], evaluate_after=False, progress=False)


@pytest.mark.parametrize("case", sorted(GOLDEN))
def test_old_checkpoint_resumes_to_the_old_result(old_runs, case):
    _distill(case, old_runs / "old" / case, 2, resume=True)
    resumed = torch.load(old_runs / "old" / case / "checkpoint.pt", weights_only=False)["trainer"]
    _distill(case, old_runs / "new" / case, 2, resume=False)
    straight = torch.load(old_runs / "new" / case / "checkpoint.pt", weights_only=False)["trainer"]
    # a checkpoint the new code writes at iteration 1, resumed to 2
    _distill(case, old_runs / "half" / case, 1, resume=False)
    _distill(case, old_runs / "half" / case, 2, resume=True)
    half = torch.load(old_runs / "half" / case / "checkpoint.pt", weights_only=False)["trainer"]
    assert resumed["iteration"] == straight["iteration"] == half["iteration"] == 2
    assert sorted(resumed["params"]) == sorted(straight["params"]) == sorted(GOLDEN[case]["params"])
    for k, v in GOLDEN[case]["params"].items():
        # Same machine, same kernels: resuming and running straight agree bit for bit ...
        assert torch.equal(half["params"][k], straight["params"][k]), k
        # ... and the old checkpoint resumes to what the old code reached running straight, and the new
        # code follows the old one (to float rounding: this CPU's vector units may differ from the
        # fixture's, so iteration 1 here can differ from the fixture's in the last bits).
        assert_close(resumed["params"][k], v, rtol=1e-4, atol=1e-5, name=f"{case}: resumed {k}")
        assert_close(straight["params"][k], v, rtol=1e-4, atol=1e-5, name=f"{case}: {k}")
    assert [h["loss"] for h in straight["history"]] == pytest.approx(GOLDEN[case]["losses"], rel=1e-4)
    assert [h["loss"] for h in resumed["history"]] == pytest.approx(GOLDEN[case]["losses"], rel=1e-4)


@pytest.mark.parametrize("case", ["idc", "haba", "rtp"])
def test_old_run_directory_evaluates(old_runs, case):
    out = old_runs / "old" / case
    before = (out / "synthetic.pt").read_bytes()
    metrics = runs.evaluate_dir(str(out), eval_nets=1, baseline=False, progress=False)
    assert metrics["method"] == GOLDEN[case]["method"] and metrics["accuracy"]["n"] == 1
    assert 0 <= metrics["accuracy"]["mean"] <= 100
    assert (out / "synthetic.pt").read_bytes() == before
