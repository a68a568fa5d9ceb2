"""A real sweep: ``fedsim run -m`` over 2 strategies x 2 seeds, then ``fedsim compare``.

The sweep runs once per module on the embedded digits (2 rounds, 4 clients, an MLP);
the tests read back what it wrote: the directory tree, the TensorBoard event files
(scalars, hparams, custom-scalars layout, partition picture, config), the per-seed
partitions, and the table and plots of ``fedsim compare`` checked against
``metrics.jsonl``.
"""

from __future__ import annotations

import csv
import json
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.custom_scalar import layout_pb2
from tensorboard.plugins.hparams import plugin_data_pb2

STRATEGIES = ("fedavg", "fedprox")
SEEDS = (0, 1)
ROUNDS = 2
EXPERIMENT = "cmp"


def fedsim(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fedsim.cli", *args],
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
    )


def sweep(output_dir: Path, *extra: str) -> Path:
    done = fedsim(
        "run",
        "-m",
        f"strategy={','.join(STRATEGIES)}",
        f"seed={','.join(map(str, SEEDS))}",
        f"experiment={EXPERIMENT}",
        f"rounds={ROUNDS}",
        "scenario.num_clients=4",
        "backbone=mlp",
        "progress=false",
        f"output_dir={output_dir}",
        *extra,
    )
    assert done.returncode == 0, done.stderr
    return output_dir / EXPERIMENT


@pytest.fixture(scope="module")
def experiment(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return sweep(tmp_path_factory.mktemp("sweep"))


def events(run_dir: Path) -> EventAccumulator:
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "tensors": 0, "images": 0})
    acc.Reload()
    return acc


def rows(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines()]


def dashboard_columns(experiment_info: Any) -> list[str]:
    """The hparams columns TensorBoard's HPARAMS tab shows by default: its backend's
    ordering (``differs`` first, then by name), then the page's first five."""
    from tensorboard.plugins.hparams.backend_context import _sort_and_reduce_to_hparams_limit

    copy = type(experiment_info).FromString(experiment_info.SerializeToString())
    _sort_and_reduce_to_hparams_limit(copy)
    return [h.name for h in copy.hparam_infos][:5]


def run_dirs(experiment: Path) -> dict[tuple[str, int], Path]:
    return {(s, seed): experiment / s / f"seed-{seed}" for s in STRATEGIES for seed in SEEDS}


def test_sweep_writes_one_directory_per_strategy_and_seed(experiment: Path) -> None:
    found = {p.parent.relative_to(experiment).as_posix() for p in experiment.rglob("run.json")}

    assert found == {f"{s}/seed-{seed}" for s in STRATEGIES for seed in SEEDS}
    for run_dir in run_dirs(experiment).values():
        status = json.loads((run_dir / "run.json").read_text())
        assert status["status"] == "complete"
        assert [r["round"] for r in rows(run_dir)] == list(range(1, ROUNDS + 1))
        assert list(run_dir.glob("events.out.tfevents.*"))
        assert (run_dir / "partition.png").stat().st_size > 0


def test_event_files_hold_scalars_hparams_layout_and_pictures(experiment: Path) -> None:
    for (strategy, seed), run_dir in run_dirs(experiment).items():
        acc = events(run_dir)
        scalars = set(acc.Tags()["scalars"])
        for tag in [
            "eval/acc",
            "eval/acc_client/0",
            "eval/acc_client/3",
            "train/loss",
            "comm/bytes_up",
            "comm/bytes_down",
            "comm/bytes_up_total",
            "comm/bytes_down_total",
            "time/round_s",
            "time/elapsed_s",
        ]:
            assert tag in scalars, (run_dir, tag)
        # cumulative bytes are the running sum of the per-round bytes
        per_round = [e.value for e in acc.Scalars("comm/bytes_up")]
        total = [e.value for e in acc.Scalars("comm/bytes_up_total")]
        assert total == pytest.approx(list(np.cumsum(per_round)))

        assert "config/text_summary" in acc.Tags()["tensors"]
        assert "partition" in acc.Tags()["images"]
        hp = acc.PluginTagToContent("hparams")
        start = plugin_data_pb2.HParamsPluginData.FromString(
            hp["_hparams_/session_start_info"]
        ).session_start_info
        assert start.hparams["strategy"].string_value == strategy
        assert start.hparams["seed"].number_value == seed
        experiment_info = plugin_data_pb2.HParamsPluginData.FromString(
            hp["_hparams_/experiment"]
        ).experiment
        metric_tags = {m.name.tag for m in experiment_info.metric_infos}
        assert {"hparams/eval/acc", "hparams/comm/bytes_up_total"} <= metric_tags
        # the HPARAMS tab ticks its first five columns: strategy must be one of them
        assert "strategy" in dashboard_columns(experiment_info)

        # the custom-scalars layout: one chart per metric whose regex matches that tag
        (layout_event,) = acc.Tensors("custom_scalars__config__")
        layout = layout_pb2.Layout.FromString(layout_event.tensor_proto.string_val[0])
        charts = {c.title: c for cat in layout.category for c in cat.chart}
        assert layout.category[0].title == "fedsim eval"
        assert layout.category[0].chart[0].title == "eval/acc"
        for metric in ["eval/acc", "train/loss", "comm/bytes_up_total", "time/elapsed_s"]:
            (regex,) = charts[metric].multiline.tag
            assert [t for t in scalars if re.search(regex, t)] == [metric]


