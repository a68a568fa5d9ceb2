"""Reliability: kill -9 and resume, SIGTERM, atomic checkpoints, injected client faults.

Runs are real subprocesses killed with real signals; every process a test starts is
killed by its PID in a ``finally``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from fedsim.engine import checkpoint as ckpt_io

BASE = ["progress=false", "backbone.width=0.25", "runtime.threads=1", "scenario.num_clients=5"]


def _cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fedsim.cli", *args], capture_output=True, text=True, timeout=timeout
    )


def _rows(run_dir: Path) -> list[dict]:  # type: ignore[type-arg]
    return [
        json.loads(line)
        for line in (run_dir / "metrics.jsonl").read_text().splitlines()
        if line.strip()
    ]


def _start(args: list[str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "fedsim.cli", "run", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def _wait_rows(proc: subprocess.Popen[str], run_dir: Path, n: int, limit: float = 600) -> None:
    end = time.monotonic() + limit
    while time.monotonic() < end:
        if (
            (run_dir / ckpt_io.CHECKPOINT_FILE).exists()
            and (run_dir / "metrics.jsonl").exists()
            and len(_rows(run_dir)) >= n
        ):
            return
        if proc.poll() is not None:
            raise AssertionError(f"run ended early: {proc.stderr.read() if proc.stderr else ''}")
        time.sleep(0.1)
    raise AssertionError(f"no {n} rounds within {limit} s")


def _kill(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)


@pytest.mark.parametrize("strategy", ["fedavg", "fedprox", "fedbn"])
def test_sigkill_then_resume_equals_uninterrupted(strategy: str, tmp_path: Path) -> None:
    common = [
        *BASE,
        f"strategy={strategy}",
        "rounds=4",
        "checkpoint_every=1",
        "train.persist_optimizer=true",
        "train.momentum=0.5",
    ]
    ref = _cli("run", *common, f"output_dir={tmp_path}/ref")
    assert ref.returncode == 0, ref.stderr
    ref_dir = tmp_path / "ref" / "digits_iid" / strategy / "seed-0"

    run_dir = tmp_path / "cut" / "digits_iid" / strategy / "seed-0"
    proc = _start([*common, f"output_dir={tmp_path}/cut"])
    try:
        _wait_rows(proc, run_dir, 2)
        os.killpg(proc.pid, signal.SIGKILL)  # no chance to clean up
        proc.wait(timeout=60)
    finally:
        _kill(proc)
    assert json.loads((run_dir / "run.json").read_text())["status"] == "running"
    done = ckpt_io.load(run_dir / ckpt_io.CHECKPOINT_FILE).round
    assert 1 <= done < 4

    resumed = _cli("resume", str(run_dir))
    assert resumed.returncode == 0, resumed.stderr

    a, b = _rows(ref_dir), _rows(run_dir)
    assert [r["round"] for r in b] == [1, 2, 3, 4]  # no duplicated or missing rounds
    keys = ["train/loss", "eval/acc", "eval/acc_client/0", "comm/bytes_up_total"]
    assert [[r.get(k) for k in keys] for r in a] == [[r.get(k) for k in keys] for r in b]  # exact
    ea = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    ea.Reload()
    assert [e.step for e in ea.Scalars("eval/acc")] == [1, 2, 3, 4]
    assert json.loads((run_dir / "run.json").read_text())["status"] == "complete"


def test_sigterm_checkpoints_and_stops_then_resumes(tmp_path: Path) -> None:
    run_dir = tmp_path / "digits_iid" / "fedavg" / "seed-0"
    proc = _start([*BASE, "rounds=50", f"output_dir={tmp_path}"])
    try:
        _wait_rows_no_ckpt(proc, run_dir, 1)
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=300)
    finally:
        _kill(proc)
    assert proc.returncode == 143  # 128 + SIGTERM, as a shell reports it
    status = json.loads((run_dir / "run.json").read_text())
    assert status["status"] == "interrupted"
    ckpt = ckpt_io.load(run_dir / ckpt_io.CHECKPOINT_FILE)
    stopped = ckpt.round
    assert len(_rows(run_dir)) == stopped
    # the checkpoint carries the run's clock: the value of its own round
    assert ckpt.counters["time/elapsed_s"] == _rows(run_dir)[-1]["time/elapsed_s"]
    resumed = _cli("resume", str(run_dir), f"rounds={stopped + 1}")
    assert resumed.returncode == 0, resumed.stderr
    rows = _rows(run_dir)
    assert [r["round"] for r in rows] == list(range(1, stopped + 2))
    # the run's clock goes on from where the first process stopped, not from zero
    before, after = rows[stopped - 1], rows[stopped]
    assert after["time/elapsed_s"] >= before["time/elapsed_s"] + after["time/round_s"]


def _wait_rows_no_ckpt(
    proc: subprocess.Popen[str], run_dir: Path, n: int, limit: float = 600
) -> None:
    end = time.monotonic() + limit
    while time.monotonic() < end:
        if (run_dir / "metrics.jsonl").exists() and len(_rows(run_dir)) >= n:
            return
        if proc.poll() is not None:
            raise AssertionError("run ended early")
        time.sleep(0.1)
    raise AssertionError(f"no {n} rounds within {limit} s")


def test_interrupted_checkpoint_write_keeps_the_last_good_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / ckpt_io.CHECKPOINT_FILE
    good = ckpt_io.Checkpoint(round=3, config={"rounds": 5}, global_arrays={"w": np.arange(4.0)})
    ckpt_io.save(path, good)
    before = path.read_bytes()

    def disk_full(f, **arrays):  # type: ignore[no-untyped-def]
        f.write(b"PK\x03\x04 half a zip")  # some bytes reach the disk, then the write fails
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ckpt_io.np, "savez", disk_full)
    with pytest.raises(OSError):
        ckpt_io.save(
            path,
            ckpt_io.Checkpoint(round=4, config={"rounds": 5}, global_arrays={"w": np.zeros(4)}),
        )
    assert path.read_bytes() == before
    assert ckpt_io.load(path).round == 3


def test_fault_injection_run_finishes_and_counts_failures(tmp_path: Path) -> None:
    scenario = tmp_path / "faulty.yaml"
    scenario.write_text(
        "# faults on the embedded digits\nname: faulty\nnum_clients: 8\n"
        "faults: {crash: 0.25, nan: 0.25}\nparticipation: {min_clients: 2}\n"
    )
    res = _cli("run", f"scenario={scenario}", *BASE[:3], "rounds=3", f"output_dir={tmp_path}")
    assert res.returncode == 0, res.stderr
    run_dir = tmp_path / "faulty" / "fedavg" / "seed-0"
    rows = _rows(run_dir)
    failed = sum(r["sys/failed_clients"] for r in rows)
    rejected = sum(r["sys/rejected_updates"] for r in rows)
    aggregated = sum(r["sys/aggregated_clients"] for r in rows)
    assert failed > 0 and rejected > 0
    assert failed + rejected + aggregated == 3 * 8
    assert "injected crash" in (run_dir / "fedsim.log").read_text()
    ea = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    ea.Reload()
    assert sum(e.value for e in ea.Scalars("sys/failed_clients")) == failed
    assert sum(e.value for e in ea.Scalars("sys/rejected_updates")) == rejected
    assert all(np.isfinite(r["train/loss"]) for r in rows)


def test_worker_processes_give_the_same_metrics(fast_cfg, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from fedsim.engine.runner import execute

    one = execute(fast_cfg("rounds=2", "runtime.threads=1", f"output_dir={tmp_path}/a"))
    two = execute(
        fast_cfg("rounds=2", "runtime.threads=1", "runtime.workers=2", f"output_dir={tmp_path}/b")
    )
    rows_a = _rows(Path(one["run_dir"]))
    rows_b = _rows(Path(two["run_dir"]))
    for key in ["train/loss", "eval/acc", "eval/global_acc", "comm/bytes_up"]:
        assert [r[key] for r in rows_a] == [r[key] for r in rows_b], key


OTHER_STRATEGIES = {  # name -> (overrides, rounds); MASHA's bilinear rounds take milliseconds
    "fraug": (["strategy=fraug", "strategy.local_iterations=2"], 4),
    "fedossl": (["strategy=fedossl", "scenario=digits_open_world"], 4),
    "masha1": (
        ["strategy=masha1", "scenario=masha_bilinear", "channel.up=randk", "channel.up.ratio=0.1"],
        300,
    ),
}


@pytest.mark.parametrize("name", sorted(OTHER_STRATEGIES))
def test_sigkill_then_resume_other_strategies(name: str, tmp_path: Path) -> None:
    extra, rounds = OTHER_STRATEGIES[name]
    common = [*BASE[:3], *extra, f"rounds={rounds}", "checkpoint_every=1"]
    ref = _cli("run", *common, f"output_dir={tmp_path}/ref")
    assert ref.returncode == 0, ref.stderr
    (ref_dir,) = [p.parent for p in (tmp_path / "ref").rglob("run.json")]
    proc = _start([*common, f"output_dir={tmp_path}/cut"])
    try:
        end = time.monotonic() + 600
        while (
            not list((tmp_path / "cut").rglob(ckpt_io.CHECKPOINT_FILE)) and time.monotonic() < end
        ):
            time.sleep(0.05)
        (run_dir,) = [p.parent for p in (tmp_path / "cut").rglob("run.json")]
        _wait_rows(proc, run_dir, 2)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        _kill(proc)
    resumed = _cli("resume", str(run_dir))
    assert resumed.returncode == 0, resumed.stderr
    a, b = _rows(ref_dir), _rows(run_dir)
    assert json.loads((run_dir / "run.json").read_text())["status"] == "complete"
    assert [r["round"] for r in b] == list(range(1, rounds + 1))
    keys = sorted(k for k in a[-1] if not k.startswith("time/"))
    assert [[r.get(k) for k in keys] for r in a] == [[r.get(k) for k in keys] for r in b]
