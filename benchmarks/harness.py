"""Benchmark harness shared by every op: providers side by side, modes, GB/s, roofline, CSV.

A bench module exposes ``cases(quick: bool) -> list[Case]``. Each case names its providers (the
same math done different ways) and the bytes a perfect kernel must move per mode; the harness times
forward / backward / full with ``torch.utils.benchmark.Timer`` (CPU and GPU), reports median and
IQR, peak memory, achieved GB/s and the fraction of this machine's measured copy bandwidth.
"""
from __future__ import annotations

import csv
import datetime as _dt
import os
import platform
import statistics
import subprocess
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
from torch.utils.benchmark import Timer

MODES = ("forward", "backward", "full")

# "backward" mode replays one graph many times (retain_graph=True); compiled graphs must not donate
# their saved buffers for that to be legal.
import torch._functorch.config  # noqa: E402
torch._functorch.config.donated_buffer = False


@dataclass
class Provider:
    name: str
    fn: Callable[[], torch.Tensor]     # runs the op on fixed inputs; returns the output
    inputs: Sequence[torch.Tensor]     # leaves whose gradients the backward computes
    warmup: int = 2                    # torch.compile providers compile during warm-up


@dataclass
class Case:
    op: str
    name: str                          # e.g. "CIFAR 3x32x32, IPC 10, f=2"
    providers: list[Provider]
    bytes: dict[str, int]              # minimal HBM/DRAM traffic per mode
    params: dict = field(default_factory=dict)
    upstream: str = "randn"            # the backward's upstream gradient: "randn" or "ones" (a summed loss)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def hardware() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{model} ({torch.get_num_threads()} threads)"


def git_sha() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=os.path.dirname(__file__)).stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def measure_bandwidth(device: torch.device, mib: int = 256) -> float:
    """Copy bandwidth in GB/s, counting bytes read + bytes written (the roofline we report against)."""
    n = mib * 2**20 // 4
    src = torch.rand(n, device=device)
    dst = torch.empty_like(src)
    t = Timer("dst.copy_(src)", globals={"dst": dst, "src": src}).blocked_autorange(min_run_time=1.0)
    return 2 * n * 4 / t.median / 1e9


def peak_memory_mb(fn: Callable[[], object], device: torch.device) -> float:
    """Peak memory allocated while ``fn`` runs, above what was live before it."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    # CPU has no allocator statistics: replay the profiler's allocation records in time order.
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    return peak_from_profile(prof)


def peak_from_profile(prof) -> float:
    """Peak MB above the start from a ``profile_memory=True`` profile: its raw allocation and free
    records (one per allocator call, signed bytes) replayed in time order. Not the ops' self memory:
    an op's frees are all counted at its start, so a backward that frees what its children allocate
    (a nested ``autograd.grad``) would hide their allocations."""
    records = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    level = peak = 0
    for e in sorted(records, key=lambda e: e.start_ns()):
        level += e.nbytes()
        peak = max(peak, level)
    return peak / 2**20


def dtype_name(dtype: torch.dtype) -> str:
    return {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16", torch.float64: "fp64"}[dtype]


def dtype_label(dtype: torch.dtype) -> str:
    """The suffix a case's name gets for a dtype other than float32 (", bf16")."""
    return "" if dtype == torch.float32 else f", {dtype_name(dtype)}"


def half_ratios(rows: list[dict], fused: str) -> list[str]:
    """Table rows: for every reduced-precision case, the fused provider's float32 time over its half
    time per mode (the float32 case is the one with the same name without the dtype suffix)."""
    out = []
    ms = {(r["case"], r["provider"], r["mode"]): r["median_ms"] for r in rows}
    for r in rows:
        dt = r.get("dtype", "fp32")
        if r["provider"] != fused or dt == "fp32":
            continue
        base = r["case"].removesuffix(f", {dt}")
        if (base, fused, r["mode"]) in ms:
            out.append(f"| {r['op']} | {base} | {r['mode']} | {ms[(base, fused, r['mode'])]:.3f} | "
                       f"{r['median_ms']:.3f} | {ms[(base, fused, r['mode'])] / r['median_ms']:.2f}× |")
    return out


def half_ratio_table(lines: list[str], fused: str) -> str:
    """:func:`half_ratios`' rows of every op under one header ("" when there are none)."""
    if not lines:
        return ""
    return "\n".join([f"**{fused}: float32 vs half precision** (same run)\n",
                      "| op | case | mode | fp32 ms | half ms | fp32 / half |", "|---|---|---|---|---|---|", *lines, ""])


def warm_up(p: Provider) -> None:
    """The provider's warm-up calls, forward and backward (torch.compile providers compile here)."""
    for _ in range(p.warmup):
        torch.autograd.grad(p.fn(), p.inputs, torch.ones_like(p.fn()))


def mode_callable(p: Provider, mode: str, upstream: str = "randn"):
    if mode == "forward":
        return p.fn
    y = p.fn()
    g = torch.ones_like(y) if upstream == "ones" else torch.randn_like(y)
    if mode == "backward":
        return lambda: torch.autograd.grad(y, p.inputs, g, retain_graph=True)
    return lambda: torch.autograd.grad(p.fn(), p.inputs, g)


