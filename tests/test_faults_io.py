"""Fault injection: racing runs, interrupted and damaged run directories, full disks,
read-only directories, torn files, signals to process groups.

Everything here is real: ``fedsim`` processes started with ``subprocess``, signals sent
to their process groups, a tmpfs mounted in a private mount namespace for a full disk
(``unshare``; skipped with the reason where the machine forbids it), a per-process file
size limit (``RLIMIT_FSIZE``).  Every process a test starts is stopped by its PID in a
``finally``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from fedsim.runlock import lock_path, read_lock

BASE = ["progress=false", "backbone.width=0.25", "runtime.threads=1", "scenario.num_clients=4"]
ENV = {
    **os.environ,
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "FLWR_TELEMETRY_ENABLED": "0",
}
BUSY = re.compile(r"in use by the run of PID (\d+) on host (\S+) \(started")


def _env(tmp_path: Path) -> dict[str, str]:
    return {**ENV, "FLWR_HOME": str(tmp_path / "flwr-home")}


def _cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "fedsim.cli", *args]


def _cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        _cmd(*args), capture_output=True, text=True, timeout=600, env=_env(tmp_path)
    )


def _start(tmp_path: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        _cmd(*args),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        env=_env(tmp_path),
    )


def _stop(proc: subprocess.Popen[str]) -> None:
    """Kill a process group this test started (by its PID) if it still runs."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)


def _rounds(run_dir: Path) -> list[int]:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(ValueError):  # a line being written
            out.append(int(json.loads(line)["round"]))
    return out


