"""Compare the runs of an experiment: a summary table and plots, mean ± std over seeds.

``fedsim compare <experiment_dir>`` reads every run directory below ``experiment_dir``
(``<strategy>/[<overrides>/]seed-<S>/``, as a ``fedsim run -m`` sweep writes them) and
writes, to ``<experiment_dir>/compare/`` unless ``--out`` says otherwise:

- ``summary.md`` and ``summary.csv``: one row per run group (strategy and swept
  overrides) with the final and best value of the metric, the rounds and the bytes needed
  to reach a target, and a few headline metrics, as mean ± std over seeds;
- ``<metric>_vs_round.png`` and ``<metric>_vs_bytes.png``: one line per group (the mean
  over its seeds) with a ±1 std band.

Per-round numbers come from ``metrics.jsonl``, or from the TensorBoard event files when a
run has no ``metrics.jsonl``.  A run whose ``run.json`` does not say ``complete`` is
*incomplete* (still running, failed, interrupted): it is listed as such and plotted up to
its last round, and the table uses it only for a group that has no complete run yet.
Plots are drawn on matplotlib's Agg canvas; no display is needed.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

from fedsim.errors import UserError
from fedsim.tracking import METRICS_FILE, STATUS_FILE

log = logging.getLogger(__name__)

#: Default output folder, inside the experiment directory.
COMPARE_DIR = "compare"
SEED_DIR = re.compile(r"^seed-(-?\d+)$")
EVENTS_PREFIX = "events.out.tfevents"
#: Which cumulative byte counters ``--bytes`` adds up.
BYTES_KEYS = {
    "total": ("comm/bytes_up_total", "comm/bytes_down_total"),
    "up": ("comm/bytes_up_total",),
    "down": ("comm/bytes_down_total",),
}
BYTES_WORDS = {"total": "up + down", "up": "uplink only", "down": "downlink only"}
#: Metrics reported (final value) next to the compared one, when the runs have them.
HEADLINE = ["eval/acc", "eval/global_acc", "train/loss"]
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
MB = 1e6


# --------------------------------------------------------------------------- reading


@dataclass
class Run:
    """One run directory and its per-round metrics, ascending by round."""

    path: Path
    group: str  # path from the experiment directory to the seed folder
    seed: int
    status: str  # run.json's status; "missing" without a run.json
    rows: list[dict[str, float]]
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        return self.status == "complete"

    @property
    def last_round(self) -> int:
        return int(self.rows[-1]["round"]) if self.rows else 0

    @property
    def planned_rounds(self) -> int | None:
        rounds = self.config.get("rounds")
        return int(rounds) if isinstance(rounds, int | float) else None

    def series(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        """Rounds that recorded ``key`` (finite values only) and the values."""
        pairs = [
            (r["round"], r[key])
            for r in self.rows
            if r.get(key) is not None and math.isfinite(r[key])
        ]
        rounds = np.array([p[0] for p in pairs], dtype=np.int64)
        return rounds, np.array([p[1] for p in pairs], dtype=np.float64)

    def bytes_at(self, mode: str) -> dict[int, float]:
        """Cumulative bytes (``--bytes`` mode) after every round; NaN without the counters."""
        keys = BYTES_KEYS[mode]
        return {
            int(r["round"]): float(sum(r[k] for k in keys))
            if all(r.get(k) is not None for k in keys)
            else math.nan
            for r in self.rows
        }


def find_run_dirs(root: Path) -> list[Path]:
    """Every ``seed-<S>`` folder below ``root`` holding metrics, events or a run.json."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        here = Path(dirpath)
        if SEED_DIR.match(here.name) and (
            METRICS_FILE in filenames
            or STATUS_FILE in filenames
            or any(f.startswith(EVENTS_PREFIX) for f in filenames)
        ):
            found.append(here)
            dirnames[:] = []
    return found


def _rows_from_jsonl(path: Path) -> list[dict[str, float]]:
    by_round: dict[int, dict[str, float]] = {}
    lines = path.read_text().splitlines()
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            if i == len(lines) - 1:  # a running run may be writing its last line
                break
            raise UserError(
                f"{path}:{i + 1}: not a JSON object (metrics.jsonl is corrupt)"
            ) from None
        clean = {k: float(v) for k, v in row.items() if isinstance(v, int | float)}
        by_round[int(row["round"])] = clean  # a repeated round (resume): the last one wins
    return [by_round[r] for r in sorted(by_round)]


