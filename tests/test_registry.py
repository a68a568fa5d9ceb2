"""The algorithm registry: entry points, Flower's strategies by name, SCAFFOLD, plug-ins."""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest

from fedsim.errors import ConfigError
from fedsim.registry import algorithms, get

REPO = Path(__file__).resolve().parents[1]
FEDSIM = Path(sys.executable).parent / "fedsim"


def test_every_shipped_algorithm_is_registered_by_entry_point() -> None:
    names = set(algorithms())
    flower = {"fedadam", "fedyogi", "fedadagrad", "fedavgm", "fedmedian", "fedtrimmedavg"}
    robust = {"krum", "multikrum", "bulyan", "qfedavg"}
    assert {"fedavg", "fedprox", "fedbn", "scaffold", "fraug", "masha1"} | flower | robust <= names
    with pytest.raises(ConfigError, match=r"strategy: unknown 'nope' \(allowed: .*fedavg"):
        get("nope")


FLOWER = ["fedadam", "fedyogi", "fedadagrad", "fedavgm", "fedmedian", "fedtrimmedavg", "krum",
          "multikrum", "bulyan", "qfedavg"]  # fmt: skip


@pytest.mark.parametrize("name", FLOWER)
def test_flower_configs_use_flowers_names_and_defaults(name: str) -> None:
    import flwr.serverapp.strategy as flower

    from protocols.flower import FLOWER_CLASSES

    spec = get(name)
    params = inspect.signature(getattr(flower, FLOWER_CLASSES[name]).__init__).parameters
    ours = {f.name: f.default for f in fields(spec.config) if f.name != "name"}
    for key, default in ours.items():
        assert key in params, f"{name}: {key} is not a Flower argument"
        theirs = params[key].default
        if theirs is not inspect.Parameter.empty and key != "train_loss_key":
            assert default == theirs, f"{name}.{key}: {default} != Flower's {theirs}"


def test_unknown_key_of_a_flower_strategy_is_one_line(tmp_path: Path) -> None:
    from fedsim.conf import compose

    with pytest.raises(ConfigError, match=r"strategy\.etaa"):
        compose(["strategy=fedadam", "strategy.etaa=0.1", f"output_dir={tmp_path}"])
    with pytest.raises(ConfigError, match=r"strategy\.beta_1: must be in \[0, 1\)"):
        compose(["strategy=fedadam", "strategy.beta_1=1.5", f"output_dir={tmp_path}"])
    with pytest.raises(ConfigError, match=r"fedbn keeps batch-norm layers local.*'logreg'"):
        compose(["strategy=fedbn", "backbone=logreg", f"output_dir={tmp_path}"])


def _run_fedsim(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(FEDSIM), "run", *args], capture_output=True, text=True, env=env, timeout=600
    )


def test_an_installed_package_adds_a_strategy_by_entry_point(tmp_path: Path) -> None:
    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--target", str(site), str(REPO / "tests" / "plugin_example")],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    env = dict(os.environ, PYTHONPATH=str(site))
    common = ["strategy=coordmedian", "rounds=2", "backbone.width=0.25", "progress=false",
              f"output_dir={tmp_path / 'runs'}"]  # fmt: skip
    done = _run_fedsim(common, env)
    assert done.returncode == 0, done.stderr
    record = json.loads((tmp_path / "runs/digits_iid/coordmedian/seed-0/run.json").read_text())
    assert record["status"] == "complete" and record["final"]["eval/acc"] > 0.1
    bad = _run_fedsim([*common, "strategy.trim=0.7"], env)
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [
        "fedsim: error: strategy.trim: must be in [0, 0.5), got 0.7"
    ]
    without = _run_fedsim(common)  # not installed: an unknown name, one line
    assert without.returncode == 2 and "unknown 'coordmedian'" in without.stderr


def test_scaffold_against_fedavg_on_pathological_label_skew(tmp_path: Path) -> None:
    """Equal rounds and local steps on digits_pathological_2 (2 classes per client)."""
    from fedsim.api import run

    common = {"scenario": "digits_pathological_2", "rounds": 8, "seed": 0,
              "overrides": ["backbone.width=0.25", "train.local_steps=10", "runtime.threads=1",
                            f"output_dir={tmp_path}", "progress=false"]}  # fmt: skip
    fedavg = run(strategy="fedavg", **common).metrics  # type: ignore[arg-type]
    scaffold = run(strategy="scaffold", **common).metrics  # type: ignore[arg-type]
    print(f"round 8: fedavg eval/global_acc={fedavg['eval/global_acc']:.4f}, "
          f"scaffold eval/global_acc={scaffold['eval/global_acc']:.4f}")  # fmt: skip
    assert scaffold["eval/global_acc"] > 0.3  # it learns under strong label skew
    ckpt_keys = run(strategy="scaffold", **{**common, "rounds": 2, "overrides": [  # type: ignore[arg-type]
        *common["overrides"], "checkpoint_every=1", "experiment=ck"]}).run_dir  # fmt: skip
    import numpy as np

    with np.load(Path(ckpt_keys) / "checkpoint.npz", allow_pickle=False) as z:
        names = list(z.keys())
    assert any("c/" in n for n in names), "the server control variate is checkpointed"


def test_readme_strategy_table_lists_every_registered_name() -> None:
    text = (REPO / "README.md").read_text()
    missing = [n for n in algorithms() if f"| `{n}` |" not in text]
    assert not missing, f"README's strategy table lacks {missing}"


@pytest.mark.parametrize("kind", ["server_fixed", "server_adaptive", "client_fixed",
                                  "client_adaptive"])  # fmt: skip
def test_flowers_dp_wrappers_run_on_any_strategy(kind: str, tmp_path: Path) -> None:
    from fedsim.api import run

    result = run(strategy="fedprox", rounds=2, overrides=[
        f"dp.kind={kind}", "dp.noise_multiplier=0.1", "dp.clipping_norm=5",
        "backbone.width=0.25", f"output_dir={tmp_path}", "progress=false"])  # fmt: skip
    assert 0.0 <= result.metrics["eval/acc"] <= 1.0
    log = (result.run_dir / "fedsim.log").read_text()
    assert "ERROR" not in log, log[-2000:]