def test_sweep_keeps_settings_and_partitions_fixed_across_strategies(experiment: Path) -> None:
    dirs = run_dirs(experiment)
    configs = {k: json.loads((d / "run.json").read_text())["config"] for k, d in dirs.items()}
    for cfg in configs.values():  # the swept keys aside, every run has the same settings
        assert cfg.pop("strategy")["name"] in STRATEGIES
        assert cfg.pop("seed") in SEEDS
    assert all(cfg == configs["fedavg", 0] for cfg in configs.values())

    for seed in SEEDS:  # same seed: the same clients, whatever the strategy
        a, b = dirs["fedavg", seed], dirs["fedprox", seed]
        assert (a / "partition.txt").read_text() == (b / "partition.txt").read_text()
        assert (a / "partition.png").read_bytes() == (b / "partition.png").read_bytes()
    # another seed: another partition
    seed0 = (dirs["fedavg", 0] / "partition.txt").read_text()
    assert seed0 != (dirs["fedavg", 1] / "partition.txt").read_text()


def test_compare_table_matches_metrics_jsonl_and_plots_render_headless(
    experiment: Path, tmp_path: Path
) -> None:
    # Arrange: a target that some rounds reach and some do not
    every = sorted(r["eval/acc"] for d in run_dirs(experiment).values() for r in rows(d))
    target = every[len(every) // 2]
    out = tmp_path / "cmp-out"
    code = (
        "import sys; from fedsim.cli import main; "
        f"rc = main(['compare', {str(experiment)!r}, '--target', {str(target)!r}, "
        f"'--out', {str(out)!r}]); "
        "assert 'matplotlib.pyplot' not in sys.modules, 'pyplot was imported'; "
        "sys.exit(rc)"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}

    # Act: no display, in a fresh interpreter
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env
    )

    # Assert
    assert done.returncode == 0, done.stderr
    with open(out / "summary.csv", newline="") as f:
        table = {row["strategy"]: row for row in csv.DictReader(f)}
    md = (out / "summary.md").read_text()
    assert set(table) == set(STRATEGIES)
    for strategy in STRATEGIES:
        per_seed = [rows(experiment / strategy / f"seed-{s}") for s in SEEDS]
        finals = [r[-1]["eval/acc"] for r in per_seed]
        bests = [max(x["eval/acc"] for x in r) for r in per_seed]
        hits = [next((x for x in r if x["eval/acc"] >= target), None) for r in per_seed]
        reached = [h for h in hits if h is not None]
        row = table[strategy]
        assert float(row["eval/acc_final_mean"]) == pytest.approx(statistics.mean(finals))
        assert float(row["eval/acc_final_std"]) == pytest.approx(statistics.stdev(finals))
        assert float(row["eval/acc_best_mean"]) == pytest.approx(statistics.mean(bests))
        assert int(row["rounds_to_target_n"]) == len(reached)
        if reached:
            byte_counts = [h["comm/bytes_up_total"] + h["comm/bytes_down_total"] for h in reached]
            assert float(row["rounds_to_target_mean"]) == statistics.mean(
                h["round"] for h in reached
            )
            assert float(row["bytes_to_target_mean"]) == pytest.approx(statistics.mean(byte_counts))
        cell = f"{statistics.mean(finals):.4f} ± {statistics.stdev(finals):.4f}"
        assert f"| {strategy} | 2 | {cell} |" in md
    assert "None: every run is complete." in md
    assert "All runs share the same settings" in md
    # the paired test against fedavg is scipy's on the per-seed finals of the same seeds
    from scipy.stats import ttest_rel

    avg, prox = (
        [rows(experiment / s / f"seed-{k}")[-1]["eval/acc"] for k in SEEDS] for s in STRATEGIES
    )
    assert table["fedprox"]["baseline"] == "fedavg" and table["fedprox"]["pairs"] == "2"
    assert float(table["fedprox"]["mean_diff"]) == pytest.approx(
        statistics.mean(prox) - statistics.mean(avg)
    )
    expected = ttest_rel(prox, avg).pvalue
    if np.isfinite(expected):
        assert float(table["fedprox"]["paired_t_p"]) == pytest.approx(expected)
    for name in ("eval_acc_vs_round.png", "eval_acc_vs_bytes.png"):
        pixels = np.asarray(Image.open(out / name).convert("RGB"), dtype=np.float64)
        assert pixels.shape[0] > 300 and pixels.shape[1] > 400
        assert pixels.std() > 10, f"{name} looks blank"


