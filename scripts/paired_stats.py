"""Shared pieces of the resumable result scripts: run status and paired statistics."""

from __future__ import annotations

import json
import statistics
from pathlib import Path


def status(run_dir: Path) -> str | None:
    """The ``status`` of ``run_dir/run.json`` (None when absent or unreadable)."""
    try:
        return str(json.loads((run_dir / "run.json").read_text()).get("status"))
    except (OSError, ValueError):
        return None


def final_metrics(run_dir: Path) -> dict[str, float]:
    return dict(json.loads((run_dir / "run.json").read_text()).get("final", {}))


def paired(a: list[float], b: list[float]) -> dict[str, float]:
    """Mean of the paired differences ``b - a``, its 95 % t interval, the paired t-test's
    and the Wilcoxon signed-rank test's two-sided p (when there are >= 2 pairs), with
    ``wilcoxon_n``, the pairs it ranks (it drops zero differences)."""
    from scipy import stats

    d = [y - x for x, y in zip(a, b, strict=True)]
    out: dict[str, float] = {"n": float(len(d)), "mean_diff": statistics.fmean(d)}
    if len(d) >= 2:
        sd = statistics.stdev(d)
        half = float(stats.t.ppf(0.975, len(d) - 1)) * sd / len(d) ** 0.5
        out.update(ci_low=out["mean_diff"] - half, ci_high=out["mean_diff"] + half)
        out["t_p"] = float(stats.ttest_rel(b, a).pvalue) if sd > 0 else float("nan")
        out["wilcoxon_n"] = float(sum(x != 0 for x in d))
        out["wilcoxon_p"] = float(stats.wilcoxon(d).pvalue) if out["wilcoxon_n"] else float("nan")
    return out


def mean_ci(values: list[float]) -> tuple[float, float] | None:
    """The 95 % t interval of the mean of ``values`` (None below 2 values)."""
    from fedsim.analysis.stats import t_interval

    return t_interval(values) if len(values) >= 2 else None


def mean_sd(values: list[float]) -> str:
    """``mean ± sd`` in percent (sd with ddof = 1; 0 for one value)."""
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * statistics.fmean(values):.1f} ± {100 * sd:.1f}"


def wilcoxon_cell(stat: dict[str, float]) -> str:
    """The Wilcoxon p, with the number of pairs it ranked where zero differences dropped some."""
    p = f"{stat.get('wilcoxon_p', float('nan')):.3f}"
    ranked = stat.get("wilcoxon_n", stat["n"])
    return p if ranked == stat["n"] else f"{p} ({ranked:.0f} non-zero pairs)"


def diff_cell(stat: dict[str, float]) -> str:
    """``+d [lo, hi]`` in percentage points."""
    ci = (
        f"[{100 * stat['ci_low']:+.1f}, {100 * stat['ci_high']:+.1f}]"
        if "ci_low" in stat
        else "(1 pair)"
    )
    return f"{100 * stat['mean_diff']:+.1f} {ci}"
