"""Scenario files: the shipped ones load and run, malformed ones stop cleanly.

* Every file in ``scenarios/`` loads and validates, says what it models in its first
  comment line, is listed in ``scenarios/README.md``, and runs 2 rounds (FedAvg, tiny
  budgets) with the participation the file states.  Embedded-digit scenarios and the small
  Office-Caltech-10 run by default; the other real-data ones are ``slow`` and skip without
  ``../shared/data``.
* Same seed: byte-identical partitions and participation plans (also across worker counts).
* Every file in ``tests/malformed/scenarios/`` makes ``fedsim run`` exit with status 2 and
  one ``fedsim: error:`` line naming the file, the key path and the expected fragment from
  the file's own header, with no traceback and no run directory.
* A scenario written from ``scenarios/README.md`` alone runs as written.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import fields, is_dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO, shared_file
from omegaconf import OmegaConf

from fedsim.cli import main as cli_main
from fedsim.config import ScenarioConfig
from fedsim.data.federation import build_federation
from fedsim.data.participation import ParticipationSampler
from fedsim.engine.conf import compose, load_scenario_file, scenario_files
from fedsim.engine.runner import execute
from fedsim.errors import ConfigError

SCENARIOS = sorted(scenario_files())
MALFORMED_DIR = REPO / "tests" / "malformed" / "scenarios"
MALFORMED = sorted(MALFORMED_DIR.glob("*.yaml"))
README = REPO / "scenarios" / "README.md"

#: Real-data scenarios small enough for the default suite.
FAST_REAL = {"office_caltech10"}
#: Strategies for scenarios that are not classification (FedAvg needs a backbone).
STRATEGY_FOR_TASK = {"bilinear": "eg"}
#: Tiny budgets: 2 rounds, 2 local steps, a narrow backbone.
SMALL = ["rounds=2", "backbone.width=0.125", "train.local_steps=2", "progress=false"]


@pytest.fixture(autouse=True)
def _one_torch_thread() -> Iterator[None]:
    """Tiny models on 2 shared cores: a second intra-op thread only spins."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _scenario(name: str) -> ScenarioConfig:
    obj = OmegaConf.to_object(load_scenario_file(scenario_files()[name]))
    assert isinstance(obj, ScenarioConfig)
    return obj


def _is_embedded(name: str) -> bool:
    s = _scenario(name)
    return s.task != "classification" or all(
        src.format == "sklearn_digits" for src in s.dataset.sources
    )


def _require_data(s: ScenarioConfig) -> None:
    """Skip (naming the file) when a data file of the scenario is absent."""
    if s.task != "classification" or s.dataset.data_root:
        return
    for src in s.dataset.sources:
        for rel in (src.train, src.test, src.train_labels, src.test_labels):
            if rel and not Path(rel).is_absolute():
                shared_file(rel)


def _run_params() -> list[object]:
    out: list[object] = []
    for name in SCENARIOS:
        slow = not _is_embedded(name) and name not in FAST_REAL
        out.append(pytest.param(name, marks=[pytest.mark.slow] if slow else [], id=name))
    return out


def _metrics(run_dir: Path) -> list[dict[str, float]]:
    text = (run_dir / "metrics.jsonl").read_text()
    return [json.loads(line) for line in text.splitlines()]


# --------------------------------------------------------------------------- shipped files


def test_at_least_the_issue_scenarios_are_shipped() -> None:
    required = {
        "digits_iid",
        "digits_dirichlet_0.1",
        "digits_pathological_2",
        "digits_quantity_skew",
        "rotated_digits",
        "digits_feature_shift",
        "office_caltech10",
        "pacs",
        "cross_device_1000",
        "mnist_dirichlet",
    }
    assert required <= set(SCENARIOS), sorted(required - set(SCENARIOS))


@pytest.mark.parametrize("name", SCENARIOS)
def test_shipped_scenario_loads_validates_and_is_documented(name: str) -> None:
    strategy = STRATEGY_FOR_TASK.get(_scenario(name).task, "fedavg")
    cfg = compose([f"scenario={name}", f"strategy={strategy}"])

    first = scenario_files()[name].read_text().splitlines()[0]
    assert cfg.scenario.name == name
    assert first.startswith(f"# {name}: ") and len(first) > len(name) + 20, first
    assert f"`{name}`" in README.read_text(), f"{name} is not listed in scenarios/README.md"


def test_readme_documents_every_scenario_key() -> None:
    text = README.read_text()
    missing: list[str] = []

    def walk(cls: type, path: str) -> None:
        for f in fields(cls):
            if f"| `{f.name}` |" not in text:
                missing.append(f"{path}{f.name}")
        for f in fields(cls):
            default = cls().__dict__[f.name]
            if is_dataclass(default):
                assert f"### `{f.name}`" in text, f"no README section for {path}{f.name}"
                walk(type(default), f"{path}{f.name}.")
            elif isinstance(default, list) and default and is_dataclass(default[0]):
                walk(type(default[0]), f"{path}{f.name}[].")

    walk(ScenarioConfig, "")
    assert not missing, f"keys without a README row: {missing}"


