"""Run directories of an experiment: find them, read their status, config and rounds.

A run directory is a ``seed-<S>`` folder (``<strategy>/[<overrides>/]seed-<S>/``, as a
sweep writes it, whichever Hydra launcher ran the jobs) holding ``run.json``,
``metrics.jsonl`` or TensorBoard event files.  Per-round numbers come from
``metrics.jsonl``, or from the event files when a run has no ``metrics.jsonl``.  A run
whose ``run.json`` does not say ``complete`` is *incomplete* (still running, failed,
interrupted).
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fedsim.errors import UserError
from fedsim.tracking.callbacks import METRICS_FILE, STATUS_FILE

SEED_DIR = re.compile(r"^seed-(-?\d+)$")
EVENTS_PREFIX = "events.out.tfevents"
#: Which cumulative byte counters ``--bytes`` adds up.
BYTES_KEYS = {
    "total": ("comm/bytes_up_total", "comm/bytes_down_total"),
    "up": ("comm/bytes_up_total",),
    "down": ("comm/bytes_down_total",),
}
BYTES_WORDS = {"total": "up + down", "up": "uplink only", "down": "downlink only"}


def wall_seconds(rows: list[dict[str, float]]) -> float:
    """A run's wall seconds over the processes that wrote its rounds.

    ``time/elapsed_s`` counts on across ``fedsim resume``, but runs resumed by older
    versions restarted it at zero.  Within one process a round ends at least
    ``time/round_s`` after the previous one did, so a row that ends sooner (or a drop)
    starts a new process, and the earlier process's last value is added."""
    total = prev = 0.0
    for row in rows:
        if row.get("time/elapsed_s") is None:
            continue
        now = float(row["time/elapsed_s"])
        if now - float(row.get("time/round_s") or 0.0) < prev - 1e-6:
            total += prev
        prev = now
    return total + prev


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
