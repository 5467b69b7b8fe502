"""``python -m ddkernels.info``: versions, build, and every op's backends with the reasons they can't run.
``python -m ddkernels.info --ops``: the Markdown table of the registered ops (:data:`ddkernels.ops.OPS`)
and the backends each declares, the same on every machine (for the docs).
"""
from __future__ import annotations

import argparse
import os
import platform

import torch

from . import __version__, _ext, dispatch, ops


def report() -> str:
    lines = [f"ddkernels {__version__}", f"python {platform.python_version()} on {platform.machine()} ({platform.system()})",
             f"torch {torch.__version__} (CUDA build: {torch.version.cuda or 'no'}; CUDA available: {torch.cuda.is_available()})"]
    try:
        import triton
        lines.append(f"triton {triton.__version__} (TRITON_INTERPRET={os.environ.get('TRITON_INTERPRET', '0')})")
    except ImportError:
        lines.append("triton: not installed")
    ok, why = _ext.cpu_available()
    lines.append(f"extension ddkernels._C (CPU kernels): {'built' if ok else why}")
    lines.append(f"torch threads: {torch.get_num_threads()}; {torch.__config__.parallel_info().splitlines()[-1].strip()}")
    env = {k: v for k, v in os.environ.items() if k.startswith("DDKERNELS_")}
    lines.append(f"environment: {env or 'no DDKERNELS_* variables'}")
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    for op in ops.names():
        backends = ops.backends(op)
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


def _declared(backend: dispatch.Backend) -> str:
    """``name`` for a backend that takes every float dtype, else ``name (dtypes)``."""
    if set(backend.dtypes) == set(dispatch.FLOATS):
        return backend.name
    return f"{backend.name} ({', '.join(str(d).replace('torch.', '') for d in backend.dtypes)})"


def op_table() -> str:
    """One row per registered op: what it fuses, the backends it declares (with their dtypes), who uses
    it. Built from the declarations only, so it does not depend on what this machine has installed."""
    lines = ["| op | fuses | backends | used by |", "|---|---|---|---|"]
    for op in ops.OPS:
        declared = ops.backends(op.name).backends
        cells = []
        for name in dispatch.BACKENDS:
            b = declared[name]
            # a backend the op does not implement carries its one reason (what runs instead)
            cells.append(_declared(b) if b.devices else "; ".join(b.unavailable()))
        label = f"`{op.name}`" + ("" if op.public else " (internal)")
        lines.append(f"| {label} | {op.fuses} | {'; '.join(cells)} | {op.used_by} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m ddkernels.info", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ops", action="store_true", help="print the Markdown table of the registered ops only")
    args = ap.parse_args(argv)
    print(op_table() if args.ops else report())


if __name__ == "__main__":
    main()