@pytest.mark.parametrize("name", _run_params())
def test_shipped_scenario_runs_two_rounds(name: str, tmp_path: Path) -> None:
    s = _scenario(name)
    _require_data(s)
    strategy = STRATEGY_FOR_TASK.get(s.task, "fedavg")
    cfg = compose([f"scenario={name}", f"strategy={strategy}", f"output_dir={tmp_path}", *SMALL])

    record = execute(cfg)

    assert record["status"] == "complete"
    rows = _metrics(Path(record["run_dir"]))
    assert [r["round"] for r in rows] == [1, 2]
    sampler = ParticipationSampler(s.participation, s.num_clients, cfg.seed)
    if s.task != "classification":  # its own strategies and metrics (protocols.masha_task)
        return
    for row in rows:  # the run followed the participation the file states
        plan = sampler.plan(int(row["round"]))
        assert row["sys/selected_clients"] == len(plan.selected)
        assert row["sys/dropped_clients"] == len(plan.dropped)
        assert row["sys/late_clients"] == len(plan.late)
        if not plan.skip:
            assert row["sys/aggregated_clients"] == len(plan.reporting)
            assert math.isfinite(row["train/loss"])
    assert 0.0 <= rows[-1]["eval/global_acc"] <= 1.0
    assert (Path(record["run_dir"]) / "partition.png").stat().st_size > 0


# --------------------------------------------------------------------------- determinism


EMBEDDED = [n for n in SCENARIOS if _is_embedded(n) and _scenario(n).task == "classification"]


@pytest.mark.parametrize("name", EMBEDDED)
def test_same_seed_gives_byte_identical_partitions(name: str) -> None:
    s = _scenario(name)

    a, b, other = build_federation(s, 3), build_federation(s, 3), build_federation(s, 4)

    def blob(fed: object) -> bytes:
        parts = [*fed.train_parts, *fed.holdout_parts]  # type: ignore[attr-defined]
        return b"|".join(np.ascontiguousarray(p, dtype=np.int64).tobytes() for p in parts)

    assert blob(a) == blob(b)
    assert blob(a) != blob(other), "a different seed should give a different split"
    assert all(p.dtype == np.int64 for p in a.train_parts)


@pytest.mark.parametrize("name", SCENARIOS)
def test_same_seed_gives_identical_participation_plans(name: str) -> None:
    s = _scenario(name)
    make = lambda seed: ParticipationSampler(s.participation, s.num_clients, seed)  # noqa: E731

    first, again = make(7), make(7)
    rounds = range(1, 31)

    assert all(first.plan(r) == again.plan(r) for r in reversed(rounds))  # any order
    assert np.array_equal(first.stragglers, again.stragglers)


def test_cross_device_plans_model_what_the_file_says() -> None:
    s = _scenario("cross_device_1000")
    sampler = ParticipationSampler(s.participation, s.num_clients, seed=0)

    plans = [sampler.plan(r) for r in range(1, 49)]  # two simulated days

    assert s.num_clients == 1000 and {len(p.selected) for p in plans} == {10}
    available = np.array([len(p.available) for p in plans])
    assert 400 < available.mean() < 800 and available.min() < available.max()
    assert sum(len(p.dropped) for p in plans) > 0
    assert sum(len(p.late) for p in plans) > 0
    assert len(sampler.stragglers) == 200


@pytest.mark.slow
def test_partition_and_metrics_identical_across_worker_counts(tmp_path: Path) -> None:
    runs = []
    for workers in (0, 2):
        cfg = compose(
            [
                "scenario=digits_dirichlet_0.1",
                f"output_dir={tmp_path}/w{workers}",
                f"runtime.workers={workers}",
                "runtime.threads=1",
                *SMALL,
            ]
        )
        runs.append(Path(execute(cfg)["run_dir"]))

    assert (runs[0] / "partition.txt").read_bytes() == (runs[1] / "partition.txt").read_bytes()
    strip = [{k: v for k, v in r.items() if not k.startswith("time/")} for r in _metrics(runs[0])]
    other = [{k: v for k, v in r.items() if not k.startswith("time/")} for r in _metrics(runs[1])]
    assert strip == other  # per-client accuracies equal => the workers built the same clients


# --------------------------------------------------------------------------- malformed files


def _header(path: Path) -> tuple[list[str], list[str]]:
    """Expected message fragments and needed data files from the file's comment header."""
    expect: list[str] = []
    needs: list[str] = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        if "expect:" in line:
            expect.append(line.split("expect:", 1)[1].strip())
        if line.startswith("# needs:"):
            needs.append(line.split("needs:", 1)[1].strip())
    return expect, needs


