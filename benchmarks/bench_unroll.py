"""MTT's outer iteration, ``unroll="reverse"`` (the shared reverse pass, with its default forward-mode
product and, as ``reverse-backward``, with hp ``unroll_product="backward"``, the double backward) vs
``"autograd"`` (the ``create_graph=True`` graph): peak memory and time per iteration over ``syn_steps``,
widths and IPCs.

    nice python -m benchmarks.bench_unroll [--steps 10 20 50 80] [--widths 32 128] [--ipc 1 10]
                                           [--iterations 3] [--max-gb 9] [--no-backward-product]

Fashion-MNIST, the ``quick`` MTT preset (every image in each student step, per-sample DSA) at the
given width, from one small throwaway expert per width (2 epochs of 512 images, in a temp dir;
start epoch 0 or 1, match 1 epoch). Peak memory: the most memory allocated during one outer iteration
above what was live before it (:func:`harness.peak_memory_mb`: the CUDA allocator, or the CPU
profiler's allocation records). Time: the median of ``--iterations`` outer iterations per mode after
one warm-up, the modes alternating (one where ``syn_steps`` × IPC > 100 on the CPU, to fit the grid in
a shared 2-core machine's budget), wall time and this thread's CPU time (rows of mode
``iteration-cpu``).
``reverse`` also runs at ``syn_steps`` 1, the floor the target is stated against (the weight
buffer above a 1-step unroll). An ``autograd`` configuration whose peak, extrapolated linearly in
``syn_steps`` from the ones measured, would pass ``--max-gb`` is not run (the table says so): it
would take the machine's memory from everything else on it.

Rows go to ``results/results.csv`` (op ``unroll``; ``peak_mem_mb``, ``median_ms`` per iteration,
``bytes`` the weight buffer), the table to ``results/latest-unroll-<device>.md`` (another grid:
``-partial``).
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import torch

from . import harness

HERE = os.path.dirname(os.path.abspath(__file__))
DATASET = "fashion-mnist"


def make_experts(root: str, width: int, device: torch.device) -> str:
    from ddkernels.distill.experts import train_experts

    out = os.path.join(root, f"experts-w{width}")
    train_experts(DATASET, out, num_experts=1, epochs=2, images_per_epoch=512, width=width, progress=False,
                  device=device)
    return out


#: provider -> (hp unroll, hp unroll_product)
MODES = {"autograd": ("autograd", "forward"), "reverse": ("reverse", "forward"),
         "reverse-backward": ("reverse", "backward")}


def make(ds, expert_dir: str, width: int, ipc: int, steps: int, mode: str, device: torch.device):
    from ddkernels.distill.methods import make_distiller

    unroll, product = MODES[mode]
    return make_distiller("mtt", ds, ipc, "quick", seed=0, device=device, width=width, eval_width=width,
                          expert_dir=expert_dir, max_start_epoch=1, expert_epochs=1, syn_steps=steps, unroll=unroll,
                          unroll_product=product)


def measure(dists: dict, iterations: int, device: torch.device) -> dict:
    """Peak memory of one outer iteration per mode (also the warm-up), then ``iterations`` timed outer
    iterations per mode, the modes alternating (so that a shared machine's load falls on both)."""
    out = {}
    for mode, d in dists.items():
        params = sum(p.numel() for p in d.objective.student.parameters())
        out[mode] = dict(peak_mem_mb=harness.peak_memory_mb(d.step, device), params=params, wall=[], cpu=[])
    for _ in range(iterations):
        for mode, d in dists.items():
            harness.sync(device)
            t0, c0 = time.perf_counter(), time.thread_time()
            d.step()
            harness.sync(device)
            out[mode]["wall"].append(time.perf_counter() - t0)
            out[mode]["cpu"].append(time.thread_time() - c0)
    for r in out.values():
        times = r.pop("wall")
        q = statistics.quantiles(times, n=4) if len(times) > 1 else [times[0]] * 3
        r.update(median_ms=1e3 * statistics.median(times), iqr_ms=1e3 * (q[2] - q[0]),
                 cpu_ms=1e3 * statistics.median(r.pop("cpu")), timed=len(times))
    return out


def step_floor(d, device: torch.device, repeats: int = 7) -> tuple[float, float, float]:
    """This thread's CPU ms (medians) of one student step's graph-free gradient (what the reverse mode's
    forward adds per step), of one step with its graph and its mixed second-derivative product by the
    double backward (what autograd pays per step, and the reverse with ``unroll_product="backward"``), and
    of one step's product in forward mode (the reverse's default recompute). The floors:
    ``(free + forward-mode step) ÷ full`` and, for the double-backward product, ``1 + free ÷ full``."""
    from ddkernels.distill.methods.unroll import _directional, _step_grad

    o = d.objective
    theta = o.experts.trajectories[0][0].to(device)
    inputs = [p for p in d.param.params().values() if p.requires_grad]
    record = o.student_draw(0)

    def free():
        with torch.no_grad():
            x, y = o.student_build(record)
        with torch.enable_grad():
            return _step_grad(o.student_logits, theta.clone().requires_grad_(True), x, y, False)

    def full():
        th = theta.clone().requires_grad_(True)
        x, y = o.student_build(record)
        g = _step_grad(o.student_logits, th, x, y, True)
        return torch.autograd.grad(g, [th, *inputs], grad_outputs=torch.ones_like(g), allow_unused=True)

    def forward_mode():
        th = theta.clone().requires_grad_(True)
        x, y = o.student_build(record)
        s = _directional(o.student_logits, th, x, y, torch.ones_like(theta))
        return torch.autograd.grad(s, [th, *inputs], allow_unused=True)

    out = []
    for fn in (free, full, forward_mode):
        fn()
        times = []
        for _ in range(repeats):
            harness.sync(device)
            c0 = time.thread_time()
            fn()
            harness.sync(device)
            times.append(time.thread_time() - c0)
        out.append(1e3 * statistics.median(times))
    return out[0], out[1], out[2]


STEPS = ("graph-free step", "step with graph and HVP", "step by forward-mode product")


def markdown(rows: list[dict], skipped: list[tuple]) -> str:
    head = ["width", "IPC", "syn_steps", "autograd MB", "reverse MB", "memory ÷", "reverse − 1-step MB",
            "weight buffer MB", "autograd ms/it", "reverse ms/it", "time ×", "CPU time ×", "floor ×",
            "double-backward product: CPU time ×", "its floor ×"]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    by = {(r["width"], r["ipc"], r["steps"], r["provider"]): r for r in rows if r["mode"] == "iteration"}
    steps_ = {(r["width"], r["ipc"], r["provider"]): r["median_ms"] for r in rows if r["mode"] == "step-cpu"}
    for (w, ipc, s, mode), r in sorted(by.items()):
        if mode != "reverse" or s == 1:
            continue
        a, one = by.get((w, ipc, s, "autograd")), by.get((w, ipc, 1, "reverse"))
        b = by.get((w, ipc, s, "reverse-backward"))
        above = f"{r['peak_mem_mb'] - one['peak_mem_mb']:.1f}" if one else "–"
        free, full, fwd = (steps_.get((w, ipc, k)) for k in STEPS)
        floor = f"{(free + fwd) / full:.2f}" if free and full and fwd else "–"
        floor_b = f"{1 + free / full:.2f}" if free and full else "–"
        if a:
            cells = [f"{a['peak_mem_mb']:.1f}", f"{r['peak_mem_mb']:.1f}", f"{a['peak_mem_mb'] / r['peak_mem_mb']:.1f}×",
                     above, f"{r['buffer_mb']:.1f}", f"{a['median_ms']:.0f}", f"{r['median_ms']:.0f}",
                     f"{r['median_ms'] / a['median_ms']:.2f}", f"{r['cpu_ms'] / a['cpu_ms']:.2f}", floor,
                     f"{b['cpu_ms'] / a['cpu_ms']:.2f}" if b else "–", floor_b]
        else:
            why = next((f"not run (≈{gb:.1f} GB predicted)" for sw, si, ss, gb in skipped if (sw, si, ss) == (w, ipc, s)),
                       "–")
            cells = [why, f"{r['peak_mem_mb']:.1f}", "–", above, f"{r['buffer_mb']:.1f}", "–", f"{r['median_ms']:.0f}",
                     "–", "–", floor, "–", floor_b]
        out.append(f"| {w} | {ipc} | {s} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def _predict_mb(rows: list[dict], width: int, ipc: int, steps: int) -> float | None:
    """Linear in ``syn_steps`` through the two largest measured autograd runs of this width and IPC."""
    pts = sorted((r["steps"], r["peak_mem_mb"]) for r in rows
                 if (r["width"], r["ipc"], r["provider"], r["mode"]) == (width, ipc, "autograd", "iteration"))
    if len(pts) < 2:
        return None
    (s0, m0), (s1, m1) = pts[-2:]
    return m1 + (m1 - m0) / (s1 - s0) * (steps - s1)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", nargs="*", type=int, default=[10, 20, 50, 80])
    ap.add_argument("--widths", nargs="*", type=int, default=[32, 128])
    ap.add_argument("--ipc", nargs="*", type=int, default=[1, 10])
    ap.add_argument("--iterations", type=int, default=3,
                    help="timed outer iterations per mode (on CPU 1 where syn_steps x IPC > 100)")
    ap.add_argument("--max-gb", type=float, default=9.0, help="skip autograd runs predicted to need more")
    ap.add_argument("--no-backward-product", action="store_true",
                    help="skip the reverse pass with the double-backward product (reverse-backward)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    args = ap.parse_args(argv)
    for k in ("steps", "widths", "ipc"):
        if not getattr(args, k) or any(v < 1 for v in getattr(args, k)):
            raise SystemExit(f"--{k} must list positive ints, got {getattr(args, k)}")

    from ddkernels.distill import data
    from ddkernels.distill.device import resolve as resolve_device

    device = resolve_device(args.device, what="--device")
    if device.type == "cpu":
        torch.set_num_threads(1)
    ds = data.load_dataset(DATASET)
    rows, skipped = [], []
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory() as root:
        for width in args.widths:
            experts = make_experts(root, width, device)
            for ipc in args.ipc:
                d1 = make(ds, experts, width, ipc, 1, "reverse", device)
                for provider, ms in zip(STEPS, step_floor(d1, device)):
                    rows.append(dict(op="unroll", case=f"MTT FMNIST w{width} IPC {ipc} one student step", provider=provider,
                                     mode="step-cpu", median_ms=ms, width=width, ipc=ipc, steps=1))
                    print(f"w{width} IPC {ipc} {provider}: {ms:.1f} ms CPU", flush=True)
                del d1
                for steps in [1, *sorted(args.steps)]:
                    modes = ["autograd", "reverse", "reverse-backward"] if steps > 1 else ["reverse"]
                    if args.no_backward_product:
                        modes = [m for m in modes if m != "reverse-backward"]
                    gb = (_predict_mb(rows, width, ipc, steps) or 0) / 1024
                    if "autograd" in modes and gb > args.max_gb:
                        skipped.append((width, ipc, steps, gb))
                        modes.remove("autograd")
                        print(f"w{width} IPC {ipc} steps {steps} autograd: skipped (≈{gb:.1f} GB predicted)", flush=True)
                    n = args.iterations if device.type != "cpu" or steps * ipc <= 100 else 1
                    dists = {m: make(ds, experts, width, ipc, steps, m, device) for m in modes}
                    for mode, r in measure(dists, n, device).items():
                        buffer_mb = steps * r["params"] * 4 / 2**20
                        r.update(op="unroll", case=f"MTT FMNIST w{width} IPC {ipc} syn_steps {steps}", provider=mode,
                                 mode="iteration", bytes=int(steps * r["params"] * 4), buffer_mb=buffer_mb,
                                 width=width, ipc=ipc, steps=steps)
                        rows.append(r)
                        # The same iterations' CPU time (this thread's), a row of its own: on a shared
                        # machine it is the steadier measure of the work.
                        rows.append(dict(r, mode="iteration-cpu", median_ms=r["cpu_ms"], iqr_ms=float("nan")))
                        print(f"w{width} IPC {ipc} steps {steps} {mode}: {r['peak_mem_mb']:.1f} MB peak, "
                              f"{r['median_ms']:.0f} ms/it wall, {r['cpu_ms']:.0f} ms/it CPU ({n} timed; "
                              f"{time.perf_counter() - t_start:.0f} s so far)", flush=True)
                    del dists
    os.makedirs(args.out, exist_ok=True)
    harness.append_csv(os.path.join(args.out, "results.csv"), rows, bandwidth_gbs=float("nan"))
    table = (f"Measured on {harness.hardware()}, torch {torch.__version__}, git {harness.git_sha()}; MTT `quick` "
             f"preset on Fashion-MNIST (all IPC·10 images per student step, per-sample DSA), one throwaway expert "
             f"per width. Peak = memory allocated during one outer iteration above what was live before (CPU: "
             f"the profiler's allocation records); time = median wall time of {args.iterations} outer iterations "
             f"({'1 where syn_steps × IPC > 100' if device.type == 'cpu' else 'all'}) after one warm-up, the "
             f"modes alternating. reverse: hp unroll_product forward (the default); reverse-backward: "
             f"unroll_product backward (the double backward). memory ÷ = autograd ÷ reverse; reverse − 1-step = "
             f"reverse's peak above its own 1-step unroll's; weight buffer = syn_steps × P × 4 bytes; "
             f"time × = reverse ÷ autograd "
             f"(wall); CPU time × = the same iterations' CPU time ratio (steadier on a shared machine); floor × = "
             f"(CPU time of one step's graph-free gradient + of one step's forward-mode product) ÷ (of one step "
             f"with its graph and its double-backward product, autograd's step): what the reverse costs when a "
             f"step costs autograd as much inside the unroll as alone (with many steps autograd's large graph "
             f"makes its steps dearer and CPU time × falls below it); double-backward product: reverse-backward's "
             f"CPU time ÷ autograd's, and its floor × = 1 + graph-free ÷ autograd's step. "
             f"Whole grid: {time.perf_counter() - t_start:.0f} s.\n\n" + markdown(rows, skipped))
    complete = all(getattr(args, k) == ap.get_default(k) for k in ("steps", "widths", "ipc", "device"))
    path = harness.write_table(args.out, f"latest-unroll-{device.type}", table, complete)
    print("\n" + table + f"\nwritten to {path}")


if __name__ == "__main__":
    main()
