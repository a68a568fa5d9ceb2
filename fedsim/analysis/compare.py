"""Compare the runs of an experiment: a summary table, paired tests and plots over seeds.

``fedsim compare <experiment_dir>`` reads every run directory below ``experiment_dir``
(``<strategy>/[<overrides>/]seed-<S>/``, as a ``fedsim run -m`` sweep writes them with
any Hydra launcher, or ``fedsim tune`` writes its final runs) and writes, to
``<experiment_dir>/compare/`` unless ``--out`` says otherwise:

- ``summary.md`` and ``summary.csv``: one row per run group (strategy and swept
  overrides) with the final and best value of the metric, the rounds and the bytes needed
  to reach a target, and a few headline metrics, as mean ± std over seeds, the 95%
  Student-t confidence interval of the final metric, and a paired t-test and Wilcoxon
  signed-rank test of every group against a baseline (``--baseline``) on the seeds both
  ran (:mod:`fedsim.analysis.stats`, :mod:`fedsim.analysis.tables`);
- ``<metric>_vs_round.png`` and ``<metric>_vs_bytes.png``: one line per group (the mean
  over its seeds) with its 95% confidence band (:mod:`fedsim.analysis.plots`).

Runs are read by :mod:`fedsim.analysis.rundirs`, grouped, paired and checked for
identical settings by :mod:`fedsim.analysis.comparison`.  An incomplete run is listed as such and
plotted up to its last round, and the table uses it only for a group that has no
complete run yet; the paired tests use complete runs only.
"""

from __future__ import annotations

import argparse
import logging
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from fedsim.analysis.comparison import (
    DEFAULT_BASELINE,
    Column,
    Comparison,
    Group,
    differing_settings,
    paired_against,
    resolve_baseline,
    run_values,
)
from fedsim.analysis.plots import MB, plot
from fedsim.analysis.rundirs import BYTES_KEYS, Run, find_run_dirs, read_run, read_runs
from fedsim.analysis.stats import higher_is_better, mean_std
from fedsim.analysis.tables import progress, summary_markdown, write_csv
from fedsim.errors import UserError

__all__ = [
    "Run",
    "compare",
    "find_run_dirs",
    "higher_is_better",
    "mean_std",
    "read_run",
    "read_runs",
    "safe_name",
]

log = logging.getLogger(__name__)

#: Default output folder, inside the experiment directory.
COMPARE_DIR = "compare"
#: Metrics reported (final value) next to the compared one, when the runs have them.
HEADLINE = [
    "eval/acc",
    "eval/acc_p10",  # the spread across clients FL papers report beside the mean
    "eval/acc_min",
    "eval/acc_at_best_val",  # with evaluation.validation_fraction: model selection
    "eval/global_acc",
    "train/loss",
]


def compare(
    root: Path,
    metric: str = "eval/acc",
    target: float | None = None,
    bytes_mode: str = "total",
    out: Path | None = None,
    baseline: str | None = None,
) -> Comparison:
    """Read the runs below ``root``, write the table and the plots, return the numbers.

    ``target`` defaults to 0.9 for accuracy metrics (names containing ``acc``); for other
    metrics without a target the to-target columns are left out.  ``baseline`` (a
    strategy or a group path; default ``fedavg`` if exactly one group runs it) is the
    reference of the paired tests.
    """
    if bytes_mode not in BYTES_KEYS:
        raise UserError(f"compare: --bytes {bytes_mode!r} (allowed: {', '.join(BYTES_KEYS)})")
    runs = read_runs(root)
    available = sorted({k for r in runs for row in r.rows for k in row} - {"round"})
    if metric not in available:
        shown = [k for k in available if "_client/" not in k]
        raise UserError(
            f"compare: --metric {metric!r} is in no run under {root} "
            f"(available: {', '.join(shown) or 'none, the runs have no rounds yet'})"
        )
    if target is None and "acc" in metric:
        target = 0.9
    by_name: dict[str, list[Run]] = {}
    for r in runs:
        by_name.setdefault(r.group, []).append(r)
    groups = [Group(name, members) for name, members in sorted(by_name.items())]
    others = [m for m in HEADLINE if m != metric and m in available]
    columns = _columns(metric, target, others)
    cells = {
        g.name: _aggregate([run_values(r, metric, target, bytes_mode, others) for r in g.used])
        for g in groups
    }
    result = Comparison(
        root=root,
        metric=metric,
        target=target,
        bytes_mode=bytes_mode,
        groups=groups,
        columns=columns,
        cells=cells,
        incomplete=[r for r in runs if not r.complete],
        differing=differing_settings(runs),
        baseline=resolve_baseline(groups, baseline),
    )
    if result.baseline is not None:
        base = next(g for g in groups if g.name == result.baseline)
        result.tests = {
            g.name: paired_against(g, base, metric, result.unpaired)
            for g in groups
            if g is not base
        }
    out_dir = out if out is not None else root / COMPARE_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "summary.md").write_text(summary_markdown(result))
    write_csv(result, out_dir / "summary.csv")
    stem = safe_name(metric)
    plot(result, "round", out_dir / f"{stem}_vs_round.png")
    plot(result, "bytes", out_dir / f"{stem}_vs_bytes.png")
    result.files = [
        out_dir / "summary.md",
        out_dir / "summary.csv",
        out_dir / f"{stem}_vs_round.png",
        out_dir / f"{stem}_vs_bytes.png",
    ]
    return result