def test_there_are_at_least_25_malformed_scenarios() -> None:
    assert len(MALFORMED) >= 25
    for path in MALFORMED:
        expect, _ = _header(path)
        assert expect and all(expect), f"{path.name}: first line must say 'expect: <fragment>'"


@pytest.mark.parametrize("path", MALFORMED, ids=lambda p: p.stem)
def test_malformed_scenario_stops_with_one_line(
    path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    expect, needs = _header(path)
    for rel in needs:
        shared_file(rel)
    out_dir = tmp_path / "runs"

    try:
        code = cli_main(["run", f"scenario={path}", f"output_dir={out_dir}", *SMALL])
    except SystemExit as e:  # errors found inside the Hydra task exit from there
        code = e.code
    captured = capsys.readouterr()

    assert code == 2
    lines = [ln for ln in captured.err.splitlines() if ln.strip()]
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("fedsim: error: ")
    assert path.name in lines[0]
    for fragment in expect:
        assert fragment in lines[0]
    assert "Traceback" not in captured.err + captured.out
    assert not out_dir.exists(), "a failed scenario must not create a run directory"


@pytest.mark.parametrize("name", ["unknown_source_key", "more_clients_than_samples"])
def test_malformed_scenario_through_the_real_command(name: str, tmp_path: Path) -> None:
    path = MALFORMED_DIR / f"{name}.yaml"
    (expect, _) = _header(path)

    proc = subprocess.run(
        [sys.executable, "-m", "fedsim.cli", "run", f"scenario={path}", f"output_dir={tmp_path}/r"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )

    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("fedsim: error: ")
    assert path.name in proc.stderr and all(f in proc.stderr for f in expect)
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "r").exists()


# --------------------------------------------------------------------------- from the README


WRITTEN_FROM_README = """\
# eight_blurry_clients: written from scenarios/README.md only.
name: eight_blurry_clients
num_clients: 8
dataset:
  sources:
    - {name: digits, format: sklearn_digits, fraction: 0.9}
  image_size: 12
  channels: 3
  test_fraction: 0.25
  normalize: false
partition:
  kind: quantity_skew
  quantity: powerlaw
  power: 2.0
  min_samples: 20
shift:
  kind: contrast
  contrast: [0.6, 1.4]
  brightness: [-0.1, 0.1]
  clients: [1, 3, 5]
participation:
  clients_per_round: 5
  min_clients: 2
  availability: 0.9
  dropout: 0.1
  straggler_fraction: 0.25
  straggler_slowdown: 2.0
  deadline: 3.0
evaluation:
  holdout_fraction: 0.25
  fraction: 0.5
  global_test: true
"""


def test_scenario_written_from_the_readme_runs_as_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "eight_blurry_clients.yaml"
    path.write_text(WRITTEN_FROM_README)

    code = cli_main(["run", f"scenario={path}", f"output_dir={tmp_path}/runs", *SMALL])
    captured = capsys.readouterr()

    assert code == 0, captured.err
    assert "fedsim: fedavg on eight_blurry_clients (seed 0): eval/acc=" in captured.out
    run_dir = tmp_path / "runs" / "eight_blurry_clients" / "fedavg" / "seed-0"
    record = json.loads((run_dir / "run.json").read_text())
    assert record["status"] == "complete"
    sc = record["config"]["scenario"]
    assert sc["partition"]["quantity"] == "powerlaw" and sc["shift"]["clients"] == [1, 3, 5]
    assert [r["sys/selected_clients"] for r in _metrics(run_dir)] == [5.0, 5.0]
    table = (run_dir / "partition.txt").read_text()
    assert re.search(r"^\s+7\s+\d+", table, re.M), table  # 8 clients listed


@pytest.mark.slow
def test_readme_example_runs_as_written(tmp_path: Path) -> None:
    block = re.search(r"```yaml\n(.*?)```", README.read_text(), re.S)
    assert block is not None
    path = tmp_path / "usps_mnist_blur.yaml"
    path.write_text(block.group(1))
    s = OmegaConf.to_object(load_scenario_file(path))
    assert isinstance(s, ScenarioConfig)
    _require_data(s)

    record = execute(compose([f"scenario={path}", f"output_dir={tmp_path}/runs", *SMALL]))

    assert record["status"] == "complete"
    assert record["config"]["scenario"]["num_clients"] == 4


def test_an_edited_scenario_file_is_read_again(tmp_path: Path) -> None:
    # compose keeps the scenarios it has read; a changed file (mtime, size) is re-read
    import os

    path = tmp_path / "mine.yaml"
    path.write_text("num_clients: 4\n")
    assert compose([f"scenario={path}"]).scenario.num_clients == 4
    assert compose([f"scenario={path}"]).scenario.num_clients == 4
    path.write_text("num_clients: 12\n")
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert compose([f"scenario={path}"]).scenario.num_clients == 12
    path.write_text("num_clients: [1]\n")
    with pytest.raises(ConfigError, match="num_clients"):
        compose([f"scenario={path}"])
