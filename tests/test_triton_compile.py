"""Compile every Triton kernel for an H100 target (sm_90) without a GPU, so type errors surface in CI.

Runs in a subprocess without TRITON_INTERPRET: the test session's interpreter mode wraps and
patches kernels, which the real compiler cannot take.
"""
import os
import subprocess
import sys

import pytest

pytest.importorskip("triton")

from ddkernels import ops  # noqa: E402

TRITON_MODULES = [f"ddkernels.ops.{op}.triton" for op in ops.names() if ops.has_triton(op)]

SCRIPT = r"""
import importlib, sys, triton
from triton.backends.compiler import GPUTarget
n = 0
for mod in sys.argv[1:]:
    for kernel, signature, constexprs in importlib.import_module(mod).compile_specs():
        src = triton.compiler.ASTSource(fn=kernel, signature=signature, constexprs=constexprs)
        compiled = triton.compile(src, target=GPUTarget("cuda", 90, 32))
        assert compiled.asm["ptx"], (mod, kernel.__name__)
        n += 1
print("compiled", n)
"""


@pytest.mark.parametrize("module", TRITON_MODULES)
def test_compiles_for_sm90(module):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, "-c", SCRIPT, module], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "compiled" in out.stdout and not out.stdout.strip().endswith(" 0")
