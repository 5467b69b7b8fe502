"""``ddkernels report RUN...``: one Markdown table and one PNG plot over several run directories.

Each run contributes its distillation's evaluation (``metrics.json``) and every re-evaluation
(``evaluations/NNN.json``), one table row per (evaluation, network). The plot has one panel per
(dataset, network, protocol and its epochs): accuracy against IPC, one line per method (the newest evaluation of
each run), random real as a shaded band (the baselines' mean ± std, lowest to highest across the
runs at each IPC). Drawn with :mod:`ddkernels.distill.data.raster`, no plotting library.
"""
from __future__ import annotations

import json
import os

import numpy as np
import torch

from .data.imageio import write_png
from .data.raster import GLYPH_H, Canvas, text_width

_PALETTE = [(0.12, 0.47, 0.71), (0.84, 0.15, 0.16), (0.17, 0.63, 0.17), (1.0, 0.5, 0.05), (0.58, 0.4, 0.74),
            (0.55, 0.34, 0.29), (0.89, 0.47, 0.76), (0.09, 0.75, 0.81), (0.74, 0.74, 0.13), (0.2, 0.2, 0.2)]
_BAND = (0.55, 0.55, 0.55)


def per_arch(m: dict) -> dict:
    """``{network: results}`` of one metrics dict or evaluation record (ConvNet alone: the top level)."""
    if "architectures" in m:
        return m["architectures"]
    return {m.get("arch", "ConvNet"): m} if "accuracy" in m else {}


def collect(runs: list[str]) -> list[dict]:
    """One row per (run, evaluation, network): run, source, method, dataset, ipc, protocol, arch,
    accuracy / random real ``{mean, std, n}``, scores when measured. ValueError naming a folder that
    is not a run directory."""
    from .runs import evaluation_records

    rows = []
    for run in runs:
        mpath = os.path.join(run, "metrics.json")
        if not os.path.isdir(run) or not (os.path.isfile(mpath) or os.path.isdir(os.path.join(run, "evaluations"))):
            raise ValueError(f"RUN {run!r} is not a run directory (no metrics.json or evaluations/)")
        sources = []
        if os.path.isfile(mpath):
            with open(mpath) as f:
                m = json.load(f)
            sources.append(("metrics.json", {**m, "protocol": m.get("protocol", m.get("preset"))}))
        sources += [(r["record"], r) for r in evaluation_records(run)]
        for source, m in sources:
            for arch, r in per_arch(m).items():
                row = {"run": run, "source": source, "method": m.get("method"), "dataset": m.get("dataset"),
                       "ipc": m.get("ipc"), "protocol": m.get("protocol") or "?", "arch": arch,
                       "accuracy": r["accuracy"], "random_real": r.get("random_real"),
                       "eval_epochs": (r.get("eval_protocol") or {}).get("epochs"),
                       "width": (r.get("eval_protocol") or {}).get("width")}
                if "scores" in r:
                    row["lrs"], row["ars"] = r["scores"]["lrs"]["lrs"], r["scores"]["ars"]["ars"]
                rows.append(row)
    return rows


def _pm(a: dict | None) -> str:
    return "–" if not a else f"{a['mean']:.2f} ± {a['std']:.2f} (n={a['n']})"


