"""End-to-end: ``fedsim run`` on the embedded digits, TensorBoard files read back."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from fedsim.engine.runner import execute


def _events(run_dir: Path) -> EventAccumulator:
    ea = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "tensors": 0, "images": 0})
    ea.Reload()
    return ea


def test_three_rounds_write_tensorboard_and_learn(fast_cfg) -> None:  # type: ignore[no-untyped-def]
    cfg = fast_cfg("train.local_epochs=2")
    record = execute(cfg)
    run_dir = Path(record["run_dir"])
    assert run_dir.parts[-3:] == ("digits_iid", "fedavg", "seed-0")
    assert record["status"] == "complete"

    ea = _events(run_dir)
    scalars = set(ea.Tags()["scalars"])
    for tag in [
        "train/loss",
        "eval/acc",
        "eval/acc_client/0",
        "eval/acc_client/9",
        "eval/global_acc",
        "comm/bytes_up",
        "comm/bytes_down",
        "time/round_s",
        "hparams/eval/acc",
    ]:
        assert tag in scalars, tag
    tensors = set(ea.Tags()["tensors"])
    assert "config/text_summary" in tensors
    hp = ea.PluginTagToContent("hparams")
    assert {
        "_hparams_/experiment",
        "_hparams_/session_start_info",
        "_hparams_/session_end_info",
    } <= set(hp)
    start = plugin_data_pb2.HParamsPluginData.FromString(
        hp["_hparams_/session_start_info"]
    ).session_start_info
    assert start.hparams["strategy"].string_value == "fedavg"
    assert start.hparams["scenario"].string_value == "digits_iid"
    assert start.hparams["seed"].number_value == 0
    assert "partition" in ea.Tags()["images"]

    acc = [e.value for e in ea.Scalars("eval/acc")]
    assert [e.step for e in ea.Scalars("eval/acc")] == [1, 2, 3]
    assert acc[-1] > 0.2, f"accuracy {acc} did not rise above chance (0.1)"

    # metrics.jsonl has the same numbers
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [1, 2, 3]
    assert [r["eval/acc"] for r in rows] == pytest.approx(acc, rel=1e-6)

    # bytes are what the serialized arrays weigh: 10 clients x the model, both ways
    up = [e.value for e in ea.Scalars("comm/bytes_up")]
    assert up[0] == rows[0]["comm/bytes_down"] > 10 * 4 * sum(1 for _ in range(1000))


def test_same_seed_same_metrics(fast_cfg, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    a = execute(fast_cfg("rounds=2", f"output_dir={tmp_path}/a"))
    b = execute(fast_cfg("rounds=2", f"output_dir={tmp_path}/b"))
    c = execute(fast_cfg("rounds=2", f"output_dir={tmp_path}/c", "seed=1"))
    assert a["final"]["eval/acc"] == b["final"]["eval/acc"]
    assert a["final"]["train/loss"] == b["final"]["train/loss"]
    assert a["final"]["train/loss"] != c["final"]["train/loss"]


def test_cli_run_prints_result_and_refuses_to_overwrite(tmp_path: Path) -> None:
    cmd = [
        sys.executable,
        "-m",
        "fedsim.cli",
        "run",
        "rounds=1",
        f"output_dir={tmp_path}",
        "progress=false",
        "backbone.width=0.25",
    ]
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr
    assert "eval/acc=" in first.stdout and str(tmp_path) in first.stdout
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert again.returncode == 2
    assert "already holds a complete run" in again.stderr
    assert "Traceback" not in again.stderr