def _rows_from_events(run_dir: Path) -> list[dict[str, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    by_round: dict[int, dict[str, float]] = {}
    for tag in acc.Tags()["scalars"]:
        if tag.startswith("hparams/"):  # final values repeated for the HPARAMS tab
            continue
        for event in acc.Scalars(tag):
            by_round.setdefault(int(event.step), {"round": float(event.step)})[tag] = float(
                event.value
            )
    return [by_round[r] for r in sorted(by_round)]


def read_run(run_dir: Path, root: Path) -> Run:
    """Read one run: status and config from run.json, rows from metrics.jsonl or events."""
    status, config = "missing", dict[str, Any]()
    status_file = run_dir / STATUS_FILE
    if status_file.exists():
        try:
            record = json.loads(status_file.read_text())
            status, config = str(record.get("status", "unknown")), record.get("config") or {}
        except ValueError:
            status = "unreadable"
    rows: list[dict[str, float]] = []
    if (run_dir / METRICS_FILE).exists():
        rows = _rows_from_jsonl(run_dir / METRICS_FILE)
    if not rows and any(p.name.startswith(EVENTS_PREFIX) for p in run_dir.iterdir()):
        rows = _rows_from_events(run_dir)
    rel = run_dir.relative_to(root).parent
    if rel == Path("."):  # ``root`` is itself a run directory
        rel = Path(run_dir.parent.name)
    match = SEED_DIR.match(run_dir.name)
    assert match is not None  # find_run_dirs only returns seed-<S> folders
    return Run(run_dir, rel.as_posix(), int(match.group(1)), status, rows, config)


def read_runs(root: Path) -> list[Run]:
    """All runs below ``root``; a :class:`UserError` when there is none."""
    if not root.is_dir():
        raise UserError(f"compare: {root} is not a directory")
    runs = [read_run(d, root) for d in find_run_dirs(root)]
    if not runs:
        raise UserError(
            f"compare: no runs under {root} (expected <strategy>/[<overrides>/]seed-<S>/ "
            "folders with metrics.jsonl or event files, as `fedsim run -m ... experiment=E` "
            "writes them to <output_dir>/E)"
        )
    return sorted(runs, key=lambda r: (r.group, r.seed))


# --------------------------------------------------------------------------- statistics


def higher_is_better(metric: str) -> bool:
    """Losses are minimised, everything else is maximised."""
    return "loss" not in metric.rsplit("/", 1)[-1]


def mean_std(values: Sequence[float]) -> tuple[float, float, int]:
    """Mean, sample std (ddof=1; NaN for fewer than two values) and count of finite values."""
    v = np.asarray([x for x in values if math.isfinite(x)], dtype=np.float64)
    if v.size == 0:
        return math.nan, math.nan, 0
    std = float(np.std(v, ddof=1)) if v.size >= 2 else math.nan
    return float(np.mean(v)), std, int(v.size)


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
        hit = np.flatnonzero(values >= target if up else values <= target)
        first = int(rounds[hit[0]]) if hit.size else None
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
    files: list[Path] = field(default_factory=list)

    @property
    def runs(self) -> list[Run]:
        return [r for g in self.groups for r in g.runs]


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
) -> Comparison:
    """Read the runs below ``root``, write the table and the plots, return the numbers.

    ``target`` defaults to 0.9 for accuracy metrics (names containing ``acc``); for other
    metrics without a target the to-target columns are left out.
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
    )
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


# --------------------------------------------------------------------------- writing


def _cell(mean: float, std: float, n: int, total: int, col: Column) -> str:
    if n == 0:
        return "—" + (f" (0/{total})" if col.reach and total else "")
    text = f"{mean / col.scale:.{col.digits}f}"
    if math.isfinite(std):
        text += f" ± {std / col.scale:.{col.digits}f}"
    if col.reach and n < total:
        text += f" ({n}/{total})"
    return text


def _runs_cell(group: Group) -> str:
    used = group.used
    text = str(len(used))
    if group.incomplete_only:
        return f"{text} incomplete"
    left = len(group.runs) - len(used)
    return text + (f" (+{left} incomplete)" if left else "")


def summary_markdown(c: Comparison) -> str:
    """The table with its definitions, the incomplete runs and a settings check."""
    show_overrides = any(g.overrides for g in c.groups)
    # groups of several experiments (``root`` above them) may share strategy and overrides
    unique = len({(g.strategy, g.overrides) for g in c.groups}) == len(c.groups)
    head = ["strategy", *(["overrides"] if show_overrides else []), "seeds"]
    head += [col.header for col in c.columns]
    lines = [
        f"# Comparison of `{c.root.name}`",
        "",
        f"{_n(len(c.runs), 'run')} in {_n(len(c.groups), 'group')} under `{c.root}`; "
        f"metric `{c.metric}` "
        f"({'higher' if higher_is_better(c.metric) else 'lower'} is better)"
        + (f", target {c.target:g}." if c.target is not None else "."),
        "",
        "| " + " | ".join(head) + " |",
        "|" + "|".join("---" for _ in head) + "|",
    ]
    for g in c.groups:
        n = len(g.used)
        label = g.strategy if unique else g.name
        row = [label, *([g.overrides or "—"] if show_overrides else []), _runs_cell(g)]
        row += [_cell(*c.cells[g.name][col.key], n, col) for col in c.columns]
        lines.append("| " + " | ".join(row) + " |")
    bytes_keys = " + ".join(f"`{k}`" for k in BYTES_KEYS[c.bytes_mode])
    best = "max" if higher_is_better(c.metric) else "min"
    lines += [
        "",
        "Notes:",
        "",
        "- Cells are mean ± std over seeds; std is the sample standard deviation "
        "(ddof=1), shown only with two or more seeds.",
        f"- **final**: the value at the last round that recorded `{c.metric}`; "
        f"**best**: the {best} over rounds.",
    ]
    if c.target is not None:
        op = "≥" if higher_is_better(c.metric) else "≤"
        lines.append(
            f"- **rounds to {op} {c.target:g}**: the first round at which `{c.metric}` "
            f"{op} {c.target:g}; **MB to {op} {c.target:g}**: the cumulative bytes sent "
            f"{BYTES_WORDS[c.bytes_mode]} ({bytes_keys}) after that round, in MB "
            "(10^6 bytes). — means no seed reached the target; (k/n) means k of n seeds "
            "did, and the mean is over those k."
        )
    lines += [
        f"- **MB total**: cumulative bytes {BYTES_WORDS[c.bytes_mode]} after the last round; "
        "**wall s**: wall-clock seconds of the run (`time/elapsed_s`).",
        "- A row uses the complete runs of its group; a group without a complete run yet "
        "uses its incomplete runs up to their last round (seeds column: *incomplete*).",
        "",
        "## Incomplete runs",
        "",
    ]
    if c.incomplete:
        for r in c.incomplete:
            lines.append(f"- `{r.group}/seed-{r.seed}`: {_progress(r)}")
    else:
        lines.append("None: every run is complete.")
    lines += ["", "## Settings", ""]
    if c.differing:
        lines.append(
            "Runs differ in settings other than strategy, seed and the swept keys; "
            "the rows are not a controlled comparison:"
        )
        lines += [""] + [f"- `{k}`: {', '.join(v)}" for k, v in c.differing.items()]
    else:
        lines.append(
            "All runs share the same settings except strategy, seed and the swept keys "
            "(checked on each run's `run.json`)."
        )
    lines += ["", "## Runs", "", "| group | seed | status | rounds | directory |"]
    lines.append("|---|---|---|---|---|")
    for r in c.runs:
        rounds = f"{r.last_round}" + (f"/{r.planned_rounds}" if r.planned_rounds else "")
        lines.append(f"| {r.group} | {r.seed} | {r.status} | {rounds} | `{r.path}` |")
    return "\n".join(lines) + "\n"


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _progress(run: Run) -> str:
    of = f" of {run.planned_rounds}" if run.planned_rounds else ""
    return f"{run.status}, {run.last_round}{of} rounds recorded"


def write_csv(c: Comparison, path: Path) -> None:
    """One row per group: raw numbers (bytes in bytes), ``<column>_mean/_std/_n``."""
    head = ["strategy", "overrides", "group", "runs_used", "runs_total", "incomplete_only"]
    head += ["metric", "target", "bytes"]
    for col in c.columns:
        head += [f"{col.key}_mean", f"{col.key}_std", f"{col.key}_n"]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(head)
        for g in c.groups:
            row: list[Any] = [
                g.strategy,
                g.overrides,
                g.name,
                len(g.used),
                len(g.runs),
                g.incomplete_only,
                c.metric,
                "" if c.target is None else c.target,
                c.bytes_mode,
            ]
            for col in c.columns:
                mean, std, n = c.cells[g.name][col.key]
                row += [
                    "" if math.isnan(mean) else repr(mean),
                    "" if math.isnan(std) else repr(std),
                    n,
                ]
            w.writerow(row)


def _band(runs: Sequence[Run], metric: str, bytes_mode: str) -> dict[str, np.ndarray]:
    """Per round: mean and std over the runs that recorded the metric, and mean bytes."""
    per_round: dict[int, list[tuple[float, float]]] = {}
    for r in runs:
        cum = r.bytes_at(bytes_mode)
        for rnd, value in zip(*r.series(metric), strict=True):
            per_round.setdefault(int(rnd), []).append((float(value), cum.get(int(rnd), math.nan)))
    rounds = sorted(per_round)
    stats = [
        (np.mean([v for v, _ in per_round[k]]), _std([v for v, _ in per_round[k]])) for k in rounds
    ]
    return {
        "round": np.array(rounds, dtype=np.float64),
        "bytes": np.array([np.mean([b for _, b in per_round[k]]) for k in rounds]),
        "mean": np.array([s[0] for s in stats]),
        "std": np.array([s[1] for s in stats]),
    }


def _std(values: list[float]) -> float:
    return float(np.std(values, ddof=1)) if len(values) >= 2 else 0.0


def plot(c: Comparison, x: str, path: Path) -> Path:
    """``metric`` vs round or vs cumulative bytes: a line per group, a ±1 std band."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.2), dpi=150, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    for g in c.groups:
        runs = [r for r in g.runs if r.rows]
        band = _band(runs, c.metric, c.bytes_mode)
        if not band["round"].size:
            continue
        xs = band["round"] if x == "round" else band["bytes"] / MB
        late = sum(not r.complete for r in runs)
        label = f"{g.name} ({len(runs)} seed{'s' if len(runs) != 1 else ''}"
        label += f", {late} incomplete)" if late else ")"
        (line,) = ax.plot(xs, band["mean"], marker="o" if xs.size < 25 else None, ms=3, label=label)
        ax.fill_between(
            xs,
            band["mean"] - band["std"],
            band["mean"] + band["std"],
            color=line.get_color(),
            alpha=0.2,
            linewidth=0,
        )
    if c.target is not None:
        ax.axhline(c.target, color="0.5", linestyle="--", linewidth=1, label=f"target {c.target:g}")
    ax.set_xlabel("round" if x == "round" else f"cumulative MB sent ({BYTES_WORDS[c.bytes_mode]})")
    ax.set_ylabel(c.metric)
    ax.set_title(f"{c.root.name}: {c.metric} (mean ± std over seeds)", fontsize="medium")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.savefig(path, format="png")
    return path


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
        "summary.csv) and plots of a metric vs round and vs cumulative bytes, mean ± std "
        "over seeds.",
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
    try:
        ns = parser.parse_args(list(args))
    except SystemExit as e:  # --help
        return int(e.code or 0)
    c = compare(ns.experiment_dir, ns.metric, ns.target, ns.bytes, ns.out)
    md = (c.files[0]).read_text()
    print(md.split("\nNotes:", 1)[0].rstrip())
    for r in c.incomplete:
        print(f"fedsim: incomplete run {r.group}/seed-{r.seed}: {_progress(r)}")
    for k, v in c.differing.items():
        print(f"fedsim: warning: runs differ in {k}: {', '.join(v)}")
    print(f"fedsim: wrote {', '.join(str(p) for p in c.files)}")
    return 0
