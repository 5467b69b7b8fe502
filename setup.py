"""Build ddkernels' native extension ``ddkernels._C``: the CPU kernels in ``csrc/cpu/*.cpp``.
GPUs run the Triton kernels (Python, compiled at first use), so nothing here needs CUDA.

Environment:
  DDKERNELS_NO_EXT=1     pure-Python install (reference + Triton backends only)
  DDKERNELS_PORTABLE=1   do not compile for the build machine's CPU (-march=native)
  MAX_JOBS               compile parallelism (defaults to the machine's core count)
"""
import glob
import os

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _flag(name: str) -> bool:
    return os.environ.get(name, "0").lower() in ("1", "true", "yes", "on")


def _extensions():
    if _flag("DDKERNELS_NO_EXT"):
        print("ddkernels: DDKERNELS_NO_EXT set, skipping the native extension")
        return [], {}
    from torch.utils.cpp_extension import BuildExtension, CppExtension

    os.environ.setdefault("MAX_JOBS", str(os.cpu_count() or 1))
    # at::parallel_for expands to `#pragma omp parallel` in our own object files, so OpenMP
    # must be on here; libgomp.so.1 resolves to the copy torch has already loaded.
    cxx = ["-O3", "-std=c++17", "-fopenmp", "-ffp-contract=fast", "-DNDEBUG"]
    if not _flag("DDKERNELS_PORTABLE"):
        cxx.append("-march=native")
    exts = [
        CppExtension(
            "ddkernels._C",
            sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "csrc/cpu/*.cpp"))),
            extra_compile_args={"cxx": cxx},
            extra_link_args=["-fopenmp"],
        )
    ]
    return exts, {"build_ext": BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = _extensions()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
