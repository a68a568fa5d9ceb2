"""``fedsim tune``: equal budgets, validation splits only, fresh seeds, read by compare;
Optuna studies in SQLite that prune, resume after a kill and are shared by workers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fedsim.analysis.tune import draw_settings, parse_space, sobol_settings
from fedsim.analysis.tune_report import tune_markdown
from fedsim.analysis.tune_trial import validation_value
from fedsim.cli import main as cli_main
from fedsim.errors import ConfigError, UserError

optuna = pytest.importorskip("optuna")

ROOT = Path(__file__).resolve().parents[1]
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


@pytest.mark.parametrize("design", [draw_settings, sobol_settings])
def test_every_strategy_gets_the_same_budget_and_the_same_shared_values(design: Any) -> None:
    spaces = [parse_space("train.lr=log:0.01:0.3"), parse_space("fedprox:strategy.mu=int:1:9")]

    drawn = design(["fedavg", "fedprox"], spaces, trials=5, seed=3)
    again = design(["fedavg", "fedprox"], spaces, trials=5, seed=3)

    assert drawn == again  # seeded
    # a strategy's draws do not depend on which other strategies are tuned, or their order
    assert design(["fedprox"], spaces, trials=5, seed=3)["fedprox"] == drawn["fedprox"]
    assert len(drawn["fedavg"]) == len(drawn["fedprox"]) == 5
    assert [t["train.lr"] for t in drawn["fedavg"]] == [t["train.lr"] for t in drawn["fedprox"]]
    assert all(set(t) == {"train.lr"} for t in drawn["fedavg"])
    assert all(1 <= t["strategy.mu"] <= 9 for t in drawn["fedprox"])
    lrs = np.array([t["train.lr"] for t in drawn["fedavg"]])
    assert np.all((lrs >= 0.01) & (lrs <= 0.3)) and len(set(lrs)) > 1


def test_qmc_puts_one_candidate_in_each_eighth_of_the_range() -> None:
    # 8 points of a scrambled Sobol sequence stratify [0, 1): one per interval [k/8, (k+1)/8)
    space = [parse_space("train.momentum=uniform:0:1")]

    points = [t["train.momentum"] for t in sobol_settings(["fedavg"], space, 8, 0)["fedavg"]]
    randoms = [t["train.momentum"] for t in draw_settings(["fedavg"], space, 8, 0)["fedavg"]]

    assert sorted(int(p * 8) for p in points) == list(range(8))
    assert sorted(int(p * 8) for p in randoms) != list(range(8))  # what random search lacks


def test_the_validation_metric_is_read_from_the_selection_split_when_reported() -> None:
    both = {"round": 3, "eval/acc": 0.9, "eval/val_acc": 0.7, "eval/loss": 0.2}

    assert validation_value(both, "eval/acc") == 0.7  # eval/acc is the holdout's: not this
    assert validation_value({"eval/acc": 0.9}, "eval/acc") == 0.9  # runs without eval/val_acc
    assert validation_value(both, "eval/loss") == 0.2
    assert validation_value({"eval/val_loss": 0.4, "eval/loss": 0.2}, "eval/loss") == 0.4
    assert validation_value({"train/loss": 1.0}, "eval/acc") is None  # a round without eval


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--seeds", "0"], "final seeds [0] are also tuning seeds"),
        (["--space", "fedbn:train.lr=log:0.1:0.2"], "--space for fedbn, which is not in"),
        (["--trials", "0"], "--trials must be >= 1"),
        (["--validation-fraction", "0"], "--validation-fraction must be in (0, 1)"),
        (["train.nope=1"], "train.nope"),
        (["--sampler", "grid"], "argument --sampler: invalid choice: 'grid'"),
        (["--pruner", "patient"], "argument --pruner: invalid choice: 'patient'"),
        (["--workers", "0"], "--workers must be >= 1"),
        (["--storage", "sqlite:////nonexistent-dir/x/optuna.db"], "cannot open it"),
        (["--storage", "postgresql://nobody@127.0.0.1:1/none"], "cannot open it"),
    ],
)
def test_bad_tuning_input_fails_in_one_line_before_any_run(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    message: str,
) -> None:
    base = ["tune", "--strategies", "fedavg,fedprox", "--space", "train.lr=log:0.01:0.3"]

    rc = cli_main([*base, *args, f"output_dir={tmp_path}", *TINY])

    err = capsys.readouterr().err
    assert rc == 2 and message in err, err
    assert len(err.strip().splitlines()) == 1
    assert not list(tmp_path.iterdir())  # no study, no run directory


# --------------------------------------------------------------------------- studies


def _study(tmp_path: Path, trials: int = 2, seed: int = 0) -> tuple[Any, Any, Any]:
    from fedsim.analysis.tune_study import (
        StudyPlan,
        ensure_study,
        make_pruner,
        make_sampler,
        open_storage,
    )

    store = open_storage(f"sqlite:///{tmp_path / 'optuna.db'}")
    plan = StudyPlan("exp/fedavg", "fedavg", trials, "random", "median", "maximize", {"s": seed})
    space = [parse_space("train.lr=log:0.01:0.3")]
    candidates = draw_settings(["fedavg"], space, trials, seed)["fedavg"]
    sampler, pruner = make_sampler("random", 0, trials), make_pruner("median", 1, 1, 4)
    return ensure_study(store, plan, candidates, sampler, pruner), store, candidates


def test_a_study_holds_the_enqueued_candidates_and_refuses_another_plan(tmp_path: Path) -> None:
    study, _, candidates = _study(tmp_path, trials=3)

    waiting = study.get_trials(states=(optuna.trial.TrialState.WAITING,))
    again, _, _ = _study(tmp_path, trials=3)  # the same plan: loaded, nothing enqueued twice

    assert [t.system_attrs["fixed_params"] for t in waiting] == candidates
    assert len(again.trials) == 3
    with pytest.raises(UserError, match="was made with s=0, this tuning has 1"):
        _study(tmp_path, trials=3, seed=1)


def test_a_trial_left_running_by_a_killed_tuning_resumes_under_its_number(tmp_path: Path) -> None:
    from fedsim.analysis.tune_study import BEAT_ATTR, GRACE_S, recover

    study, store, candidates = _study(tmp_path)
    dists = {"train.lr": parse_space("train.lr=log:0.01:0.3").distribution()}
    first = study.ask(fixed_distributions=dists)
    first.report(0.5, 1)
    first.set_user_attr(BEAT_ATTR, time.time())  # a live heartbeat: still running

    alive = recover(study, store)
    first.set_user_attr(BEAT_ATTR, time.time() - GRACE_S - 1)  # the process died
    stale = recover(study, store)
    resumed = study.ask(fixed_distributions=dists)

    assert (alive, stale) == (1, 0)
    assert resumed.number == first.number == 0
    assert resumed.params == candidates[0]
    assert study.trials[0].intermediate_values == {1: 0.5}  # what it reported is kept


def test_a_failed_trial_is_enqueued_again_with_its_parameters(tmp_path: Path) -> None:
    from fedsim.analysis.tune_study import recover

    study, store, candidates = _study(tmp_path)
    dists = {"train.lr": parse_space("train.lr=log:0.01:0.3").distribution()}
    failed = study.ask(fixed_distributions=dists)
    study.tell(failed, state=optuna.trial.TrialState.FAIL)

    recover(study, store)
    recover(study, store)  # idempotent
    waiting = study.get_trials(states=(optuna.trial.TrialState.WAITING,))

    assert sorted(t.system_attrs["fixed_params"]["train.lr"] for t in waiting) == sorted(
        c["train.lr"] for c in candidates
    )


@pytest.mark.parametrize(
    ("name", "stops"), [("none", False), ("median", True), ("hyperband", True)]
)
def test_the_pruners_stop_a_hopeless_trial_and_only_it(name: str, stops: bool) -> None:
    from fedsim.analysis.tune_study import make_pruner

    study = optuna.create_study(direction="maximize", pruner=make_pruner(name, 1, 2, 9))
    for good in range(6):  # climbing from 0.55 to 0.95 over 9 rounds
        trial = study.ask()
        for rnd in range(1, 10):
            trial.report(0.5 + 0.05 * rnd + 0.01 * good, rnd)
            assert not trial.should_prune()
        study.tell(trial, 0.95 + 0.01 * good)

    stopped = []
    for _ in range(4):  # stuck at chance level
        trial = study.ask()
        at = None
        for rnd in range(1, 10):
            trial.report(0.1, rnd)
            if trial.should_prune():
                at = rnd
                break
        if at is None:
            study.tell(trial, 0.1)
        else:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        stopped.append(at)

    if not stops:
        assert stopped == [None] * 4
    else:  # never in the warm-up round, always before the end
        assert all(at is not None and 2 <= at < 9 for at in stopped), stopped


def test_tpe_starts_from_half_the_random_candidates_then_proposes_its_own(tmp_path: Path) -> None:
    from fedsim.analysis.tune import _candidates
    from fedsim.analysis.tune_study import (
        StudyPlan,
        ensure_study,
        make_pruner,
        make_sampler,
        open_storage,
    )

    space = parse_space("train.lr=log:0.01:0.3")
    start = _candidates("tpe", ["fedavg"], [space], 6, 0)["fedavg"]
    store = open_storage(f"sqlite:///{tmp_path / 'optuna.db'}")
    plan = StudyPlan("exp/fedavg", "fedavg", 6, "tpe", "none", "maximize", {})
    study = ensure_study(
        store, plan, start, make_sampler("tpe", 0, 3), make_pruner("none", 1, 2, 4)
    )

    dists = {"train.lr": space.distribution()}
    for _ in range(3):  # the enqueued start-up trials come first
        trial = study.ask(fixed_distributions=dists)
        study.tell(trial, -abs(trial.params["train.lr"] - 0.05))
    proposed = study.ask(fixed_distributions=dists).params["train.lr"]

    assert start == draw_settings(["fedavg"], [space], 6, 0)["fedavg"][:3]
    assert [t.params for t in study.trials[:3]] == start
    assert 0.01 <= proposed <= 0.3 and {"train.lr": proposed} not in start


def test_tune_md_marks_pruned_trials_with_their_round() -> None:
    trial = {"setting": {"train.lr": 0.1}, "validation": 0.8, "rounds": 5, "number": 0}
    pruned = {"setting": {"train.lr": 0.01}, "validation": float("nan"), "rounds": 3}
    pruned |= {"number": 1, "state": "pruned", "pruned_at": 2}
    report = {"metric": "eval/acc", "trials": 2, "search_seed": 0, "validation_fraction": 0.2}
    report |= {"tune_seeds": [0], "seeds": [1], "experiment": "runs/x", "pruner": "median"}
    report |= {"strategies": {"fedavg": {"trials": [trial, pruned], "best": {"train.lr": 0.1}}}}

    md = tune_markdown(report)

    assert "| fedavg | 0 | train.lr=0.1 | 0.8000 | 5 | complete | **yes** |" in md
    assert "| fedavg | 1 | train.lr=0.01 | — | 3 | pruned at round 2 |  |" in md


# --------------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_tune_then_rerun_on_fresh_seeds_then_compare(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["tune", "--strategies", "fedavg,fedprox", "--trials", "2", "--seeds", "1,2"]
    args += ["--space", "train.lr=log:0.02:0.2", "--space", "fedprox:strategy.mu=log:0.001:0.1"]
    args += [f"output_dir={tmp_path}", "experiment=tuned", *TINY]

    assert cli_main(args) == 0

    report = json.loads((tmp_path / "tuned" / "tune.json").read_text())
    assert report["storage"] == f"sqlite:///{tmp_path / 'tuned' / 'optuna.db'}"
    for name in ("fedavg", "fedprox"):
        entry = report["strategies"][name]
        trials = entry["trials"]
        assert len(trials) == 2  # the same budget for both
        # the chosen setting is the best validation score among the trials
        assert entry["best"] == max(trials, key=lambda t: t["validation"])["setting"]
        for t in trials:  # each trial's score is the final validation accuracy of its run
            tag = ",".join(f"{k}={v}" for k, v in sorted(t["setting"].items()))
            run = tmp_path / "tuned-trials" / name / tag / "seed-0" / "run.json"
            record = json.loads(run.read_text())
            assert record["final"]["eval/val_acc"] == pytest.approx(t["validation"])
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

    # the same command again: the studies are complete, the final runs are reused
    capsys.readouterr()
    assert cli_main(args) == 0
    out = capsys.readouterr().out
    assert out.count("reusing complete run") == 4 and " trial " not in out

    assert cli_main(["compare", str(tmp_path / "tuned")]) == 0
    md = (tmp_path / "tuned" / "compare" / "summary.md").read_text()
    assert "## Paired tests against `fedavg`" in md
    assert md.count("| 2 |") >= 2  # two seeds per strategy
    assert "All runs share the same settings" in md


# Slow rounds (each client stalls 0.4 s) so that a pruned trial can stop before its end;
# lr 0.0378 comes first from search seed 0, then 0.00466 and 0.00126, which stay far below
# it at every round, so the median pruner stops them at round 2.
PRUNED = ["--strategies", "fedavg", "--trials", "3", "--seeds", "1", "--pruner", "median"]
PRUNED += ["--pruner-startup", "1", "--space", "train.lr=log:0.001:0.3", "rounds=6"]
PRUNED += ["scenario.num_clients=2", "backbone=mlp", "progress=false", "runtime.threads=1"]
PRUNED += ["scenario.faults.delay=1", "scenario.faults.delay_s=0.4", "experiment=t"]


def _trials(out: Path) -> list[tuple[Any, ...]]:
    study = optuna.load_study(study_name="t/fedavg", storage=f"sqlite:///{out}/t/optuna.db")
    rows = []
    for t in study.trials:
        value = t.value if t.state.name == "COMPLETE" else None
        rows.append((t.number, t.params, t.state.name, value, t.user_attrs.get("fedsim_pruned_at")))
    return rows


def _wait_for(condition: Any, timeout: float, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.time() + timeout
    while not condition():
        assert proc.poll() is None, "the tuning ended before it could be killed"
        assert time.time() < deadline, "timed out"
        time.sleep(0.2)


@pytest.mark.slow
def test_a_killed_tuning_resumes_into_the_same_study(tmp_path: Path) -> None:
    ref, killed = tmp_path / "ref", tmp_path / "killed"
    assert cli_main(["tune", *PRUNED, f"output_dir={ref}"]) == 0
    trial1 = killed / "t-trials" / "fedavg" / "train.lr=0.00466" / "seed-0"
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0"}
    cmd = [sys.executable, "-m", "fedsim.cli", "tune", *PRUNED, f"output_dir={killed}"]

    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL)
    metrics = trial1 / "metrics.jsonl"
    try:  # kill it while trial 1 runs: after its first round, before the pruner stops it
        _wait_for(lambda: metrics.is_file() and metrics.read_text().count("\n") >= 1, 240, proc)
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    deadline = time.time() + 60  # the trial's own process stops with its tuning
    while json.loads((trial1 / "run.json").read_text())["status"] == "running":
        assert time.time() < deadline, "the trial's run went on after its tuning was killed"
        time.sleep(0.5)
    first = json.loads((killed / "t-trials/fedavg/train.lr=0.0378/seed-0/run.json").read_text())
    before = _trials(killed)

    assert cli_main(["tune", *PRUNED, f"output_dir={killed}"]) == 0

    after, expected = _trials(killed), _trials(ref)
    assert before[0] == after[0] and before[0][2] == "COMPLETE"  # kept, not rerun
    assert after == expected  # numbers, settings, states, values, pruning rounds
    assert [t[2] for t in after] == ["COMPLETE", "PRUNED", "PRUNED"]
    assert [t[4] for t in after] == [None, 2, 2]
    again = json.loads((killed / "t-trials/fedavg/train.lr=0.0378/seed-0/run.json").read_text())
    assert again["finished"] == first["finished"]
    assert "resuming from round" in (trial1 / "fedsim.log").read_text()
    report = json.loads((killed / "t" / "tune.json").read_text())
    pruned = report["strategies"]["fedavg"]["trials"][1]
    assert pruned["state"] == "pruned" and 2 <= pruned["rounds"] < 6  # stopped early
    assert "pruned at round 2" in (killed / "t" / "tune.md").read_text()


@pytest.mark.slow
def test_two_workers_share_one_study(tmp_path: Path) -> None:
    args = ["tune", "--strategies", "fedavg", "--trials", "4", "--seeds", "1", "--workers", "2"]
    args += ["--space", "train.lr=log:0.01:0.3", "rounds=3", "scenario.num_clients=2"]
    args += ["backbone=mlp", "progress=false", "scenario.faults.delay=1"]
    args += ["scenario.faults.delay_s=0.4", "experiment=t", f"output_dir={tmp_path}"]

    assert cli_main(args) == 0

    study = optuna.load_study(study_name="t/fedavg", storage=f"sqlite:///{tmp_path}/t/optuna.db")
    trials = study.trials
    planned = draw_settings(["fedavg"], [parse_space("train.lr=log:0.01:0.3")], 4, 0)["fedavg"]
    assert sorted(t.params["train.lr"] for t in trials) == sorted(p["train.lr"] for p in planned)
    assert all(t.state.name == "COMPLETE" for t in trials)
    spans = [(t.datetime_start, t.datetime_complete) for t in trials]
    overlapping = [
        (a, b) for a in spans for b in spans if a is not b and a[0] < b[1] and b[0] < a[1]
    ]
    assert overlapping, "no two trials ran at the same time"
    pids, threads = set(), set()
    for t in trials:
        run_dir = Path(t.user_attrs["fedsim_run_dirs"][0])
        pids.add((run_dir / "fedsim.log").read_text().split("process ")[1].split(",")[0])
        threads.add(json.loads((run_dir / "run.json").read_text())["config"]["runtime"]["threads"])
    assert len(pids) == 4  # one process per trial
    assert threads == {max(1, (os.cpu_count() or 1) // 2)}  # the cores split between workers