def _wait(cond, proc: subprocess.Popen[str] | None = None, limit: float = 300) -> None:  # type: ignore[no-untyped-def]
    end = time.monotonic() + limit
    while not cond():
        if proc is not None and proc.poll() is not None:
            err = proc.stderr.read() if proc.stderr else ""
            raise AssertionError(f"process ended early: {err}")
        if time.monotonic() > end:
            raise AssertionError(f"condition not met within {limit} s")
        time.sleep(0.02)


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every file below ``root``: (size, mtime in ns) — to show nothing was touched."""
    return {
        str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _errors(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if ln.startswith("fedsim: error:")]


def _status(run_dir: Path) -> dict:  # type: ignore[type-arg]
    return json.loads((run_dir / "run.json").read_text())


# ------------------------------------------------------------------------- the lock


def test_two_concurrent_runs_into_one_directory_one_runs_the_other_is_refused(
    tmp_path: Path,
) -> None:
    args = ["run", *BASE, "rounds=6", f"output_dir={tmp_path}"]
    procs = [_start(tmp_path, *args), _start(tmp_path, *args)]
    try:
        outs = [p.communicate(timeout=600) for p in procs]
    finally:
        for p in procs:
            _stop(p)
    codes = [p.returncode for p in procs]
    assert sorted(codes) == [0, 2], (codes, outs)
    winner, loser = (0, 1) if codes[0] == 0 else (1, 0)
    (line,) = _errors(outs[loser][1])  # one line, no traceback
    assert "Traceback" not in outs[loser][1]
    m = BUSY.search(line)
    assert m is not None, line
    assert int(m.group(1)) == procs[winner].pid and m.group(2) == socket.gethostname()
    run_dir = tmp_path / "digits_iid" / "fedavg" / "seed-0"
    assert _rounds(run_dir) == [1, 2, 3, 4, 5, 6]  # every round once
    assert len(list(run_dir.glob("events.out.tfevents*"))) == 1
    assert _status(run_dir)["status"] == "complete"
    assert not lock_path(run_dir).exists()  # released


def test_a_run_or_resume_started_while_another_runs_is_refused_and_leaves_it_alone(
    tmp_path: Path,
) -> None:
    run_dir = tmp_path / "digits_iid" / "fedavg" / "seed-0"
    args = ["run", *BASE, "rounds=400", "checkpoint_every=1", f"output_dir={tmp_path}"]
    first = _start(tmp_path, *args)
    try:
        _wait(lambda: len(_rounds(run_dir)) >= 1 and (run_dir / "checkpoint.npz").exists(), first)
        second = _cli(tmp_path, *args)
        assert second.returncode == 2, second.stderr
        (line,) = _errors(second.stderr)
        m = BUSY.search(line)
        assert m is not None and int(m.group(1)) == first.pid, line
        again = _cli(tmp_path, *args, "overwrite=true")  # overwrite does not break a lock
        assert again.returncode == 2 and BUSY.search(again.stderr), again.stderr
        resumed = _cli(tmp_path, "resume", str(run_dir))  # resume takes the lock too
        assert resumed.returncode == 2 and BUSY.search(resumed.stderr), resumed.stderr
        assert first.poll() is None  # the first run is still going
        os.killpg(first.pid, signal.SIGINT)
        _, err = first.communicate(timeout=300)
    finally:
        _stop(first)
    assert first.returncode == 130, err
    rounds = _rounds(run_dir)
    assert rounds == list(range(1, len(rounds) + 1))  # every round once, in order
    assert _status(run_dir)["status"] == "interrupted"
    assert len(list(run_dir.glob("events.out.tfevents*"))) == 1


def _hold_lock(tmp_path: Path, run_dir: Path) -> subprocess.Popen[str]:
    """A real process that takes ``run_dir``'s lock and sleeps."""
    code = textwrap.dedent(
        f"""
        import sys, time
        from pathlib import Path
        from fedsim.runlock import acquire
        acquire(Path({str(run_dir)!r}))
        print("locked", flush=True)
        time.sleep(600)
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=_env(tmp_path)
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
    return proc


def test_python_api_is_refused_by_a_live_lock_and_takes_over_a_stale_one(tmp_path: Path) -> None:
    import fedsim
    from fedsim.runlock import RunDirBusy

    run_dir = tmp_path / "digits_iid" / "fedavg" / "seed-0"
    holder = _hold_lock(tmp_path, run_dir)
    try:
        with pytest.raises(RunDirBusy, match=f"PID {holder.pid} on host {socket.gethostname()}"):
            fedsim.run(rounds=2, overrides=[*BASE, f"output_dir={tmp_path}"])
        assert not run_dir.exists()  # nothing written
    finally:
        holder.kill()
        holder.wait(timeout=60)
    assert lock_path(run_dir).exists()  # the holder died: its lock is stale
    result = fedsim.run(rounds=2, overrides=[*BASE, f"output_dir={tmp_path}"])
    assert result.run_dir == run_dir and _rounds(run_dir) == [1, 2]
    assert not lock_path(run_dir).exists()


def test_a_sweep_job_whose_directory_is_locked_is_refused_with_the_holder(tmp_path: Path) -> None:
    locked = tmp_path / "sw" / "fedavg" / "seed-1"
    holder = _hold_lock(tmp_path, locked)
    try:
        res = _cli(
            tmp_path, "run", "-m", *BASE, "rounds=1", "seed=0,1", "experiment=sw",
            f"output_dir={tmp_path}",
        )  # fmt: skip
    finally:
        holder.kill()
        holder.wait(timeout=60)
    assert res.returncode == 2, res.stderr
    assert f"PID {holder.pid} on host" in res.stderr
    assert _rounds(tmp_path / "sw" / "fedavg" / "seed-0") == [1]
    assert not (locked / "run.json").exists()


# ----------------------------------------------- interrupted, damaged and replaced runs


def _killed_run(tmp_path: Path, rounds: int = 6, after: int = 2) -> Path:
    """A run killed with SIGKILL after ``after`` checkpointed rounds."""
    run_dir = tmp_path / "digits_iid" / "fedavg" / "seed-0"
    proc = _start(
        tmp_path, "run", *BASE, f"rounds={rounds}", "checkpoint_every=1", f"output_dir={tmp_path}"
    )
    try:
        _wait(
            lambda: len(_rounds(run_dir)) >= after and (run_dir / "checkpoint.npz").exists(), proc
        )
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        _stop(proc)
    return run_dir


def test_a_killed_run_is_never_restarted_silently_and_resume_repairs_a_torn_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    from fedsim.cli import main
    from fedsim.tracking.runstate import checkpoint_round

    run_dir = _killed_run(tmp_path)
    assert _status(run_dir)["status"] == "running"
    stale = read_lock(lock_path(run_dir))
    assert stale is not None  # the killed run's lock, its process gone
    done = checkpoint_round(run_dir / "checkpoint.npz")
    before = _snapshot(tmp_path)
    res = _cli(tmp_path, "run", *BASE, "rounds=6", "checkpoint_every=1", f"output_dir={tmp_path}")
    assert res.returncode == 2
    assert _errors(res.stderr) == [
        f"fedsim: error: run interrupted at round {done}: fedsim resume {run_dir}, "
        "or overwrite=true"
    ]
    assert _snapshot(tmp_path) == before  # nothing touched, the stale lock included

    metrics = run_dir / "metrics.jsonl"
    lines = metrics.read_text().splitlines()
    metrics.write_text("\n".join([lines[0][:-3], *lines[1:]]) + "\n")  # a damaged first line
    before = _snapshot(tmp_path)
    capsys.readouterr()
    assert main(["resume", str(run_dir)]) == 2  # in this process: a resume is short
    assert _snapshot(tmp_path) == before
    assert _errors(capsys.readouterr().err) == [
        f"fedsim: error: resume: {metrics}:1 is not a JSON line (the file is damaged); "
        "start again with overwrite=true"
    ]
    # a torn last line (a write cut short) is repaired with a warning
    metrics.write_text("".join(ln + "\n" for ln in lines) + '{"round": 9, "train/lo')
    with caplog.at_level(logging.WARNING, logger="fedsim.tracking.callbacks"):
        assert main(["resume", str(run_dir)]) == 0
    assert "dropped a torn last line" in caplog.text
    assert _rounds(run_dir) == [1, 2, 3, 4, 5, 6]  # every round once
    assert _status(run_dir)["status"] == "complete"
    assert not lock_path(run_dir).exists()


def test_results_beside_a_damaged_or_missing_run_json_need_overwrite(fast_cfg) -> None:  # type: ignore[no-untyped-def]
    from fedsim.engine.runner import execute
    from fedsim.errors import UserError

    cfg = fast_cfg("rounds=1", "runtime.threads=1")
    run_dir = Path(execute(cfg)["run_dir"])
    (run_dir / "run.json").write_text('{"status": "compl')  # torn
    before = _snapshot(run_dir)
    with pytest.raises(UserError, match=r"holds results but a damaged run\.json; pass overwrite"):
        execute(fast_cfg("rounds=1", "runtime.threads=1"))
    (run_dir / "run.json").unlink()
    with pytest.raises(UserError, match=r"holds results but no run\.json; pass overwrite"):
        execute(fast_cfg("rounds=1", "runtime.threads=1"))
    assert _snapshot(run_dir) == {k: v for k, v in before.items() if k != "run.json"}
    record = execute(fast_cfg("rounds=1", "runtime.threads=1", "overwrite=true"))
    assert record["status"] == "complete"


def test_overwrite_with_a_bad_fedossl_checkpoint_fails_before_the_old_run_is_touched(
    tmp_path: Path,
) -> None:
    common = [*BASE[:3], "strategy=fedossl", "scenario=digits_open_world", "rounds=1"]
    ok = _cli(tmp_path, "run", *common, f"output_dir={tmp_path}")
    assert ok.returncode == 0, ok.stderr
    before = _snapshot(tmp_path)
    bogus = tmp_path / "not_a_state_dict.pt"
    bogus.write_text("these are not weights\n")
    before[bogus.name] = (bogus.stat().st_size, bogus.stat().st_mtime_ns)
    res = _cli(
        tmp_path, "run", *common, f"strategy.checkpoint={bogus}", "overwrite=true",
        f"output_dir={tmp_path}",
    )  # fmt: skip
    assert res.returncode == 2
    (line,) = _errors(res.stderr)
    assert "strategy.checkpoint" in line and "not a PyTorch state dict" in line
    assert _snapshot(tmp_path) == before  # the complete run is intact


def test_overwrite_keeps_the_old_run_until_the_new_one_completed_a_round(tmp_path: Path) -> None:
    run_dir = tmp_path / "digits_iid" / "fedavg" / "seed-0"
    first = _cli(tmp_path, "run", *BASE, "rounds=1", f"output_dir={tmp_path}")
    assert first.returncode == 0, first.stderr
    old = _snapshot(run_dir)
    proc = _start(tmp_path, "run", *BASE, "rounds=40", "overwrite=true", f"output_dir={tmp_path}")
    try:
        staging = run_dir.parent / f".seed-0.new-{proc.pid}"
        _wait(lambda: staging.is_dir(), proc)
        assert _snapshot(run_dir) == old  # the new run is built beside the old one
        # killed before its first round: the old run survives
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        _stop(proc)
    assert staging.is_dir() and not staging.is_symlink()  # killed before the swap
    assert _snapshot(run_dir) == old and _status(run_dir)["status"] == "complete"
    proc = _start(tmp_path, "run", *BASE, "rounds=40", "overwrite=true", f"output_dir={tmp_path}")
    try:
        new_staging = run_dir.parent / f".seed-0.new-{proc.pid}"
        _wait(lambda: new_staging.is_symlink(), proc)  # swapped in after round one
        assert not staging.exists()  # the killed run's leftovers were cleaned up
        assert _status(run_dir)["status"] == "running" and _rounds(run_dir)[:1] == [1]
    finally:
        _stop(proc)


# ----------------------------------------------------------------------- I/O faults


def _no_tmp_files(root: Path) -> None:
    assert not [p for p in root.rglob("*.tmp")], list(root.rglob("*.tmp"))


def _set_file_limit(limit: int):  # type: ignore[no-untyped-def]
    import resource

    def apply() -> None:
        os.setsid()
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of a core dump
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def test_a_file_size_limit_mid_run_fails_with_one_line_and_a_true_status(tmp_path: Path) -> None:
    run_dir = tmp_path / "digits_iid" / "fedavg" / "seed-0"
    proc = subprocess.Popen(
        _cmd("run", *BASE, "rounds=2", f"output_dir={tmp_path}"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(tmp_path),
        preexec_fn=_set_file_limit(200_000),  # the final model (630 kB) cannot be written
    )
    try:
        _, err = proc.communicate(timeout=600)
    finally:
        _stop(proc)
    assert proc.returncode == 1, err
    assert "Traceback" not in err
    (line,) = _errors(err)
    assert line.startswith("fedsim: error: run failed: File too large"), line
    assert "no checkpoint was written" in line
    status = _status(run_dir)
    assert status["status"] == "failed" and status["reason"].startswith("File too large")
    assert status["checkpoint_round"] is None
    _no_tmp_files(tmp_path)
    assert not lock_path(run_dir).exists()


def _can_mount_tmpfs() -> str | None:
    """None when a private tmpfs can be mounted here, else why not."""
    if shutil.which("unshare") is None:
        return "unshare(1) is not installed"
    probe = subprocess.run(
        ["unshare", "-Urm", "sh", "-c", "mount -t tmpfs -o size=1m tmpfs /mnt"],
        capture_output=True,
        text=True,
    )
    if probe.returncode != 0:
        return f"cannot mount a tmpfs in a user namespace: {probe.stderr.strip()}"
    return None


NAMESPACE_SCRIPT = Path(__file__).with_name("fault_namespace.py")


def _in_namespace(tmp_path: Path, *args: str) -> dict:  # type: ignore[type-arg]
    """Run tests/fault_namespace.py in a private mount namespace; its JSON report."""
    why = _can_mount_tmpfs()
    if why:
        pytest.skip(why)
    report = tmp_path / "report.json"
    proc = subprocess.Popen(
        ["unshare", "-Urm", sys.executable, str(NAMESPACE_SCRIPT), str(report), *args],
        cwd=str(Path(__file__).resolve().parents[1]),
        env=_env(tmp_path),
        start_new_session=True,
    )
    try:
        proc.wait(timeout=600)
    finally:
        _stop(proc)
    assert proc.returncode == 0
    return json.loads(report.read_text())


@pytest.mark.slow
def test_a_full_disk_fails_with_one_line_then_resume_gives_identical_metrics(
    tmp_path: Path,
) -> None:
    if _can_mount_tmpfs():
        pytest.skip(str(_can_mount_tmpfs()))
    ref = _cli(tmp_path, "run", *BASE, "rounds=4", "checkpoint_every=1", f"output_dir={tmp_path}/r")
    assert ref.returncode == 0, ref.stderr
    ref_dir = tmp_path / "r" / "digits_iid" / "fedavg" / "seed-0"
    ckpt = (ref_dir / "checkpoint.npz").stat().st_size
    small = sum(
        max(p.stat().st_size, 4096)
        for p in ref_dir.rglob("*")
        if p.is_file() and p.name not in ("checkpoint.npz", "final_model.pt")
    )
    # room for the small files and one checkpoint, not for writing the second beside it
    size = small + int(1.5 * ckpt)
    rep = _in_namespace(tmp_path, "enospc", str(tmp_path / "out"), str(size), *BASE, "rounds=4")
    assert rep["fault_rc"] == 1, rep["fault_err"]
    assert "Traceback" not in rep["fault_err"]
    (line,) = _errors(rep["fault_err"])
    assert line.startswith("fedsim: error: run failed: No space left on device"), line
    status = rep["status_after_fault"]
    assert status["status"] == "failed" and status["reason"].startswith("No space left")
    assert status["checkpoint_round"] >= 1 and rep["tmp_files_after_fault"] == []
    assert f"last good checkpoint: round {status['checkpoint_round']}" in line
    assert rep["resume_rc"] == 0, rep["resume_err"]
    keys = ["round", "train/loss", "eval/acc", "comm/bytes_up_total"]
    pick = [[json.loads(ln)[k] for k in keys] for ln in (ref_dir / "metrics.jsonl").open()]
    assert [[row[k] for k in keys] for row in rep["rows_after_resume"]] == pick


def test_a_read_only_output_dir_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    rep = _in_namespace(tmp_path, "readonly", str(tmp_path / "out"), *BASE, "rounds=1")
    assert rep["ro_start_rc"] == 2
    (line,) = _errors(rep["ro_start_err"])
    assert "output_dir: cannot create" in line and "Read-only file system" in line
    assert rep["ro_start_files"] == []  # nothing written


def _unprivileged() -> list[str]:
    """A command prefix under which chmod stops writes: none for a normal user; for root,
    a user namespace without a mapping (its processes lack CAP_DAC_OVERRIDE on our
    files); skip with the reason when neither works."""
    if os.geteuid() != 0:
        return []
    if shutil.which("unshare") is None:
        pytest.skip("running as root (chmod does not stop writes) and unshare(1) is missing")
    probe = subprocess.run(["unshare", "-U", "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"running as root and no user namespace: {probe.stderr.strip()}")
    return ["unshare", "-U"]


@pytest.mark.slow
def test_a_run_directory_made_read_only_mid_run_fails_cleanly_then_resumes(
    tmp_path: Path,
) -> None:
    prefix = _unprivileged()
    run_dir = tmp_path / "digits_iid" / "fedavg" / "seed-0"
    proc = subprocess.Popen(
        [*prefix, *_cmd("run", *BASE, "rounds=30", "checkpoint_every=1", f"output_dir={tmp_path}")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        env=_env(tmp_path),
    )
    try:
        _wait(lambda: len(_rounds(run_dir)) >= 2 and (run_dir / "checkpoint.npz").exists(), proc)
        run_dir.chmod(0o500)  # no new files: the next checkpoint cannot be written
        _, err = proc.communicate(timeout=300)
    finally:
        _stop(proc)
        run_dir.chmod(0o755)
    assert proc.returncode == 1, err
    assert "Traceback" not in err, err
    (line,) = _errors(err)
    assert line.startswith("fedsim: error: run failed: Permission denied"), line
    status = _status(run_dir)
    assert status["status"] == "failed" and status["reason"].startswith("Permission denied")
    done = status["checkpoint_round"]
    assert done >= 1 and f"last good checkpoint: round {done}" in line
    # a checkpoint written at the moment of the chmod leaves a .tmp file the directory
    # does not let anyone delete; the resume below removes it
    again = ["run", *BASE, "rounds=30", "checkpoint_every=1", f"output_dir={tmp_path}"]
    rerun = _cli(tmp_path, *again)
    assert _errors(rerun.stderr) == [
        f"fedsim: error: run failed at round {done}: fedsim resume {run_dir}, or overwrite=true"
    ]
    resumed = _cli(tmp_path, "resume", str(run_dir), "rounds=" + str(done + 2))
    assert resumed.returncode == 0, resumed.stderr
    assert _rounds(run_dir) == list(range(1, done + 3))
    _no_tmp_files(tmp_path)


def test_chmod_read_only_directory_is_refused(tmp_path: Path) -> None:
    prefix = _unprivileged()
    target = tmp_path / "ro"
    target.mkdir()
    target.chmod(0o500)
    try:
        res = subprocess.run(
            [*prefix, *_cmd("run", *BASE, "rounds=1", f"output_dir={target}/runs")],
            capture_output=True,
            text=True,
            timeout=600,
            env=_env(tmp_path),
        )
        assert res.returncode == 2, res.stderr
        (line,) = _errors(res.stderr)
        assert "output_dir: cannot create" in line and "Permission denied" in line
        assert list(target.iterdir()) == []
    finally:
        target.chmod(0o700)


# -------------------------------------------------------------------------- signals


@pytest.mark.parametrize(
    ("sig", "code"),
    [pytest.param(signal.SIGINT, 130, marks=pytest.mark.slow), (signal.SIGTERM, 143)],
)
def test_signal_to_the_process_group_with_workers_ends_interrupted(
    tmp_path: Path, sig: signal.Signals, code: int
) -> None:
    run_dir = tmp_path / "digits_iid" / "fedavg" / "seed-0"
    args = ["run", *BASE, "rounds=40", "runtime.workers=2", f"output_dir={tmp_path}"]
    proc = _start(tmp_path, *args)
    try:
        _wait(lambda: len(_rounds(run_dir)) >= 1, proc)
        os.killpg(proc.pid, sig)  # Ctrl-C reaches the server and both workers
        _, err = proc.communicate(timeout=300)
    finally:
        _stop(proc)
    assert proc.returncode == code, err
    assert "Traceback" not in err, err
    assert _status(run_dir)["status"] == "interrupted"
    assert not lock_path(run_dir).exists()


# ----------------------------------------------------------------- values at load


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("train.lr=inf", "train.lr"),
        ("train.lr=nan", "train.lr"),
        ("scenario.faults.delay_s=inf", "scenario.faults.delay_s"),
        ("scenario.participation.fraction=nan", "scenario.participation.fraction"),
        ("strategy=fedprox strategy.mu=-inf", "strategy.mu"),
    ],
)
def test_non_finite_values_are_refused_at_load_naming_the_key(override: str, key: str) -> None:
    from fedsim.engine.conf import compose
    from fedsim.errors import ConfigError

    with pytest.raises(ConfigError, match=rf"^{re.escape(key)}: must be a finite number, got"):
        compose(override.split())


def test_infinity_where_it_means_something_is_accepted() -> None:
    from fedsim.engine.conf import compose

    cfg = compose(["scenario=masha_bilinear", "strategy=masha1", "scenario.problem.similarity=inf"])
    assert cfg.scenario.problem.similarity == float("inf")


@pytest.mark.parametrize("name", ["../escape", "a/b", "..", "."])
def test_names_that_become_paths_hold_no_separator(name: str) -> None:
    from fedsim.engine.conf import compose
    from fedsim.errors import ConfigError

    with pytest.raises(ConfigError, match=r"^experiment: .* cannot name a directory"):
        compose([f"experiment={name}"])


@pytest.mark.parametrize(
    ("strategy", "f", "need"), [("krum", 2, 7), ("multikrum", 2, 7), ("bulyan", 1, 7)]
)
def test_robust_strategies_need_enough_clients_for_their_attackers(
    strategy: str, f: int, need: int
) -> None:
    from fedsim.engine.conf import compose
    from fedsim.errors import ConfigError

    common = [f"strategy={strategy}", f"strategy.num_malicious_nodes={f}"]
    with pytest.raises(ConfigError, match=rf"needs at least {need} clients per round"):
        compose([*common, f"scenario.num_clients={need - 1}"])
    assert compose([*common, f"scenario.num_clients={need}"]).strategy.name == strategy


def test_a_bad_value_on_the_command_line_is_one_line_and_writes_nothing(tmp_path: Path) -> None:
    res = _cli(tmp_path, "run", *BASE, "train.lr=inf", f"output_dir={tmp_path}/out")
    assert res.returncode == 2
    assert _errors(res.stderr) == ["fedsim: error: train.lr: must be a finite number, got inf"]
    assert not (tmp_path / "out").exists()


def test_a_dry_run_deploy_checks_the_overrides_and_writes_nothing(tmp_path: Path) -> None:
    home = tmp_path / "flwr-home"
    dry = {**_env(tmp_path), "FEDSIM_DRY_RUN": "1"}
    deploy = [*_cmd("deploy", "run", "--superlink", "h:9093", "--insecure")]
    bad = subprocess.run([*deploy, "train.lr=inf"], capture_output=True, text=True, env=dry)
    assert bad.returncode == 2
    assert _errors(bad.stderr) == ["fedsim: error: train.lr: must be a finite number, got inf"]
    good = subprocess.run([*deploy, "rounds=2"], capture_output=True, text=True, env=dry)
    assert good.returncode == 0, good.stderr
    assert "flwr run" in good.stderr and "would write connection" in good.stdout
    assert not home.exists() or not any(home.rglob("*"))  # Flower's config.toml not written


def test_ray_clients_larger_than_this_machine_are_refused_before_the_run(fast_cfg) -> None:  # type: ignore[no-untyped-def]
    from fedsim.engine.runner import preflight
    from fedsim.errors import ConfigError

    cpus = os.cpu_count() or 1
    cfg = fast_cfg("runtime=ray", f"runtime.client_cpus={cpus + 2}")
    with pytest.raises(ConfigError, match=rf"^runtime\.client_cpus: .* this machine has {cpus}"):
        preflight(cfg)
    assert not Path(cfg.output_dir).exists() or not any(Path(cfg.output_dir).iterdir())
