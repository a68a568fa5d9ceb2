"""Plots of a comparison: a metric vs round and vs cumulative bytes, one line per group.

Each line is the mean over the group's seeds at every round, with its 95% Student-t
confidence interval as a band (no band for a single seed).  Drawn on matplotlib's Agg
canvas (no display needed; ``pyplot`` is never imported).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from fedsim.analysis.rundirs import BYTES_WORDS, Run
from fedsim.analysis.stats import LEVEL, mean_std, t_halfwidth

if TYPE_CHECKING:
    from fedsim.analysis.comparison import Comparison

MB = 1e6


def band(runs: Sequence[Run], metric: str, bytes_mode: str) -> dict[str, np.ndarray]:
    """Per round: mean, 95% CI half-width (0 for one run) and count over the runs that
    recorded the metric, and their mean cumulative bytes."""
    per_round: dict[int, list[tuple[float, float]]] = {}
    for r in runs:
        cum = r.bytes_at(bytes_mode)
        for rnd, value in zip(*r.series(metric), strict=True):
            per_round.setdefault(int(rnd), []).append((float(value), cum.get(int(rnd), math.nan)))
    rounds = sorted(per_round)
    stats = [mean_std([v for v, _ in per_round[k]]) for k in rounds]
    half = [t_halfwidth(std, n) for _, std, n in stats]
    return {
        "round": np.array(rounds, dtype=np.float64),
        "bytes": np.array([np.mean([b for _, b in per_round[k]]) for k in rounds]),
        "mean": np.array([s[0] for s in stats]),
        "half": np.array([h if math.isfinite(h) else 0.0 for h in half]),
        "n": np.array([s[2] for s in stats]),
    }


def plot(c: Comparison, x: str, path: Path) -> Path:
    """``metric`` vs round or vs cumulative bytes: a line per group, a 95% CI band."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.2), dpi=150, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    for g in c.groups:
        runs = [r for r in g.runs if r.rows]
        b = band(runs, c.metric, c.bytes_mode)
        if not b["round"].size:
            continue
        xs = b["round"] if x == "round" else b["bytes"] / MB
        late = sum(not r.complete for r in runs)
        label = f"{g.name} ({len(runs)} seed{'s' if len(runs) != 1 else ''}"
        label += f", {late} incomplete)" if late else ")"
        (line,) = ax.plot(xs, b["mean"], marker="o" if xs.size < 25 else None, ms=3, label=label)
        ax.fill_between(
            xs,
            b["mean"] - b["half"],
            b["mean"] + b["half"],
            color=line.get_color(),
            alpha=0.2,
            linewidth=0,
        )
    if c.target is not None:
        ax.axhline(c.target, color="0.5", linestyle="--", linewidth=1, label=f"target {c.target:g}")
    ax.set_xlabel("round" if x == "round" else f"cumulative MB sent ({BYTES_WORDS[c.bytes_mode]})")
    ax.set_ylabel(c.metric)
    title = f"{c.root.name}: {c.metric} (mean, {LEVEL:.0%} Student-t CI over seeds)"
    ax.set_title(title, fontsize="medium")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.savefig(path, format="png")
    return path
