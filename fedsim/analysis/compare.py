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

Runs are read by :mod:`fedsim.analysis.rundirs`.  An incomplete run is listed as such and
plotted up to its last round, and the table uses it only for a group that has no
complete run yet; the paired tests use complete runs only.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

from fedsim.analysis.plots import MB, plot
from fedsim.analysis.rundirs import BYTES_KEYS, Run, find_run_dirs, read_run, read_runs
from fedsim.analysis.stats import PairedTest, higher_is_better, mean_std, paired_test
from fedsim.analysis.tables import progress, summary_markdown, write_csv
from fedsim.errors import UserError

__all__ = [
    "Comparison",
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
#: The baseline of the paired tests when ``--baseline`` is not given (if one group has it).
DEFAULT_BASELINE = "fedavg"
#: Metrics reported (final value) next to the compared one, when the runs have them.
HEADLINE = [
    "eval/acc",
    "eval/acc_p10",  # the spread across clients FL papers report beside the mean
    "eval/acc_min",
    "eval/acc_at_best_val",  # with evaluation.validation_fraction: model selection
    "eval/global_acc",
    "train/loss",
]
#: Config keys that may differ between the runs of a fair comparison.
FREE_KEYS = {
    "seed",
    "tag",
    "experiment",
    "output_dir",
    "progress",
    "overwrite",
    "resume",
    "checkpoint_every",
}


@dataclass(frozen=True)
class Column:
    """A summary column: per-run values are aggregated to mean ± std over seeds."""

    key: str  # CSV name stem
    header: str  # markdown header
    digits: int  # decimals in the markdown table
    scale: float = 1.0  # the markdown shows value / scale
    reach: bool = False  # NaN means "never reached": the markdown says how many did


def run_values(
    run: Run, metric: str, target: float | None, bytes_mode: str, others: Sequence[str]
) -> dict[str, float]:
    """One run's numbers for every summary column (NaN where there is none).

    ``<metric>_final`` is the metric at the last round that recorded it, ``<metric>_best``
    its max (min for losses) over rounds; ``rounds_to_target`` the first round at which
    it reached ``target`` and ``bytes_to_target`` the cumulative bytes after that round;
    ``bytes_total`` the cumulative bytes after the last round and ``wall_s`` the last
    ``time/elapsed_s``.
    """
    nan = math.nan
    rounds, values = run.series(metric)
    up = higher_is_better(metric)
    out = {
        f"{metric}_final": float(values[-1]) if values.size else nan,
        f"{metric}_best": float(values.max() if up else values.min()) if values.size else nan,
    }
    cum = run.bytes_at(bytes_mode)
    if target is not None:
        hit = [i for i, v in enumerate(values) if (v >= target if up else v <= target)]
        first = int(rounds[hit[0]]) if hit else None
        out["rounds_to_target"] = float(first) if first is not None else nan
        out["bytes_to_target"] = cum.get(first, nan) if first is not None else nan
    for other in others:
        _, ov = run.series(other)
        out[f"{other}_final"] = float(ov[-1]) if ov.size else nan
    out["bytes_total"] = cum[run.last_round] if run.rows else nan
    _, elapsed = run.series("time/elapsed_s")
    out["wall_s"] = float(elapsed[-1]) if elapsed.size else nan
    return out


@dataclass
class Group:
    """The runs of one strategy/overrides combination, over seeds."""

    name: str
    runs: list[Run]

    @property
    def strategy(self) -> str:
        """``strategy.name`` of the runs' run.json; else the first folder of the group."""
        names = {
            str(r.config["strategy"].get("name"))
            for r in self.runs
            if isinstance(r.config.get("strategy"), dict) and r.config["strategy"].get("name")
        }
        return names.pop() if len(names) == 1 else self.name.split("/", 1)[0]

    @property
    def overrides(self) -> str:
        """The swept keys (run.json's ``tag``); else the folders between strategy and seed."""
        tags = {str(r.config["tag"]) for r in self.runs if "tag" in r.config}
        if len(tags) == 1:
            return tags.pop()
        return self.name.split("/", 1)[1] if "/" in self.name else ""

    @property
    def used(self) -> list[Run]:
        """Complete runs; the incomplete ones when no run is complete yet."""
        done = [r for r in self.runs if r.complete]
        return done or [r for r in self.runs if r.rows]

    @property
    def incomplete_only(self) -> bool:
        return not any(r.complete for r in self.runs)


@dataclass
class Comparison:
    """What ``fedsim compare`` computed and wrote."""

    root: Path
    metric: str
    target: float | None
    bytes_mode: str
    groups: list[Group]
    columns: list[Column]
    cells: dict[str, dict[str, tuple[float, float, int]]]  # group -> column -> mean, std, n
    incomplete: list[Run]
    differing: dict[str, list[str]]  # config key -> distinct values, beyond the swept keys
    baseline: str | None = None  # group name of the paired tests' baseline
    tests: dict[str, PairedTest] = field(default_factory=dict)  # group -> test vs baseline
    unpaired: list[str] = field(default_factory=list)  # why some seeds were not paired
    files: list[Path] = field(default_factory=list)

    @property
    def runs(self) -> list[Run]:
        return [r for g in self.groups for r in g.runs]

    def label(self, g: Group) -> str:
        """The strategy, or the group path when strategy and overrides do not tell the
        groups apart (groups of several experiments under one root)."""
        unique = len({(x.strategy, x.overrides) for x in self.groups}) == len(self.groups)
        return g.strategy if unique else g.name


def resolve_baseline(groups: Sequence[Group], baseline: str | None) -> str | None:
    """The group named by ``--baseline`` (a group path, or a strategy run by one group);
    without it, the one group running :data:`DEFAULT_BASELINE`, else none."""
    if baseline is None:
        default = [g for g in groups if g.strategy == DEFAULT_BASELINE]
        return default[0].name if len(default) == 1 and len(groups) > 1 else None
    exact = [g for g in groups if g.name == baseline]
    if exact:
        return exact[0].name
    matches = [g for g in groups if g.strategy == baseline]
    if len(matches) == 1:
        return matches[0].name
    if matches:
        raise UserError(
            f"compare: --baseline {baseline!r} matches {len(matches)} groups; name one of: "
            + ", ".join(g.name for g in matches)
        )
    allowed = sorted({g.strategy for g in groups} | {g.name for g in groups})
    raise UserError(f"compare: --baseline {baseline!r} is no group (allowed: {', '.join(allowed)})")


def _partition(run: Run) -> str | None:
    path = run.path / "partition.txt"
    return path.read_text() if path.exists() else None


def paired_against(group: Group, base: Group, metric: str, notes: list[str]) -> PairedTest:
    """The paired test of ``group`` against ``base`` on the final ``metric`` of the
    complete runs with the same seed (and the same partition, where both recorded it)."""
    mine = {r.seed: r for r in group.runs if r.complete}
    theirs = {r.seed: r for r in base.runs if r.complete}
    xs, ys = [], []
    for seed in sorted(set(mine) & set(theirs)):
        a, b = mine[seed], theirs[seed]
        pa, pb = _partition(a), _partition(b)
        if pa is not None and pb is not None and pa != pb:
            notes.append(
                f"`{group.name}` seed {seed} is not paired: its partition differs from "
                f"`{base.name}` seed {seed}'s"
            )
            continue
        xs.append(run_values(a, metric, None, "total", [])[f"{metric}_final"])
        ys.append(run_values(b, metric, None, "total", [])[f"{metric}_final"])
    return paired_test(xs, ys)


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = json.dumps(v, sort_keys=True)
    return out


def differing_settings(runs: Sequence[Run]) -> dict[str, list[str]]:
    """Config keys whose values differ between runs, other than seed, strategy and tag keys.

    A sweep changes only the swept keys, so for one this is empty; anything listed here
    means the rows were not run under identical settings.
    """
    swept: set[str] = set()
    for r in runs:
        tag = str(r.config.get("tag") or "")
        swept |= {p.partition("=")[0] for p in tag.split(",") if "=" in p}
    flat = [_flatten(r.config) for r in runs if r.config]
    out: dict[str, list[str]] = {}
    for k in sorted({k for f in flat for k in f}):
        top = k.split(".", 1)[0]
        if (
            top in FREE_KEYS
            or top == "strategy"
            or any(k == s or k.startswith(f"{s}.") for s in swept)
        ):
            continue
        values = {f.get(k, "(unset)") for f in flat}
        if len(values) > 1:
            out[k] = sorted(values)
    return out


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
