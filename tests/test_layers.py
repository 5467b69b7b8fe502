"""The layers stay apart: the kernel library (ops, dispatch, nn, compat) loads no framework module
(ddkernels.distill) and needs nothing but torch (and triton, optional)."""
import subprocess
import sys

import pytest

# Run in a fresh interpreter: this test session has long since imported everything.
_PROBE = r"""
import importlib.abc, sys, traceback

FRAMEWORK_DEPS = {"numpy", "tqdm", "sklearn", "scipy", "yaml"}

class RefuseFromCore(importlib.abc.MetaPathFinder):
    # Refuse the framework's dependencies when a ddkernels module imports them directly
    # (torch and triton may use numpy themselves: that is theirs, not ours).
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] not in FRAMEWORK_DEPS:
            return None
        frame = sys._getframe(1)
        while frame is not None and frame.f_globals.get("__name__", "").startswith(("importlib", "_frozen_importlib")):
            frame = frame.f_back
        caller = frame.f_globals.get("__name__", "") if frame is not None else ""
        if caller.startswith("ddkernels"):
            raise ImportError(f"{caller} imports {name}, a dependency of the distill extra only")
        return None

sys.meta_path.insert(0, RefuseFromCore())
import MODULES
loaded = sorted(m for m in sys.modules if m.startswith("ddkernels.distill"))
assert not loaded, f"the kernel library loaded framework modules: {loaded}"
print("ok")
"""


@pytest.mark.parametrize("modules", ["ddkernels", "ddkernels.compat", "ddkernels.nn", "ddkernels.info"])
def test_kernel_library_loads_no_framework_module(modules):
    out = subprocess.run([sys.executable, "-c", _PROBE.replace("MODULES", modules)], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-3000:]


def test_probe_catches_a_framework_import():
    # The probe itself must fail when the framework is imported, or the test above proves nothing.
    out = subprocess.run([sys.executable, "-c", _PROBE.replace("MODULES", "ddkernels.distill.runs")],
                         capture_output=True, text=True)
    assert out.returncode != 0 and ("ImportError" in out.stderr or "framework modules" in out.stderr)


def test_core_sources_never_import_the_framework():
    # A lazy import inside a function would escape the probe: read the sources too.
    import pathlib
    import re

    import ddkernels
    root = pathlib.Path(ddkernels.__file__).parent
    imports_distill = re.compile(r"^\s*(from|import)\s+[\w.]*distill", re.M)
    offenders = [str(p.relative_to(root)) for p in root.rglob("*.py")
                 if p.relative_to(root).parts[0] != "distill" and p.name != "__main__.py"  # __main__: the CLI
                 and imports_distill.search(p.read_text())]
    assert not offenders, f"core modules import ddkernels.distill: {offenders}"
