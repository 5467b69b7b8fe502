import os

import torch

# Triton kernels run on CPU tensors through the interpreter; the flag must be set before triton is
# imported. On a GPU machine the real compiler is used instead.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
# `make gpu-check` sets DDKERNELS_TEST_DEVICE=cuda: the op tests then make their tensors on the GPU.
TEST_DEVICE = os.environ.get("DDKERNELS_TEST_DEVICE", "cpu")
if TEST_DEVICE != "cpu":
    torch.set_default_device(TEST_DEVICE)
os.environ.pop("DDKERNELS_BACKEND", None)  # tests pick backends explicitly

import pytest  # noqa: E402

import ddkernels  # noqa: E402,F401
from ddkernels import dispatch  # noqa: E402


def fused_backends(op: str, device: str = TEST_DEVICE):
    """pytest params for every kernel backend ``op`` implements; one that cannot run here (no
    extension, no triton) is skipped with its reasons, never silently dropped."""
    params = []
    backends = dispatch.OpBackends.registry[op].backends
    for name in dispatch.BACKENDS:
        if name == "reference" or not backends[name].devices:  # not a kernel / not implemented for this op
            continue
        why = dispatch.OpBackends.registry[op].reasons(name, torch.device(device), torch.float32)
        marks = [pytest.mark.skip(reason=f"{name}: {'; '.join(why)}")] if why else []
        params.append(pytest.param(name, marks=marks, id=name))
    return params


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def single_thread():
    """Tiny networks run several times faster on one thread than on two contended ones."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def expert_dir(tmp_path_factory):
    """A directory of two tiny expert trajectories on digits (width 8, 3 short epochs) for the MTT/HaBa tests."""
    from ddkernels.distill.experts import train_experts

    out = str(tmp_path_factory.mktemp("experts"))
    # One thread, as the tests that retrain these experts (session fixtures start before single_thread,
    # and a different thread count changes the float rounding of the trajectories).
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train_experts("digits", out, num_experts=2, epochs=3, width=8, images_per_epoch=128, batch=128, progress=False)
    finally:
        torch.set_num_threads(n)
    return out
