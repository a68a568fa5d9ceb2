"""What a comparison is made of: its columns, its groups of runs, and how they are paired.

:func:`fedsim.analysis.compare.compare` reads run directories and writes files;
this module holds the values it computes with and hands to the writers
(:mod:`fedsim.analysis.tables`, :mod:`fedsim.analysis.plots`): a :class:`Column` of the
summary, one run's numbers for every column (:func:`run_values`), a :class:`Group` of
runs over seeds, the :class:`Comparison` itself, the choice of the baseline
(:func:`resolve_baseline`), the seed-by-seed pairing of the paired tests
(:func:`paired_against`) and the check that the runs were made under the same settings
(:func:`differing_settings`).  It touches no file but a run's ``partition.txt``, so the
writers can depend on it without depending on the command that drives them.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedsim.analysis.rundirs import Run, wall_seconds
from fedsim.analysis.stats import PairedTest, higher_is_better, paired_test
from fedsim.errors import UserError

#: The baseline of the paired tests when ``--baseline`` is not given (if one group has it).
DEFAULT_BASELINE = "fedavg"
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
    ``bytes_total`` the cumulative bytes after the last round and ``wall_s`` the run's
    ``time/elapsed_s`` over all its processes (:func:`wall_seconds`).
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
    out["wall_s"] = wall_seconds(run.rows) if elapsed.size else nan
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
