"""One run per run directory: a lock file, and a new run built beside the old one.

The lock is ``<parent>/.<name>.lock`` beside the run directory ``<parent>/<name>`` (so
that it survives the directory being replaced).  It is created with
``O_CREAT | O_EXCL`` — the one file-system operation that exactly one of several racing
processes wins — before anything of the run is written, and holds the PID, the host, the
start time and the kernel's start time of that process (to tell a reused PID).  A lock
whose process is gone on this host is *stale*: that run was killed, and its directory is
an interrupted run.  A lock taken on another host cannot be checked and counts as live.

A run that replaces a directory (``overwrite=true``, or an unfinished run without a
checkpoint) is written to ``<parent>/.<name>.new-<pid>`` first; after its first round
:func:`promote` renames the old directory away, renames the new one into place and
leaves a symbolic link at the staging path, so that files the run opens by path later
land in the final directory.  If the new run fails or is stopped before that, the old
directory was never touched.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from fedsim.errors import RunFailed, UserError

log = logging.getLogger(__name__)

BREAK_GRACE_S = 30.0  # a lock file still empty (being written) or a breaker older is stale
WRITE_WAIT_TRIES = 100  # x 20 ms: how long a reader waits for a lock being written


@dataclass(frozen=True)
class LockInfo:
    """Who holds a run directory."""

    pid: int
    host: str
    started: float
    proc_start: str = ""  # field 22 of /proc/<pid>/stat: tells a reused PID

    def describe(self) -> str:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.started))
        return f"PID {self.pid} on host {self.host} (started {when})"


class RunDirBusy(UserError):
    """Another live process holds the run directory."""


def lock_path(run_dir: Path) -> Path:
    return run_dir.parent / f".{run_dir.name}.lock"


def _proc_start(pid: int) -> str:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    fields = stat.rsplit(")", 1)[-1].split()
    return fields[19] if len(fields) > 19 else ""


def read_lock(path: Path) -> LockInfo | None:
    """The lock's holder; None when there is no lock, or it is empty or unreadable."""
    try:
        data = json.loads(path.read_text())
        return LockInfo(
            int(data["pid"]), str(data["host"]), float(data["started"]), str(data["proc_start"])
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def is_live(info: LockInfo) -> bool:
    """Whether the holder may still run (always True for another host)."""
    if info.host != socket.gethostname():
        return True
    try:
        os.kill(info.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it exists
        pass
    now = _proc_start(info.pid)
    return not (info.proc_start and now and now != info.proc_start)


def _read_settled(path: Path) -> LockInfo | None:
    """The lock's holder, waiting a moment for a lock being written (created empty by
    ``O_EXCL``, filled right after)."""
    for _ in range(WRITE_WAIT_TRIES):
        info = read_lock(path)
        if info is not None or not path.exists():
            return info
        time.sleep(0.02)
    return None


def live_holder(run_dir: Path) -> LockInfo | None:
    """The live process holding ``run_dir``, if any (reads only)."""
    path = lock_path(run_dir)
    info = _read_settled(path)
    if info is None:
        return _unreadable_holder(path)
    return info if is_live(info) else None


def _unreadable_holder(path: Path) -> LockInfo | None:
    """A lock file that exists but cannot be parsed yet (its writer is between creating
    and filling it) counts as live for a grace period."""
    try:
        age = time.time() - path.stat().st_mtime
    except OSError:
        return None
    return LockInfo(-1, "unknown", time.time() - age) if age < BREAK_GRACE_S else None


def busy_error(run_dir: Path, holder: LockInfo) -> RunDirBusy:
    return RunDirBusy(
        f"output_dir: {run_dir} is in use by the run of {holder.describe()}; "
        f"wait for it to end, or choose another output_dir (lock: {lock_path(run_dir)})"
    )


@dataclass
class RunLock:
    """A held lock; ``stale`` is the holder of a stale lock it replaced, if any."""

    path: Path
    info: LockInfo
    stale: LockInfo | None = None

    def release(self) -> None:
        """Remove the lock file if it is still this process's."""
        try:
            if read_lock(self.path) == self.info:
                self.path.unlink(missing_ok=True)
        except OSError as e:  # e.g. a directory that became read-only: the lock goes stale
            log.warning("could not remove the lock %s (%s)", self.path, e.strerror)


def acquire(run_dir: Path) -> RunLock:
    """Take the lock of ``run_dir`` (creating its parent); RunDirBusy if it is held."""
    path = lock_path(run_dir)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"output_dir: cannot create {path.parent} ({e.strerror})") from None
    me = LockInfo(os.getpid(), socket.gethostname(), time.time(), _proc_start(os.getpid()))
    stale: LockInfo | None = None
    for _ in range(200):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            info = _read_settled(path)
            holder = _unreadable_holder(path) if info is None else info
            if holder is not None and is_live(holder):
                raise busy_error(run_dir, holder) from None
            stale = info or stale
            _break_stale(path, info)
            continue
        except OSError as e:
            raise UserError(f"output_dir: cannot lock {run_dir} ({e.strerror})") from None
        try:
            os.write(fd, json.dumps(asdict(me)).encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        if stale is not None:
            log.info("took over the stale lock of %s on %s", stale.describe(), run_dir)
        return RunLock(path, me, stale)
    raise UserError(f"output_dir: could not take the lock {path} (it keeps changing)")


def _break_stale(path: Path, seen: LockInfo | None) -> None:
    """Remove a stale lock, unless another process replaced it meanwhile.

    Breaking is itself guarded by an ``O_EXCL`` file, so two processes that both found
    the same stale lock cannot remove a fresh lock the faster one just took.
    """
    breaker = path.with_name(path.name + ".break")
    try:
        fd = os.open(breaker, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        try:
            if time.time() - breaker.stat().st_mtime > BREAK_GRACE_S:
                breaker.unlink(missing_ok=True)
        except OSError:
            pass
        time.sleep(0.05)
        return
    try:
        if read_lock(path) == seen:
            path.unlink(missing_ok=True)
    finally:
        os.close(fd)
        breaker.unlink(missing_ok=True)


# ------------------------------------------------------------ replacing a run directory

_PENDING: dict[str, Path] = {}  # staging directory -> the run directory it replaces


def staging_dir(run_dir: Path) -> Path:
    return run_dir.parent / f".{run_dir.name}.new-{os.getpid()}"


def begin_staging(run_dir: Path) -> Path:
    """A fresh hidden directory beside ``run_dir`` for the run that will replace it."""
    staging = staging_dir(run_dir)
    _remove(staging)
    staging.mkdir(parents=True)
    _PENDING[os.path.abspath(staging)] = run_dir
    return staging


def promote(directory: Path) -> None:
    """Swap a staging directory into place (after the new run's first round).

    A no-op for a directory that is not staged.  The old run directory is renamed away,
    the staging directory renamed into place, a link left at the staging path for the
    files the run still opens by path, and the old directory deleted.
    """
    run_dir = _PENDING.pop(os.path.abspath(directory), None)
    if run_dir is None:
        return
    old = run_dir.parent / f".{run_dir.name}.old-{os.getpid()}"
    try:
        if run_dir.exists():
            os.rename(run_dir, old)
        os.rename(directory, run_dir)
        os.symlink(run_dir.name, directory)
    except OSError as e:
        raise RunFailed(
            f"output_dir: cannot put the new run in place of {run_dir} ({e.strerror}); "
            f"the previous run is kept in {old if old.exists() else run_dir}"
        ) from None
    log.info("first round complete: the new run replaced the previous one in %s", run_dir)
    _remove(old, warn=True)


def end_staging(staging: Path) -> bool:
    """After the run: drop the link of a promoted run (True) or delete a run that never
    reached its first round (False, the previous directory is untouched)."""
    _PENDING.pop(os.path.abspath(staging), None)
    if staging.is_symlink():
        staging.unlink()
        return True
    _remove(staging)
    return False


def clean_leftovers(run_dir: Path) -> None:
    """Leftovers of a process killed while replacing ``run_dir`` (call holding its lock):
    an old directory renamed away goes back when nothing took its place, else away;
    temporary files of writes that failed where they could not be deleted go."""
    for old in sorted(run_dir.parent.glob(f".{run_dir.name}.old-*")):
        if not run_dir.exists() and not run_dir.is_symlink():
            log.warning("restoring %s from %s (a replacement was cut short)", run_dir, old)
            os.rename(old, run_dir)
        else:
            _remove(old, warn=True)
    for new in sorted(run_dir.parent.glob(f".{run_dir.name}.new-*")):
        _remove(new, warn=True)
    for tmp in sorted(run_dir.glob(".*.tmp")):  # a write cut short that could not tidy up
        tmp.unlink()


def _remove(path: Path, warn: bool = False) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
        return
    if not path.exists():
        return
    failed: list[str] = []

    def note(func: object, name: str, info: tuple[type, BaseException, object]) -> None:
        exc = info[1]
        failed.append(f"{name}: {exc.strerror if isinstance(exc, OSError) else exc}")

    shutil.rmtree(path, onerror=note)
    if failed and warn:
        log.warning("could not delete %s (%s); delete it by hand", path, failed[0])
    elif failed:
        raise RunFailed(f"output_dir: cannot delete {path} ({failed[0]})")
