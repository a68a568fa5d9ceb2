"""``scripts/fedossl_results.py``'s per-scenario options: the runs it launches and the
protocol its report states (no training: ``fedsim`` is replaced by a recorder)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
from conftest import REPO


def _script() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "fedossl_results", REPO / "scripts" / "fedossl_results.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _main(
    script: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *args: str
) -> list[list[str]]:
    launched: list[list[str]] = []

    def record(cmd: list[str], **_: object) -> subprocess.CompletedProcess[str]:
        launched.append(cmd)
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(script.subprocess, "run", record)
    files = ["--out", str(tmp_path / "runs"), "--doc", str(tmp_path / "r.md"),
             "--summary", str(tmp_path / "r.json"),
             "--notes", str(tmp_path / "none.md")]  # fmt: skip
    monkeypatch.setattr(sys, "argv", ["fedossl_results.py", *args, *files])
    script.main()
    return launched


def test_seeds_for_gives_a_scenario_its_own_seeds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    done = tmp_path / "runs" / "digits_open_world" / "fedossl" / "seed-2"
    done.mkdir(parents=True)
    (done / "run.json").write_text(json.dumps({"status": "complete"}))
    rows = [{"round": 19, "fedossl/pseudo_acc": 0.5},
            {"round": 20, "fedossl/pseudo_acc": 0.75, "eval/acc_seen": 0.9,
             "eval/acc_unseen": 0.6, "eval/acc_all": 0.7}]  # fmt: skip
    (done / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    launched = _main(
        _script(), tmp_path, monkeypatch,
        "--only", "digits_open_world", "cifar10_open_world", "--methods", "fedossl",
        "--seeds", "0", "1", "2", "--seeds-for", "cifar10_open_world=0,1",
    )  # fmt: skip

    def given(cmd: list[str], key: str) -> str:
        return next(a for a in cmd if a.startswith(key + "="))

    ran = sorted((given(cmd, "scenario"), given(cmd, "seed")) for cmd in launched)
    assert ran == [
        ("scenario=cifar10_open_world", "seed=0"),
        ("scenario=cifar10_open_world", "seed=1"),
        ("scenario=digits_open_world", "seed=0"),
        ("scenario=digits_open_world", "seed=1"),  # seed 2 is complete: skipped
    ]
    report = (tmp_path / "r.md").read_text()
    assert "seeds 0, 1, 2 (cifar10_open_world: 0, 1);" in report
    assert "Complete: 1 of 5 runs." in report
    summary = json.loads((tmp_path / "r.json").read_text())
    assert summary["protocol"]["seeds"] == {
        "digits_open_world": [0, 1, 2],
        "cifar10_open_world": [0, 1],
    }
    got = summary["digits_open_world"]["fedossl"]
    assert got["seeds"] == [2]
    assert got["per_seed"] == {"seen": [90.0], "unseen": [60.0], "all": [70.0]}
    assert got["pseudo_acc_by_round"] == {"19": 50.0, "20": 75.0}


@pytest.mark.parametrize(
    ("bad", "flag"),
    [
        (["--seeds-for", "cifar10=0,1"], "--seeds-for"),
        (["--seeds-for", "cifar10_open_world=0,x"], "--seeds-for"),
        (["--seeds-for", "cifar10_open_world"], "--seeds-for"),
        (["--seeds-for", "cifar10_open_world=0,0"], "--seeds-for"),  # one run twice
        (["--seeds-for", "cifar10_open_world=-1"], "--seeds-for"),
        (["--seeds-for", "cifar10_open_world=0", "cifar10_open_world=1"], "--seeds-for"),
        (["--only", "digits_open_world", "--seeds-for", "mnist_open_world=1"], "--seeds-for"),
        (["--seeds", "-1"], "--seeds"),
        (["--seeds", "1", "1"], "--seeds"),
        (["--seeds"], "--seeds"),
        (["--pretrain-epochs-for", "mnist_open_world=many"], "--pretrain-epochs-for"),
        (["--pretrain-epochs-for", "mnist_open_world=0"], "--pretrain-epochs-for"),
    ],
)
def test_bad_per_scenario_option_is_one_line_and_exit_2(
    bad: list[str],
    flag: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as stop:
        _main(_script(), tmp_path, monkeypatch, *bad)
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"fedossl_results.py: error: {flag} "), err
    assert not list(tmp_path.iterdir())  # nothing written


def _scripts_module(name: str) -> ModuleType:
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(REPO / "scripts"))
    return module


def test_wilcoxon_says_how_many_pairs_it_ranked() -> None:
    ps = _scripts_module("paired_stats")
    tied = ps.paired([0.5, 0.6, 0.7], [0.5, 0.7, 0.9])  # one zero difference
    assert (tied["n"], tied["wilcoxon_n"]) == (3, 2)
    assert ps.wilcoxon_cell(tied).endswith("(2 non-zero pairs)")
    assert "pairs" not in ps.wilcoxon_cell(ps.paired([0.5, 0.6, 0.7], [0.6, 0.8, 0.9]))


def test_a_variant_report_takes_its_own_notes_not_fraug_faithfuls(tmp_path: Path) -> None:
    ff = _scripts_module("fraug_faithful")
    summary = {
        "protocol": {**ff.PROTOCOL, "rounds": 2, "width": 0.25},
        "strategies": {"fedbn": {"seeds": [0], "per_seed": {"best/mean": [0.9]}}},
        "paired": {},
    }
    doc = tmp_path / "fraug_lamg0.md"
    assert "## Reading" not in ff.markdown(summary, "cmd", doc)
    (tmp_path / "fraug_lamg0_notes.md").write_text("## Reading\n")
    text = ff.markdown(summary, "cmd", doc)
    assert "## Reading" in text and "summary `fraug_lamg0.json`" in text


def test_a_variant_is_paired_with_fedbn_and_with_its_base(tmp_path: Path) -> None:
    ff = _scripts_module("fraug_faithful")
    strategies = ["fedbn", "fraug", "fraug_lamg0"]
    for i, st in enumerate(strategies):
        for seed in (0, 1):
            final = {"eval/acc_at_best_val": 0.9 + i / 100 + seed / 1000, "eval/acc": 0.9}
            for d in ff.DOMAINS:
                final[f"eval/acc_at_best_val_domain/{d}"] = final[f"eval/acc_domain/{d}"] = 0.9
            run = ff.run_dir(tmp_path, st, seed, 0.25)
            run.mkdir(parents=True)
            (run / "run.json").write_text(json.dumps({"status": "complete", "final": final}))
            rows = [{"round": r, "eval/acc": 0.8 + r / 100, "eval/val_acc_client/0": v}
                    for r, v in ((1, 0.5), (2, 1.0), (3, 1.0))]  # fmt: skip
            (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = ff.summarise(strategies, [0, 1], 150, 0.25, tmp_path)
    course = summary["course"]["fraug"]
    assert course["acc_by_window"] == {"1-50": 82.0}
    assert course["best_val_acc"] == [100.0, 100.0]
    assert course["max_tied_rounds"] == 2
    assert course["selected_round"] == {"median": 2, "min": 2, "max": 2}  # the first best
    assert set(summary["paired"]) == {"fraug-fedbn", "fraug_lamg0-fedbn", "fraug_lamg0-fraug"}
    assert summary["paired"]["fraug_lamg0-fraug"]["best/mean"]["mean_diff"] == pytest.approx(0.01)


def test_mean_ci_is_the_t_interval_of_the_mean() -> None:
    ps = _scripts_module("paired_stats")
    lo, hi = ps.mean_ci([0.5, 0.7])
    assert (lo, hi) == pytest.approx((0.6 - 12.7062 * 0.1, 0.6 + 12.7062 * 0.1), abs=1e-4)
    assert ps.mean_ci([0.5]) is None
