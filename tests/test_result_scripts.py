"""The resumable result scripts continue where they stopped when killed (tiny budget)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO, shared_file

pytestmark = pytest.mark.slow


def _rounds(run_dir: Path) -> list[int]:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line)["round"] for line in path.read_text().splitlines() if line.strip()]


def _status(run_dir: Path) -> str:
    return str(json.loads((run_dir / "run.json").read_text())["status"])


def _kill_after_two_rounds(cmd: list[str], env: dict[str, str], first: Path) -> None:
    """Start the script in its own process group, SIGTERM the group once ``first`` has two
    rounds, and wait until that run says it was interrupted."""
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, start_new_session=True)
    try:
        deadline = time.time() + 600
        while len(_rounds(first)) < 2 and time.time() < deadline and proc.poll() is None:
            time.sleep(0.5)
        assert len(_rounds(first)) >= 2, "the first run never reached round 2"
        os.killpg(proc.pid, signal.SIGTERM)  # the script and its fedsim child, by group
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    # the fedsim child finishes its round, checkpoints and says so in run.json
    deadline = time.time() + 300
    while _status(first) == "running" and time.time() < deadline:
        time.sleep(0.5)
    assert _status(first) == "interrupted"
    assert len(_rounds(first)) < 4


def test_fraug_faithful_killed_then_restarted_resumes(tmp_path: Path) -> None:
    shared_file("digits/usps_test.npz")
    out, doc = tmp_path / "runs", tmp_path / "ff.md"
    cmd = [
        sys.executable, "scripts/fraug_faithful.py", "--seeds", "0", "--rounds", "4",
        "--checkpoint-every", "1", "--out", str(out), "--doc", str(doc),
    ]  # fmt: skip
    env = {**os.environ, "FLWR_HOME": str(tmp_path / "flwr")}
    first = out / "fraug_faithful-0.25" / "fedbn" / "seed-0"
    _kill_after_two_rounds(cmd, env, first)
    again = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=1200)
    assert again.returncode == 0, again.stderr[-2000:]
    assert _rounds(first) == [1, 2, 3, 4]  # resumed: every round once
    assert "resuming from round" in (first / "fedsim.log").read_text()
    second = out / "fraug_faithful-0.25" / "fraug" / "seed-0"
    assert _rounds(second) == [1, 2, 3, 4]
    summary = json.loads(doc.with_suffix(".json").read_text())
    assert summary["strategies"]["fedbn"]["seeds"] == [0]
    assert "fraug-fedbn" in summary["paired"]


def test_fedossl_results_killed_then_restarted_resumes(tmp_path: Path) -> None:
    out, doc = tmp_path / "runs", tmp_path / "fo.md"
    cmd = [
        sys.executable, "scripts/fedossl_results.py", "--only", "digits_open_world",
        "--seeds", "0", "--methods", "fedossl", "fedossl_orca", "--rounds", "4",
        "--local-epochs", "1", "--out", str(out), "--doc", str(doc),
        "--summary", str(tmp_path / "fo.json"), "--notes", str(tmp_path / "none.md"),
    ]  # fmt: skip
    env = {**os.environ, "FLWR_HOME": str(tmp_path / "flwr"), "PYTHONPATH": str(REPO)}
    first = out / "digits_open_world" / "fedossl" / "seed-0"
    _kill_after_two_rounds(cmd, env, first)
    again = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=1200)
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"skip {first}" not in again.stdout  # neither skipped nor restarted ...
    assert _rounds(first) == [1, 2, 3, 4]  # ... but resumed: every round once
    assert "resuming from round" in (first / "fedsim.log").read_text()
    assert _rounds(out / "digits_open_world" / "fedossl_orca" / "seed-0") == [1, 2, 3, 4]
    summary = json.loads((tmp_path / "fo.json").read_text())
    assert summary["digits_open_world"]["fedossl"]["rounds"] == 4
    assert summary["digits_open_world"]["fedossl"]["seeds"] == [0]


def test_fedossl_results_resumes_only_a_run_of_the_same_budget(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib.util

    from fedsim.engine.checkpoint import CHECKPOINT_FILE

    spec = importlib.util.spec_from_file_location(
        "fedossl_results", REPO / "scripts" / "fedossl_results.py"
    )
    assert spec is not None and spec.loader is not None
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    launched: list[list[str]] = []

    def fake_run(args: list[str], **_: object) -> subprocess.CompletedProcess[str]:
        launched.append(args)
        return subprocess.CompletedProcess(args, 0, "", "")

    monkeypatch.setattr(script.subprocess, "run", fake_run)
    run = script.run_dir(tmp_path, "digits_open_world", "fedossl", 0)
    run.mkdir(parents=True)
    (run / CHECKPOINT_FILE).write_text("{}")
    for rounds, verb in ((20, "resume"), (4, "run")):
        info = {"status": "interrupted", "config": {"rounds": rounds, "train": {"local_epochs": 5}}}
        (run / "run.json").write_text(json.dumps(info))
        script.launch(tmp_path, "digits_open_world", "fedossl", 0)
        assert launched[-1][1] == verb, launched[-1]  # another budget starts afresh


def test_fraug_faithful_variants_run_apart_from_fraug(tmp_path: Path) -> None:
    import importlib.util

    sys.path.insert(0, str(REPO / "scripts"))
    try:
        spec = importlib.util.spec_from_file_location("ff", REPO / "scripts" / "fraug_faithful.py")
        assert spec is not None and spec.loader is not None
        ff = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(ff)
    finally:
        sys.path.remove(str(REPO / "scripts"))
    plain, variant = (ff.run_dir(tmp_path, s, 0, 0.25) for s in ("fraug", "fraug_lamg0"))
    assert plain != variant  # a variant never overwrites or resumes the FRAug runs
    args = ff.overrides("fraug_lamg0", 0, 150, 0.25, tmp_path)
    assert "strategy=fraug" in args and "strategy.lam_g=0" in args
    assert f"experiment={variant.parent.parent.name}" in args  # where fedsim will write it
    assert "strategy.lam_g=0" not in ff.overrides("fraug", 0, 150, 0.25, tmp_path)
