"""Run one trial of ``fedsim tune`` in a child process and stream its validation metric.

The child (:mod:`fedsim.analysis.tune_child`) is an ordinary fedsim run; this side watches its
``metrics.jsonl``, hands every round's validation value to ``report`` (which feeds the
pruner) and, when ``report`` says the trial is hopeless, sends the child SIGTERM: fedsim's
documented stop, which finishes the round under way, checkpoints and exits with 143.  The
round that decided is recorded; the rounds the run really ran are counted from its
directory, so a pruned trial's cost is never understated.

A complete run directory of the same configuration is reused without starting a process,
and an interrupted one with a checkpoint is resumed (``resume=true``): a tuning that was
killed continues every trial where its run stopped.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedsim.config import RunConfig
from fedsim.errors import UserError

POLL_S = 0.2  # how often the child's metrics.jsonl is read
# how a stopped child ends: fedsim's 128 + signal, or the signal itself before its
# handlers are installed (while it imports) or after they are gone (after its last round)
SIGNAL_EXITS = (128 + signal.SIGTERM, 128 + signal.SIGINT, -signal.SIGTERM, -signal.SIGINT)


class TrialFailed(UserError):
    """A trial's run stopped with an error of its own (its last stderr line says which)."""


@dataclass
class Outcome:
    """How one run of a trial ended."""

    status: str  # complete | pruned | interrupted
    values: dict[int, float] = field(default_factory=dict)  # round -> validation value
    rounds: int = 0  # rounds the run directory holds
    pruned_at: int | None = None  # the round whose value decided to prune
    run_dir: str = ""

    @property
    def final(self) -> float:
        """The value of the last evaluated round (NaN when there is none)."""
        return self.values[max(self.values)] if self.values else float("nan")


def validation_value(row: dict[str, Any], metric: str) -> float | None:
    """The validation value of ``metric`` in one round's row of ``metrics.jsonl``.

    A run with ``evaluation.validation_fraction > 0`` reports its clients' test metrics
    (``eval/acc``, on their holdouts) and, separately, the same metric on the selection
    split (``eval/val_acc``); tuning must select on the latter.  So ``eval/X`` is read as
    ``eval/val_X`` when the run reports it, and as ``eval/X`` otherwise (runs made before
    clients reported a separate validation metric measured ``eval/acc`` on the selection
    split itself).
    """
    group, _, name = metric.partition("/")
    value = row.get(f"{group}/val_{name}") if group == "eval" else None
    if value is None:
        value = row.get(metric)
    return float(value) if isinstance(value, int | float) else None


def _rows(run_dir: Path, since: float | None) -> list[dict[str, Any]]:
    """Complete rows of the run's ``metrics.jsonl``; only those of a run that started at
    or after ``since`` (an older run the child is about to replace does not count)."""
    from fedsim.tracking.callbacks import METRICS_FILE, STATUS_FILE

    if since is not None:
        try:
            started = float(json.loads((run_dir / STATUS_FILE).read_text()).get("started", 0))
        except (OSError, ValueError):
            return []
        if started < since - 1.0:
            return []
    try:
        text = (run_dir / METRICS_FILE).read_text(errors="replace")
    except OSError:
        return []
    rows = []
    for line in text.split("\n")[:-1]:  # the last piece has no newline yet: still written
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue
    return sorted(rows, key=lambda r: int(r.get("round", 0)))


def _wait_for_lock(run_dir: Path, stop: threading.Event) -> None:
    """A run of a killed tuning may still be finishing its round: wait until it let go."""
    from fedsim.runlock import live_holder

    while live_holder(run_dir) is not None and not stop.is_set():
        time.sleep(POLL_S)


def _last_line(stream: Any) -> str:
    stream.seek(0)
    lines = [ln.strip() for ln in stream.read().decode(errors="replace").splitlines()]
    lines = [ln for ln in lines if ln]
    errors = [ln for ln in lines if ln.startswith("fedsim: error:")]
    return (errors or lines or ["no output"])[-1].removeprefix("fedsim: error: ")


def run_trial_config(
    cfg: RunConfig,
    metric: str,
    report: Callable[[int, float], bool],
    stop: threading.Event,
    beat: Callable[[], None] = lambda: None,
) -> Outcome:
    """Run (or reuse, or resume) ``cfg`` in a child process.

    Parameters
    ----------
    cfg
        The trial's run configuration.
    metric
        The validation metric (see :func:`validation_value`).
    report
        Called with ``(round, value)`` for every evaluated round, in order; returns True
        when the trial should be pruned.
    stop
        Set when the tuning is stopping: the child is asked to stop at the end of its round.
    beat
        Called while the child runs (the trial's heartbeat in the study).
    """
    from fedsim.config.paths import run_dir_for
    from fedsim.engine.checkpoint import CHECKPOINT_FILE
    from fedsim.engine.conf import to_json
    from fedsim.tracking.callbacks import read_status
    from fedsim.tracking.runstate import UNFINISHED, checkpoint_round

    run_dir = run_dir_for(cfg)
    out = Outcome("complete", run_dir=str(run_dir))
    if read_status(run_dir) == "complete":  # the same configuration ran before: reuse it
        for row in _rows(run_dir, None):
            value = validation_value(row, metric)
            if value is not None:
                out.values[int(row["round"])] = value
                report(int(row["round"]), value)
        out.rounds = max((int(r["round"]) for r in _rows(run_dir, None)), default=0)
        return out
    _wait_for_lock(run_dir, stop)
    if stop.is_set():
        return dataclasses.replace(out, status="interrupted")
    state = read_status(run_dir)
    if state in UNFINISHED and checkpoint_round(run_dir / CHECKPOINT_FILE) is not None:
        cfg = dataclasses.replace(cfg, resume=True)  # continue where the killed run stopped
    env = {**os.environ, "FEDSIM_TUNE_PARENT": str(os.getpid())}
    with tempfile.TemporaryFile() as err:
        launched = time.time()
        child = subprocess.Popen(
            [sys.executable, "-m", "fedsim.analysis.tune_child"],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=err,
            env=env,
        )
        assert child.stdin is not None
        child.stdin.write(to_json(cfg).encode())
        child.stdin.close()
        signalled = False
        seen: set[int] = set()
        while True:
            rc = child.poll()
            for row in _rows(run_dir, launched):
                rnd = int(row["round"])
                value = validation_value(row, metric)
                if rnd in seen or value is None:
                    continue
                seen.add(rnd)
                out.values[rnd] = value
                if report(rnd, value) and rnd < cfg.rounds and not signalled:
                    out.pruned_at = rnd
                    child.send_signal(signal.SIGTERM)
                    signalled = True
            if rc is not None:
                break
            if stop.is_set() and not signalled:
                child.send_signal(signal.SIGTERM)
                signalled = True
            beat()
            time.sleep(POLL_S)
        out.rounds = max((int(r["round"]) for r in _rows(run_dir, launched)), default=0)
        if read_status(run_dir) == "complete":  # also when the stop came after its last round
            return dataclasses.replace(out, pruned_at=None)
        if signalled and out.pruned_at is not None:
            return dataclasses.replace(out, status="pruned")
        if signalled or rc in SIGNAL_EXITS:  # the tuning stops, or a Ctrl-C reached the child
            return dataclasses.replace(out, status="interrupted")
        raise TrialFailed(f"{run_dir}: {_last_line(err)} (exit status {rc})")