def markdown(rows: list[dict]) -> str:
    """The rows as a Markdown table."""
    lines = ["| run | evaluation | method | dataset | IPC | protocol | network | accuracy % | random real % | "
             "LRS | ARS |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        proto = r["protocol"] + (f", {r['eval_epochs']} ep., width {r['width']}" if r["eval_epochs"] else "")
        score = (lambda s: f"{s['mean']:.3f} ± {s['std']:.3f}" if s else "–")
        lines.append(f"| {os.path.basename(os.path.normpath(r['run']))} | {r['source']} | {r['method']} | "
                     f"{r['dataset']} | {r['ipc']} | {proto} | {r['arch']} | {_pm(r['accuracy'])} | "
                     f"{_pm(r['random_real'])} | {score(r.get('lrs'))} | {score(r.get('ars'))} |")
    return "\n".join(lines) + "\n"


def _setting(r: dict) -> str:
    """The protocol's name and epochs: evaluations with another ``--epochs`` get a panel of their own."""
    return r["protocol"] + (f", {r['eval_epochs']} ep." if r["eval_epochs"] else "")


def _latest(rows: list[dict]) -> dict:
    """Per (run, arch, setting) the last row (records come after metrics.json, oldest first)."""
    out = {}
    for r in rows:
        out[(r["run"], r["arch"], _setting(r))] = r
    return out


def plot(rows: list[dict], *, panel_w: int = 380, panel_h: int = 300) -> np.ndarray:
    """The accuracy-vs-IPC figure as an ``(H, W, 3)`` array in [0, 1]."""
    latest = list(_latest(rows).values())
    panels = sorted({(r["dataset"], r["arch"], _setting(r)) for r in latest})
    methods = sorted({r["method"] for r in latest})
    colour = {m: _PALETTE[i % len(_PALETTE)] for i, m in enumerate(methods)}
    cols = min(3, max(1, len(panels)))
    nrows = -(-len(panels) // cols)
    legend_h = 40
    c = Canvas(nrows * panel_h + legend_h, cols * panel_w)
    for i, key in enumerate(panels):
        _panel(c, (i % cols) * panel_w, (i // cols) * panel_h, panel_w, panel_h, key,
               [r for r in latest if (r["dataset"], r["arch"], _setting(r)) == key], colour)
    x, y = 10, nrows * panel_h + 14
    for m in methods:
        c.rect(x, y, x + 14, y + 14, colour[m])
        c.text(x + 20, y + 4, m.upper(), scale=1)
        x += 30 + text_width(m, 1)
    c.rect(x, y, x + 14, y + 14, _BAND, alpha=0.35)
    c.text(x + 20, y + 4, "RANDOM REAL (MEAN ± STD)")
    return c.image


def _panel(c: Canvas, x0: int, y0: int, w: int, h: int, key, rows: list[dict], colour: dict) -> None:
    dataset, arch, protocol = key
    left, right, top, bottom = x0 + 48, x0 + w - 14, y0 + 30, y0 + h - 40
    c.text(x0 + w // 2, y0 + 8, f"{arch} - {dataset} - {protocol}", scale=1, anchor="center")
    ipcs = sorted({r["ipc"] for r in rows})
    values = [v for r in rows for v in (r["accuracy"]["mean"] - r["accuracy"]["std"],
                                        r["accuracy"]["mean"] + r["accuracy"]["std"])]
    values += [v for r in rows if r["random_real"] for v in (r["random_real"]["mean"] - r["random_real"]["std"],
                                                             r["random_real"]["mean"] + r["random_real"]["std"])]
    pad = max(0.05 * (max(values) - min(values)), 0.25)  # no point on the frame
    vmin, vmax = min(values) - pad, max(values) + pad
    step = _tick_step(vmax - vmin)
    lo, hi = step * np.floor(vmin / step), step * np.ceil(vmax / step)
    hi = hi if hi > lo else lo + step

    def px(ipc):  # IPCs evenly spaced, in order (1, 10, 50 read better than on a linear axis)
        k = ipcs.index(ipc)
        return left + (right - left) * ((k + 0.5) / len(ipcs))

    def py(v):
        return bottom - (bottom - top) * (v - lo) / (hi - lo)

    axis = (0.0, 0.0, 0.0)
    c.line(left, top, left, bottom, axis)
    c.line(left, bottom, right, bottom, axis)
    for t in np.arange(lo, hi + step / 2, step):
        y = py(t)
        c.line(left - 4, y, left, y, axis)
        c.line(left + 1, y, right, y, (0.9, 0.9, 0.9))
        c.text(left - 7, int(round(y)) - GLYPH_H // 2, f"{t:g}", anchor="right")
    for ipc in ipcs:
        c.line(px(ipc), bottom, px(ipc), bottom + 4, axis)
        c.text(int(round(px(ipc))), bottom + 8, str(ipc), anchor="center")
    c.text((left + right) // 2, bottom + 22, "IPC", anchor="center")
    c.text(x0 + 4, top - 14, "ACC %")
    base, means = {}, {}
    for r in rows:
        if r["random_real"]:
            rr = r["random_real"]
            a, b = base.get(r["ipc"], (np.inf, -np.inf))
            base[r["ipc"]] = (min(a, rr["mean"] - rr["std"]), max(b, rr["mean"] + rr["std"]))
            means.setdefault(r["ipc"], []).append(rr["mean"])
    if base:
        xs = sorted(base)
        mid = [py(sum(means[i]) / len(means[i])) for i in xs]
        # at least 5 px high, so a single network's baseline (std 0) still shows
        c.band([px(i) for i in xs], [max(py(base[i][0]), m + 2) for i, m in zip(xs, mid)],
               [min(py(base[i][1]), m - 2) for i, m in zip(xs, mid)], _BAND, alpha=0.35)
        for (xa, ya), (xb, yb) in zip(zip(xs, mid), list(zip(xs, mid))[1:]):
            c.line(px(xa), ya, px(xb), yb, _BAND)
    for m in sorted({r["method"] for r in rows}):
        pts = sorted((r["ipc"], r["accuracy"]["mean"], r["accuracy"]["std"]) for r in rows if r["method"] == m)
        for (ia, va, _), (ib, vb, _) in zip(pts, pts[1:]):
            c.line(px(ia), py(va), px(ib), py(vb), colour[m], thickness=2)
        for ipc, v, s in pts:
            c.line(px(ipc), py(v - s), px(ipc), py(v + s), colour[m])  # ± std whisker
            c.point(px(ipc), py(v), colour[m], radius=3)


def _tick_step(span: float) -> float:
    for step in (0.5, 1, 2, 5, 10, 20, 25, 50):
        if span / step <= 6:
            return float(step)
    return 100.0


def report(runs: list[str], out: str = "report") -> dict:
    """Write ``out.md`` (the table) and ``out.png`` (the plot); returns ``{"markdown", "png", "rows"}``."""
    if not runs:
        raise ValueError("report needs at least one RUN directory")
    rows = collect(runs)
    if not rows:
        raise ValueError(f"no evaluated results in {', '.join(runs)}: run `ddkernels evaluate RUN` first")
    text = markdown(rows)
    folder = os.path.dirname(os.path.abspath(out))
    os.makedirs(folder, exist_ok=True)
    with open(out + ".md", "w") as f:
        f.write(text)
    write_png(out + ".png", torch.from_numpy(plot(rows)).permute(2, 0, 1))
    return {"markdown": text, "png": out + ".png", "rows": rows}


__all__ = ["collect", "markdown", "per_arch", "plot", "report"]
