"""What a run directory holds, what a new run may do with it, and how a fault is recorded.

:func:`check_target` decides, before anything is written, whether a run may go into a
directory:

* nothing there (or nothing of a run) — a new run;
* a live lock — refused (:class:`fedsim.runlock.RunDirBusy`);
* a complete run — refused unless ``overwrite=true``;
* an unfinished run (``running`` with a stale lock, ``interrupted``, ``failed``) with a
  checkpoint — refused: ``fedsim resume`` continues it, ``overwrite=true`` replaces it;
  without a checkpoint there is nothing to resume and it is replaced;
* results (metrics, checkpoint, model) beside a missing or damaged ``run.json`` —
  refused unless ``overwrite=true``.

:func:`record_fault` turns an I/O fault during a run into one line and a true status.
"""

from __future__ import annotations

import errno
import json
import logging
import zipfile
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np

from fedsim.errors import CheckpointError, RunFailed, UserError
from fedsim.runlock import LockInfo, busy_error, live_holder
from fedsim.tracking.callbacks import METRICS_FILE, STATUS_FILE, read_status, write_json_inplace

log = logging.getLogger(__name__)

CHECKPOINT_FILE = "checkpoint.npz"  # fedsim.engine.checkpoint.CHECKPOINT_FILE, without torch
RESULT_FILES = (METRICS_FILE, CHECKPOINT_FILE, "final_model.pt")
UNFINISHED = ("running", "interrupted", "failed", "unknown")


class Target(Enum):
    NEW = "new"  # nothing of a run there: write in place
    REPLACE = "replace"  # a run to be replaced once the new one's first round completed
    RESUME = "resume"  # continue the run there


def checkpoint_round(path: Path) -> int | None:
    """The round a checkpoint holds (reads only its metadata); None if it is unusable."""
    try:
        with np.load(path, allow_pickle=False) as z:
            return int(json.loads(bytes(z["meta"]).decode())["round"])
    except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile):
        return None


def has_results(run_dir: Path) -> bool:
    return any(
        (run_dir / name).is_file() and (run_dir / name).stat().st_size > 0 for name in RESULT_FILES
    ) or any(p.name.startswith("events.out.tfevents") for p in run_dir.glob("events.*"))


def check_target(
    run_dir: Path, resume: bool, overwrite: bool, own: LockInfo | None = None
) -> Target:
    """What a run with these flags may do with ``run_dir``; a UserError when it may not.
    ``own`` is the caller's lock on it, if it holds one."""
    holder = live_holder(run_dir)
    if holder is not None and holder != own:
        raise busy_error(run_dir, holder)
    if resume:
        check_metrics(run_dir)
        return Target.RESUME
    if not run_dir.exists() or not any(run_dir.iterdir()):
        return Target.NEW
    if not run_dir.is_dir():
        raise UserError(f"output_dir: {run_dir} is not a directory")
    state = read_status(run_dir)
    if overwrite:
        return Target.REPLACE
    if state in (None, "unreadable"):
        if has_results(run_dir):
            what = "no run.json" if state is None else "a damaged run.json"
            raise UserError(
                f"output_dir: {run_dir} holds results but {what}; "
                "pass overwrite=true to replace them, or choose another output_dir"
            )
        return Target.REPLACE
    if state == "complete":
        raise UserError(
            f"output_dir: {run_dir} already holds a complete run; "
            "pass overwrite=true to replace it, or choose another output_dir/experiment"
        )
    done = checkpoint_round(run_dir / CHECKPOINT_FILE)
    if done is not None:
        word = "failed" if state == "failed" else "interrupted"
        raise UserError(f"run {word} at round {done}: fedsim resume {run_dir}, or overwrite=true")
    log.warning("replacing the %s run in %s (it has no checkpoint to resume)", state, run_dir)
    return Target.REPLACE


def check_metrics(run_dir: Path) -> None:
    """A resume can repair a torn *last* line of metrics.jsonl; any other line that is
    not JSON is refused here, before anything changes."""
    path = run_dir / METRICS_FILE
    if not path.exists():
        return
    lines = path.read_text(errors="replace").splitlines()
    for i, line in enumerate(lines[:-1]):
        if line.strip():
            try:
                json.loads(line)
            except ValueError:
                raise CheckpointError(
                    f"resume: {path}:{i + 1} is not a JSON line (the file is damaged); "
                    "start again with overwrite=true"
                ) from None


def describe_os_error(err: OSError) -> str:
    what = err.strerror or errno.errorcode.get(err.errno or 0, type(err).__name__)
    return f"{what}: {err.filename}" if err.filename else what


def record_fault(run_dir: Path, err: OSError) -> RunFailed:
    """Mark ``run_dir`` failed (reason, last good checkpoint), drop temporary files; the
    error to raise.  Writing the status may itself fail (a full disk): it is then written
    in place over the space the running status reserved."""
    reason = describe_os_error(err)
    done = checkpoint_round(run_dir / CHECKPOINT_FILE)
    for tmp in run_dir.glob(".*.tmp"):
        try:
            tmp.unlink(missing_ok=True)
        except OSError as e:
            log.error("could not remove %s: %s", tmp, e.strerror)
    status_note = ""
    try:
        record: dict[str, Any] = json.loads((run_dir / STATUS_FILE).read_text())
        record.update({"status": "failed", "reason": reason, "checkpoint_round": done})
        write_json_inplace(run_dir / STATUS_FILE, record)
    except (OSError, ValueError) as e:
        status_note = f"; run.json could not be updated ({type(e).__name__})"
        log.info("could not record the failure in %s: %s", run_dir / STATUS_FILE, e)
    else:
        log.info("run failed: %s (last good checkpoint: %s)", reason, done or "none")
    then = (
        f"last good checkpoint: round {done}; fix it, then fedsim resume {run_dir}"
        if done is not None
        else "no checkpoint was written; fix it, then run again"
    )
    return RunFailed(f"run failed: {reason} ({then}){status_note}")
