"""``fedsim.run``: the notebook API runs what the CLI runs and fails the way it fails."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import fedsim
from fedsim.api import to_overrides
from fedsim.errors import ConfigError, UserError

TINY = {
    "backbone": "mlp",
    "scenario__num_clients": 2,
    "runtime__threads": 1,
    "progress": False,
}


def cli_error(*args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "fedsim.cli", "run", *args],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2, done.stderr
    return done.stderr.strip().removeprefix("fedsim: error: ")


def test_import_fedsim_is_light() -> None:
    code = (
        "import sys, fedsim; heavy = {'torch', 'flwr', 'hydra', 'omegaconf', 'ray'}; "
        "print(sorted(heavy & set(sys.modules)))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_keywords_become_overrides() -> None:
    assert to_overrides({"train__lr": 0.01, "progress": False, "x": [1, 2], "s": "a"}) == [
        "train.lr=0.01",
        "progress=false",
        "x=[1,2]",
        "s=a",
    ]


def test_run_returns_final_metrics_and_run_directory(tmp_path: Path) -> None:
    result = fedsim.run(
        strategy="fedprox", rounds=2, overrides=["strategy.mu=0.1"], output_dir=tmp_path, **TINY
    )

    assert result.run_dir == tmp_path / "digits_iid" / "fedprox" / "seed-0"
    record = json.loads((result.run_dir / "run.json").read_text())
    assert record["status"] == "complete"
    assert result.metrics == pytest.approx(record["final"])
    assert 0.0 <= result.metrics["eval/acc"] <= 1.0 and result.metrics["rounds"] == 2
    assert result.config["strategy"] == {"name": "fedprox", "mu": 0.1}
    assert result.config["scenario"]["num_clients"] == 2
    # a second call refuses to overwrite the complete run, as the CLI does
    with pytest.raises(UserError, match="already holds a complete run; pass overwrite=true"):
        fedsim.run(strategy="fedprox", rounds=2, output_dir=tmp_path, **TINY)


@pytest.mark.parametrize(
    ("kwargs", "cli"),
    [
        ({"rounds": 0}, ["rounds=0"]),
        ({"strategy": "nope"}, ["strategy=nope"]),
        ({"train__lr": -1}, ["train.lr=-1"]),
        ({"train__nope": 1}, ["train.nope=1"]),
    ],
)
def test_bad_values_raise_the_cli_message(
    tmp_path: Path, kwargs: dict[str, object], cli: list[str]
) -> None:
    with pytest.raises(ConfigError) as raised:
        fedsim.run(output_dir=tmp_path, **kwargs)  # type: ignore[arg-type]

    assert str(raised.value) == cli_error(*cli, f"output_dir={tmp_path}")
    assert not any(tmp_path.iterdir())  # nothing half-written


def test_a_sweep_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"seed: fedsim\.run runs one experiment"):
        fedsim.run(overrides=["seed=0,1"], output_dir=tmp_path)


@pytest.mark.slow
def test_the_readme_example_works_as_typed(tmp_path: Path) -> None:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("## Python API", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}

    done = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, env=env
    )

    assert done.returncode == 0, done.stderr[-2000:]
    acc, run_dir = done.stdout.split()
    assert 0.0 <= float(acc) <= 1.0
    record = json.loads((tmp_path / run_dir / "run.json").read_text())
    assert record["config"]["strategy"] == {"name": "fedprox", "mu": 0.1}
    assert record["config"]["scenario"]["name"] == "digits_dirichlet_0.1"
