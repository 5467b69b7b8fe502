"""``python -m ddkernels.info``: versions, build, and every op's backends with the reasons they can't run."""
from __future__ import annotations

import os
import platform

import torch

from . import __version__, _ext, dispatch


def report() -> str:
    lines = [f"ddkernels {__version__}", f"python {platform.python_version()} on {platform.machine()} ({platform.system()})",
             f"torch {torch.__version__} (CUDA build: {torch.version.cuda or 'no'}; CUDA available: {torch.cuda.is_available()})"]
    try:
        import triton
        lines.append(f"triton {triton.__version__} (TRITON_INTERPRET={os.environ.get('TRITON_INTERPRET', '0')})")
    except ImportError:
        lines.append("triton: not installed")
    for name in ("_C", "_C_cuda"):
        ok, why = _ext.load(name)
        lines.append(f"extension ddkernels.{name}: {'built' if ok else why}")
    lines.append(f"torch threads: {torch.get_num_threads()}; {torch.__config__.parallel_info().splitlines()[-1].strip()}")
    env = {k: v for k, v in os.environ.items() if k.startswith("DDKERNELS_")}
    lines.append(f"environment: {env or 'no DDKERNELS_* variables'}")
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    for op, backends in sorted(dispatch.OpBackends.registry.items()):
        lines.append(f"\n{op}:")
        for device in devices:
            auto = None
            try:
                auto = backends.select("auto", device, torch.float32)
            except dispatch.BackendUnavailable:
                pass
            lines.append(f"  {device.type} float32 (auto -> {auto}):")
            for name in dispatch.BACKENDS:
                why = backends.reasons(name, device, torch.float32)
                lines.append(f"    {name:<10} {'available' if not why else 'no: ' + '; '.join(why)}")
    return "\n".join(lines)


def main() -> None:
    print(report())


if __name__ == "__main__":
    main()