# Providers take turns in rounds within each mode, so a slow spell of the (shared) machine lands on
# all of them instead of on whichever was being timed: single back-to-back measurements moved the
# ratios of one case by up to 1.5x between runs on our 2-vCPU VM.
ROUNDS = 3


def run_case(case: Case, bandwidth_gbs: float, min_run_time: float = 0.5,
             modes: Sequence[str] = MODES, progress: Callable[[str], None] = lambda s: None) -> list[dict]:
    rows = []
    for p in case.providers:
        warm_up(p)
    for mode in modes:
        fns = [mode_callable(p, mode, case.upstream) for p in case.providers]
        times: list[list[float]] = [[] for _ in fns]
        for _ in range(ROUNDS):
            for p, fn, ts in zip(case.providers, fns, times):
                device = p.inputs[0].device
                sync(device)
                m = Timer("fn(); sync()", globals={"fn": fn, "sync": lambda d=device: sync(d)}).blocked_autorange(
                    min_run_time=min_run_time / ROUNDS)
                ts.extend(m.times)
        for p, fn, ts in zip(case.providers, fns, times):
            q1, median, q3 = statistics.quantiles(ts, n=4) if len(ts) > 1 else (ts[0],) * 3
            gbs = case.bytes[mode] / median / 1e9
            rows.append(dict(op=case.op, case=case.name, provider=p.name, mode=mode,
                             median_ms=median * 1e3, iqr_ms=(q3 - q1) * 1e3,
                             peak_mem_mb=peak_memory_mb(fn, p.inputs[0].device), bytes=case.bytes[mode], gbps=gbs,
                             roofline=gbs / bandwidth_gbs, **case.params))
            progress(f"{case.op} | {case.name} | {p.name:<16} {mode:<8} {median * 1e3:9.3f} ms  "
                     f"{gbs:6.2f} GB/s ({100 * gbs / bandwidth_gbs:4.1f}% of roofline)")
        del fns
    return rows


CSV_FIELDS = ["date", "git_sha", "hardware", "torch", "bandwidth_gbs", "op", "case", "provider", "mode",
              "median_ms", "iqr_ms", "peak_mem_mb", "bytes", "gbps", "roofline"]


def append_csv(path: str, rows: list[dict], bandwidth_gbs: float) -> None:
    meta = dict(date=_dt.datetime.now().isoformat(timespec="seconds"), git_sha=git_sha(), hardware=hardware(),
                torch=torch.__version__, bandwidth_gbs=round(bandwidth_gbs, 2))
    new = not os.path.exists(path)
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
        if new:
            w.writeheader()
        for r in rows:
            w.writerow({**meta, **{k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()}})


def write_table(out: str, name: str, text: str, complete: bool) -> str:
    """Write a generated Markdown table to ``out/<name>.md``, the file the docs quote, or, for a
    partial run (``--quick``, a subset, an override), to ``out/<name>-partial.md`` so that a smoke
    run never replaces it. Returns the path. The benchmarks never edit the README or docs/."""
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, f"{name}{'' if complete else '-partial'}.md")
    with open(path, "w") as f:
        f.write(text.rstrip("\n") + "\n")
    return path


def markdown(rows: list[dict], fused: str, eager: Sequence[str]) -> str:
    """One table per op: a row per (case, mode), a column per provider (ms), then the fused
    provider's speed-up over the best of ``eager`` and its fraction of the bandwidth roofline."""
    out = []
    for op in dict.fromkeys(r["op"] for r in rows):
        ops = [r for r in rows if r["op"] == op]
        providers = list(dict.fromkeys(r["provider"] for r in ops))
        head = ["case", "mode"] + [f"{p} ms" for p in providers] + [
            f"{fused} vs best eager", f"{fused} % roofline", f"peak MB {fused} / best eager"]
        out.append(f"**{op}**\n\n| " + " | ".join(head) + " |\n|" + "---|" * len(head))
        for case in dict.fromkeys(r["case"] for r in ops):
            for mode in MODES:
                cell = {r["provider"]: r for r in ops if r["case"] == case and r["mode"] == mode}
                if not cell:
                    continue
                line = [case, mode] + [f"{cell[p]['median_ms']:.3f}" if p in cell else "–" for p in providers]
                base = [cell[p]["median_ms"] for p in eager if p in cell]
                if fused in cell and base:
                    best = min((p for p in eager if p in cell), key=lambda p: cell[p]["median_ms"])
                    line += [f"{cell[best]['median_ms'] / cell[fused]['median_ms']:.2f}×",
                             f"{100 * cell[fused]['roofline']:.0f}%",
                             f"{cell[fused]['peak_mem_mb']:.1f} / {cell[best]['peak_mem_mb']:.1f}"]
                else:
                    line += ["–", "–", "–"]
                out.append("| " + " | ".join(line) + " |")
        out.append("")
    return "\n".join(out)