def test_compare_reports_a_run_in_progress(experiment: Path, tmp_path: Path) -> None:
    # Arrange: a copy of the experiment where one run is still running at round 1
    import shutil

    copy = tmp_path / EXPERIMENT
    shutil.copytree(experiment, copy)
    running = copy / "fedprox" / "seed-1"
    status = json.loads((running / "run.json").read_text())
    status["status"] = "running"
    (running / "run.json").write_text(json.dumps(status))
    first = (running / "metrics.jsonl").read_text().splitlines()[0]
    (running / "metrics.jsonl").write_text(first + "\n")

    # Act
    done = fedsim("compare", str(copy))

    # Assert
    assert done.returncode == 0, done.stderr
    assert "incomplete run fedprox/seed-1: running, 1 of 2 rounds recorded" in done.stdout
    md = (copy / "compare" / "summary.md").read_text()
    assert "| fedprox | 1 (+1 incomplete) |" in md


@pytest.mark.slow
def test_swept_hyper_parameter_gets_its_own_folder_and_hparams_column(tmp_path: Path) -> None:
    experiment = sweep(tmp_path, "train.lr=0.05,0.1")

    found = {p.parent.relative_to(experiment).as_posix() for p in experiment.rglob("run.json")}
    assert found == {
        f"{s}/train.lr={lr}/seed-{seed}"
        for s in STRATEGIES
        for lr in ("0.05", "0.1")
        for seed in SEEDS
    }
    hp = events(experiment / "fedprox" / "train.lr=0.05" / "seed-1").PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(
        hp["_hparams_/session_start_info"]
    ).session_start_info
    assert start.hparams["train.lr"].number_value == 0.05
    experiment_info = plugin_data_pb2.HParamsPluginData.FromString(
        hp["_hparams_/experiment"]
    ).experiment
    assert dashboard_columns(experiment_info)[:2] == ["strategy", "train.lr"]

    done = fedsim("compare", str(experiment))
    assert done.returncode == 0, done.stderr
    md = (experiment / "compare" / "summary.md").read_text()
    assert "| fedprox | train.lr=0.05 | 2 |" in md
    assert "All runs share the same settings" in md


def test_parallel_jobs_get_a_share_of_the_cores() -> None:
    from types import SimpleNamespace

    from fedsim.engine.launchers import job_threads, parallel_jobs

    joblib = "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"
    basic = SimpleNamespace(_target_="hydra._internal.core_plugins.basic_launcher.BasicLauncher")

    assert parallel_jobs(basic, 8) == 1 and job_threads(basic, 8) is None
    assert parallel_jobs(SimpleNamespace(_target_=joblib, n_jobs=-1), 8) == 8
    assert parallel_jobs(SimpleNamespace(_target_=joblib, n_jobs=-2), 8) == 7
    assert job_threads(SimpleNamespace(_target_=joblib, n_jobs=2), 8) == 4
    assert job_threads(SimpleNamespace(_target_=joblib, n_jobs=3), 8) == 2
    assert job_threads(SimpleNamespace(_target_=joblib, n_jobs=-1), 2) == 1


@pytest.mark.slow
def test_joblib_launcher_runs_the_same_sweep_in_parallel_processes(tmp_path: Path) -> None:
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher", reason="hydra-joblib-launcher")
    joblib = ("hydra/launcher=joblib", "hydra.launcher.n_jobs=2")

    experiment = sweep(tmp_path, *joblib, "backbone.width=0.5")

    dirs = run_dirs(experiment)
    for run_dir in dirs.values():
        assert json.loads((run_dir / "run.json").read_text())["status"] == "complete"
    # 2 jobs at once: each ran in a worker process of its own (joblib's loky pool reuses
    # two) with its share of the cores as torch threads
    logs = [(d / "fedsim.log").read_text() for d in dirs.values()]
    found = [re.search(r"process (\d+), (\d+) torch thread\(s\)", text) for text in logs]
    assert all(found), logs
    assert len({m.group(1) for m in found if m}) == 2
    share = max(1, len(os.sched_getaffinity(0)) // 2)
    assert {int(m.group(2)) for m in found if m} == {share}
    # the same sweep again skips every complete run, as with the default launcher
    again = fedsim(
        "run",
        "-m",
        *joblib,
        f"strategy={','.join(STRATEGIES)}",
        f"seed={','.join(map(str, SEEDS))}",
        f"experiment={EXPERIMENT}",
        f"rounds={ROUNDS}",
        "scenario.num_clients=4",
        "backbone=mlp",
        "backbone.width=0.5",
        "progress=false",
        f"output_dir={tmp_path}",
    )
    assert again.returncode == 0, again.stderr
    assert again.stdout.count("already complete") == len(dirs), again.stdout

    done = fedsim("compare", str(experiment))
    assert done.returncode == 0, done.stderr
    md = (experiment / "compare" / "summary.md").read_text()
    assert "| fedavg | 2 |" in md and "| fedprox | 2 |" in md
    assert "## Paired tests against `fedavg`" in md
    assert "All runs share the same settings" in md
