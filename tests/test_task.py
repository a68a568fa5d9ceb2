"""Tasks (:mod:`fedsim.algorithms.task`): found by entry point, a plug-in task runs without editing
fedsim."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from plugins import install_plugin, run_fedsim

from fedsim.algorithms.task import Workload, get_task, tasks
from fedsim.errors import ConfigError


def test_fedsims_own_tasks_are_registered_and_unknown_names_are_one_line() -> None:
    assert list(tasks()) == ["bilinear", "classification"]
    assert get_task("classification").trains_network
    assert not get_task("bilinear").trains_network
    with pytest.raises(ConfigError, match=r"^task: unknown 'quadratic' \(allowed: bilinear, "):
        get_task("quadratic")


def test_the_bilinear_task_builds_no_data_and_refuses_a_network_strategy(fast_cfg) -> None:  # type: ignore[no-untyped-def]
    cfg = fast_cfg("scenario=masha_bilinear", "strategy=eg", "scenario.problem.dim=4")
    assert get_task("bilinear").workload(cfg) == Workload()
    with pytest.raises(ConfigError, match=r"strategy: 'fedavg' cannot run scenario\.task="):
        fast_cfg("scenario=masha_bilinear", "scenario.problem.dim=4")


def test_an_installed_package_adds_a_task_by_entry_point(tmp_path: Path) -> None:
    """tests/plugin_task publishes ``quadratic`` (a strongly monotone VI); EG solves it."""
    site = install_plugin("plugin_task", tmp_path)
    env = dict(os.environ, PYTHONPATH=str(site))
    common = ["scenario.task=quadratic", "strategy=eg", "scenario.num_clients=4",
              "scenario.problem.dim=8", "rounds=60", "progress=false",
              f"output_dir={tmp_path / 'runs'}"]  # fmt: skip
    done = run_fedsim(common, env)
    assert done.returncode == 0, done.stderr
    record = json.loads((tmp_path / "runs/digits_iid/eg/seed-0/run.json").read_text())
    # the task's own metric is kept in the summary and printed; EG drove it down from 1.0
    assert record["status"] == "complete"
    assert record["final"]["quadratic/rel_dist"] < 0.1, record["final"]
    assert "quadratic/rel_dist=" in done.stdout
    assert not (tmp_path / "runs/digits_iid/eg/seed-0/partition.txt").exists()  # no data built
    without = run_fedsim(common, None)  # not installed: an unknown task, one line
    assert without.returncode == 2
    (line,) = without.stderr.strip().splitlines()
    assert line.startswith("fedsim: error: ") and line.endswith(
        "digits_iid.yaml: scenario.task: unknown 'quadratic' (allowed: bilinear, classification)"
    )
