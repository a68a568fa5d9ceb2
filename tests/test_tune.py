"""``fedsim tune``: equal budgets, validation splits only, fresh seeds, read by compare."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fedsim.cli import main as cli_main
from fedsim.errors import ConfigError
from fedsim.tune import draw_settings, parse_space

TINY = ["rounds=2", "scenario.num_clients=2", "backbone=mlp", "progress=false"]
TINY += ["runtime.threads=1"]


def test_parse_space() -> None:
    lr = parse_space("train.lr=log:0.01:0.3")
    mu = parse_space("fedprox:strategy.mu=uniform:0:1")
    opt = parse_space("train.optimizer=choice:sgd:adam")

    assert (lr.key, lr.kind, lr.args, lr.strategy) == ("train.lr", "log", ("0.01", "0.3"), "")
    assert (mu.key, mu.strategy) == ("strategy.mu", "fedprox")
    assert opt.args == ("sgd", "adam")
    for bad, message in [
        ("train.lr", "expected [STRATEGY:]KEY=KIND:ARGS"),
        ("train.lr=normal:0:1", "KIND one of log, uniform, int, choice"),
        ("train.lr=log:0:1", "LOW <= HIGH and LOW > 0"),
        ("train.lr=uniform:1", "uniform needs two numbers"),
    ]:
        with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
            parse_space(bad)


def test_every_strategy_gets_the_same_budget_and_the_same_shared_values() -> None:
    spaces = [parse_space("train.lr=log:0.01:0.3"), parse_space("fedprox:strategy.mu=int:1:9")]

    drawn = draw_settings(["fedavg", "fedprox"], spaces, trials=5, seed=3)
    again = draw_settings(["fedavg", "fedprox"], spaces, trials=5, seed=3)

    assert drawn == again  # seeded
    # a strategy's draws do not depend on which other strategies are tuned, or their order
    assert draw_settings(["fedprox"], spaces, trials=5, seed=3)["fedprox"] == drawn["fedprox"]
    assert len(drawn["fedavg"]) == len(drawn["fedprox"]) == 5
    assert [t["train.lr"] for t in drawn["fedavg"]] == [t["train.lr"] for t in drawn["fedprox"]]
    assert all(set(t) == {"train.lr"} for t in drawn["fedavg"])
    assert all(1 <= t["strategy.mu"] <= 9 for t in drawn["fedprox"])
    lrs = np.array([t["train.lr"] for t in drawn["fedavg"]])
    assert np.all((lrs >= 0.01) & (lrs <= 0.3)) and len(set(lrs)) > 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--seeds", "0"], "final seeds [0] are also tuning seeds"),
        (["--space", "fedbn:train.lr=log:0.1:0.2"], "--space for fedbn, which is not in"),
        (["--trials", "0"], "--trials must be >= 1"),
        (["--validation-fraction", "0"], "--validation-fraction must be in (0, 1)"),
        (["train.nope=1"], "train.nope"),
    ],
)
def test_bad_tuning_input_fails_in_one_line_before_any_run(
    tmp_path: Path,
    capsys,  # type: ignore[no-untyped-def]
    args: list[str],
    message: str,
) -> None:
    base = ["tune", "--strategies", "fedavg,fedprox", "--space", "train.lr=log:0.01:0.3"]

    rc = cli_main([*base, *args, f"output_dir={tmp_path}", *TINY])

    err = capsys.readouterr().err
    assert rc == 2 and message in err, err
    assert len(err.strip().splitlines()) == 1
    assert not list(tmp_path.iterdir())


@pytest.mark.slow
def test_tune_then_rerun_on_fresh_seeds_then_compare(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    args = ["tune", "--strategies", "fedavg,fedprox", "--trials", "2", "--seeds", "1,2"]
    args += ["--space", "train.lr=log:0.02:0.2", "--space", "fedprox:strategy.mu=log:0.001:0.1"]
    args += [f"output_dir={tmp_path}", "experiment=tuned", *TINY]

    assert cli_main(args) == 0

    report = json.loads((tmp_path / "tuned" / "tune.json").read_text())
    for name in ("fedavg", "fedprox"):
        entry = report["strategies"][name]
        trials = entry["trials"]
        assert len(trials) == 2  # the same budget for both
        # the chosen setting is the best validation score among the trials
        assert entry["best"] == max(trials, key=lambda t: t["validation"])["setting"]
        for t in trials:  # each trial's score is the final eval/acc its run recorded
            tag = ",".join(f"{k}={v}" for k, v in sorted(t["setting"].items()))
            run = tmp_path / "tuned-trials" / name / tag / "seed-0" / "run.json"
            record = json.loads(run.read_text())
            assert record["final"]["eval/acc"] == pytest.approx(t["validation"])
            evaluation = record["config"]["scenario"]["evaluation"]
            assert evaluation["validation_fraction"] == 0.2
            assert evaluation["global_test"] is False  # the test set is never looked at
            assert "eval/global_acc" not in record["final"]
        # final runs: the best setting, fresh seeds, the usual holdout and test set
        for seed, run_dir in zip((1, 2), entry["final_runs"], strict=True):
            record = json.loads((Path(run_dir) / "run.json").read_text())
            assert record["status"] == "complete" and record["config"]["seed"] == seed
            assert record["config"]["scenario"]["evaluation"]["validation_fraction"] == 0.0
            assert record["config"]["train"]["lr"] == entry["best"]["train.lr"]
            assert "eval/global_acc" in record["final"]
    assert "strategy.mu" in report["strategies"]["fedprox"]["best"]
    assert "| fedprox | 1 |" in (tmp_path / "tuned" / "tune.md").read_text()

    # the same command again reuses every complete run
    capsys.readouterr()
    assert cli_main(args) == 0
    assert capsys.readouterr().out.count("reusing complete run") == 8

    assert cli_main(["compare", str(tmp_path / "tuned")]) == 0
    md = (tmp_path / "tuned" / "compare" / "summary.md").read_text()
    assert "## Paired tests against `fedavg`" in md
    assert md.count("| 2 |") >= 2  # two seeds per strategy
    assert "All runs share the same settings" in md