def _columns(metric: str, target: float | None, others: Sequence[str]) -> list[Column]:
    best = "best" if higher_is_better(metric) else "best (min)"
    cols = [
        Column(f"{metric}_final", f"{metric} final", 4),
        Column(f"{metric}_best", f"{metric} {best}", 4),
    ]
    if target is not None:
        op = "≥" if higher_is_better(metric) else "≤"
        cols += [
            Column("rounds_to_target", f"rounds to {op} {target:g}", 1, reach=True),
            Column("bytes_to_target", f"MB to {op} {target:g}", 1, scale=MB, reach=True),
        ]
    cols += [Column(f"{m}_final", f"{m} final", 4) for m in others]
    cols += [Column("bytes_total", "MB total", 1, scale=MB), Column("wall_s", "wall s", 1)]
    return cols


def _aggregate(per_run: list[dict[str, float]]) -> dict[str, tuple[float, float, int]]:
    keys = {k for row in per_run for k in row}
    return {k: mean_std([row.get(k, math.nan) for row in per_run]) for k in keys}


def safe_name(metric: str) -> str:
    """A metric name usable as a file name: ``eval/acc`` -> ``eval_acc``."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", metric).strip("_") or "metric"


# --------------------------------------------------------------------------- command line


class _Parser(argparse.ArgumentParser):
    """argparse that raises a one-line :class:`UserError` instead of printing usage."""

    def error(self, message: str) -> NoReturn:
        raise UserError(f"compare: {message} (see fedsim compare --help)")


def main(args: Sequence[str]) -> int:
    """``fedsim compare <experiment_dir> [--metric M] [--target T] [--bytes B] [--out DIR]``."""
    parser = _Parser(
        prog="fedsim compare",
        description="Compare the runs of an experiment directory: a table (summary.md, "
        "summary.csv) and plots of a metric vs round and vs cumulative bytes: mean ± std, "
        "95% Student-t intervals over seeds, paired tests against a baseline.",
    )
    parser.add_argument("experiment_dir", type=Path, help="e.g. runs/<experiment>")
    parser.add_argument("--metric", default="eval/acc", help="metric to compare (eval/acc)")
    parser.add_argument(
        "--target",
        type=float,
        default=None,
        help="target for rounds/bytes-to-target (default 0.9 for accuracy metrics)",
    )
    parser.add_argument(
        "--bytes",
        choices=sorted(BYTES_KEYS),
        default="total",
        help="which bytes count: total = up + down (default), up, down",
    )
    parser.add_argument("--out", type=Path, default=None, help="output folder (<dir>/compare)")
    parser.add_argument(
        "--baseline",
        default=None,
        help="strategy (or group path) the paired tests compare against "
        f"(default: {DEFAULT_BASELINE} when exactly one group runs it)",
    )
    try:
        ns = parser.parse_args(list(args))
    except SystemExit as e:  # --help
        return int(e.code or 0)
    c = compare(ns.experiment_dir, ns.metric, ns.target, ns.bytes, ns.out, ns.baseline)
    md = (c.files[0]).read_text()
    print(md.split("\nNotes:", 1)[0].rstrip())
    for r in c.incomplete:
        print(f"fedsim: incomplete run {r.group}/seed-{r.seed}: {progress(r)}")
    for k, v in c.differing.items():
        print(f"fedsim: warning: runs differ in {k}: {', '.join(v)}")
    print(f"fedsim: wrote {', '.join(str(p) for p in c.files)}")
    return 0
