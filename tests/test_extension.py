"""The C++ extension: registered ops pass torch.library.opcheck and trace under torch.compile."""
import os
import subprocess
import sys

import pytest
import torch

import ddkernels
from ddkernels import _ext
from ddkernels.ops.multi_formation.tables import adjoint_taps, forward_taps

pytestmark = pytest.mark.skipif(not _ext.cpu_available()[0], reason=f"C++ extension: {_ext.cpu_available()[1]}")


def _mf_args(dtype=torch.float32):
    x = torch.rand(3, 2, 10, 10, dtype=dtype)
    ri, rw = forward_taps(4, 12, dtype, x.device)
    ci, cw = forward_taps(4, 9, dtype, x.device)
    return x, ri, rw, ci, cw


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_opcheck_multi_formation(dtype):
    x, ri, rw, ci, cw = _mf_args(dtype)
    torch.library.opcheck(torch.ops.ddkernels.multi_formation_fwd.default, (x, 3, ri, rw, ci, cw))
    g = torch.rand(9 * 3, 2, 12, 9, dtype=dtype)
    gri, grw = adjoint_taps(4, 12, dtype, x.device)
    gci, gcw = adjoint_taps(4, 9, dtype, x.device)
    torch.library.opcheck(torch.ops.ddkernels.multi_formation_bwd.default, (g, 3, 10, 10, gri, grw, gci, gcw))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("pool", [True, False])
def test_opcheck_norm_relu_pool(dtype, pool):
    x = torch.randn(2, 3, 6, 7, dtype=dtype)
    w, b = torch.randn(3, dtype=dtype), torch.randn(3, dtype=dtype)
    torch.library.opcheck(torch.ops.ddkernels.norm_relu_pool_fwd.default, (x, w, b, 1e-5, pool))
    _, mean, rstd = torch.ops.ddkernels.norm_relu_pool_fwd(x, w, b, 1e-5, pool)
    g = torch.randn(2, 3, *((3, 3) if pool else (6, 7)), dtype=dtype)
    for need in ((True, True), (True, False), (False, True)):
        torch.library.opcheck(torch.ops.ddkernels.norm_relu_pool_bwd.default, (g, x, w, b, mean, rstd, pool, *need))
    ggx, ggw, ggb = torch.randn_like(x), torch.randn_like(w), torch.randn_like(b)
    for gg, need in (((ggx, ggw, ggb), (True, True, True)), ((ggx, None, None), (True, False, True)),
                     ((None, ggw, None), (False, True, False))):
        torch.library.opcheck(torch.ops.ddkernels.norm_relu_pool_bwd2.default,
                              (g, x, w, b, mean, rstd, pool, *gg, *need))


def test_norm_relu_pool_boundary_names_the_argument():
    x, w, b = torch.randn(2, 3, 6, 6), torch.randn(3), torch.randn(3)
    with pytest.raises(RuntimeError, match="x must be contiguous"):
        torch.ops.ddkernels.norm_relu_pool_fwd(x.transpose(2, 3), w, b, 1e-5, True)
    with pytest.raises(RuntimeError, match=r"weight must have shape \(C=3,\)"):
        torch.ops.ddkernels.norm_relu_pool_fwd(x, w[:2], b, 1e-5, True)
    with pytest.raises(RuntimeError, match="bias must have x's dtype"):
        torch.ops.ddkernels.norm_relu_pool_fwd(x, w, b.double(), 1e-5, True)
    _, mean, rstd = torch.ops.ddkernels.norm_relu_pool_fwd(x, w, b, 1e-5, True)
    with pytest.raises(RuntimeError, match=r"grad_out must have shape \(2, 3, 3, 3\)"):
        torch.ops.ddkernels.norm_relu_pool_bwd(torch.randn(2, 3, 6, 6), x, w, b, mean, rstd, True, True, True)


def test_cpp_boundary_names_the_argument():
    x, ri, rw, ci, cw = _mf_args()
    with pytest.raises(RuntimeError, match="x must be contiguous"):
        torch.ops.ddkernels.multi_formation_fwd(x.transpose(2, 3), 3, ri, rw, ci, cw)
    with pytest.raises(RuntimeError, match="row_w must have dtype"):
        torch.ops.ddkernels.multi_formation_fwd(x, 3, ri, rw.double(), ci, cw)
    with pytest.raises(RuntimeError, match="row_idx holds index"):
        torch.ops.ddkernels.multi_formation_fwd(x, 3, ri + 10, rw, ci, cw)
    with pytest.raises(RuntimeError, match=r"x must be 4-D \(N, C, h, w\)"):
        torch.ops.ddkernels.multi_formation_fwd(x[0], 3, ri, rw, ci, cw)


# Dynamo traces through our lru_cache'd tap-table builders; that is safe because they are pure
# functions of their (hashable) arguments.
@pytest.mark.filterwarnings("ignore:Dynamo detected a call to a `functools.lru_cache`")
def test_torch_compile_traces_the_cpu_op():
    x = torch.rand(4, 3, 16, 16, requires_grad=True)

    @torch.compile(backend="aot_eager", fullgraph=False)
    def f(t):
        return ddkernels.multi_formation(t, 2, backend="cpu").square().sum()

    loss = f(x)
    loss.backward()
    x2 = x.detach().clone().requires_grad_()
    ddkernels.multi_formation(x2, 2, backend="reference").square().sum().backward()
    torch.testing.assert_close(x.grad, x2.grad)


@pytest.mark.filterwarnings("ignore:Dynamo detected a call to a `functools.lru_cache`")
def test_torch_compile_traces_norm_relu_pool():
    leaves = [torch.randn(2, 3, 8, 8), torch.randn(3), torch.randn(3)]
    compiled = [t.clone().requires_grad_() for t in leaves]
    eager = [t.clone().requires_grad_() for t in leaves]

    @torch.compile(backend="aot_eager", fullgraph=False)
    def f(x, w, b):
        return ddkernels.norm_relu_pool(x, w, b, backend="cpu").square().sum()

    f(*compiled).backward()
    ddkernels.norm_relu_pool(*eager, backend="reference").square().sum().backward()
    for a, e in zip(compiled, eager):
        torch.testing.assert_close(a.grad, e.grad)


def test_import_without_extension_warns_once_and_falls_back():
    code = ("import warnings, torch; warnings.simplefilter('always');"
            "import ddkernels; x = torch.rand(1, 1, 4, 4);"
            "y = ddkernels.multi_formation(x, 2); print(y.shape)")
    env = dict(os.environ, DDKERNELS_NO_EXT="1")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "torch.Size([4, 1, 4, 4])" in out.stdout
