"""`make gpu-check` on a machine without a GPU: says so and exits 0, touching nothing."""
import pytest
import torch

from benchmarks import gpu_check


@pytest.mark.skipif(torch.cuda.is_available(), reason="the no-GPU path")
def test_gpu_check_without_gpu(tmp_path, capsys):
    assert gpu_check.main(["--out", str(tmp_path)]) == 0
    assert "nothing to check on this machine" in capsys.readouterr().out
    assert list(tmp_path.iterdir()) == []


def test_gpu_check_rejects_bad_budget():
    with pytest.raises(SystemExit):
        gpu_check.main(["--budget", "0"])
