"""``fedsim compare`` on hand-made experiment directories with numbers checkable by hand.

Each run directory is written the way a sweep writes it (``metrics.jsonl``, ``run.json``,
or only TensorBoard event files), so the reader, the statistics, the table, the CSV and
the plots are checked without training anything.  ``tests/test_sweep.py`` checks the
same command on a real sweep.
"""

from __future__ import annotations

import csv
import json
import math
import statistics
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from fedsim.analysis.compare import compare, mean_std, read_runs, safe_name
from fedsim.analysis.stats import paired_test, t_interval
from fedsim.cli import main as cli_main
from fedsim.errors import UserError

BYTES_PER_ROUND = 100.0  # each way, every round


def write_run(
    root: Path,
    group: str,
    seed: int,
    acc: list[float | None],
    status: str | None = "complete",
    loss: list[float] | None = None,
    config: dict[str, Any] | None = None,
) -> Path:
    """A run directory: round r sent 100 bytes up and 100 down; ``None`` = no eval."""
    run_dir = root / group / f"seed-{seed}"
    run_dir.mkdir(parents=True)
    lines = []
    for r, a in enumerate(acc, start=1):
        row: dict[str, Any] = {
            "round": r,
            "comm/bytes_up_total": BYTES_PER_ROUND * r,
            "comm/bytes_down_total": BYTES_PER_ROUND * r,
            "time/elapsed_s": 2.0 * r,
            "train/loss": (loss or [1.0 / r] * len(acc))[r - 1],
        }
        if a is not None:
            row["eval/acc"] = a
        lines.append(json.dumps(row))
    (run_dir / "metrics.jsonl").write_text("".join(ln + "\n" for ln in lines))
    if status is not None:
        cfg = config or {"rounds": len(acc), "seed": seed, "train": {"lr": 0.1}}
        (run_dir / "run.json").write_text(json.dumps({"status": status, "config": cfg}))
    return run_dir


def read_csv(path: Path) -> dict[str, dict[str, str]]:
    with open(path, newline="") as f:
        return {row["group"]: row for row in csv.DictReader(f)}


def test_mean_std_uses_sample_std_and_ignores_nan() -> None:
    assert mean_std([1.0, 3.0]) == (2.0, pytest.approx(math.sqrt(2.0)), 2)
    mean, std, n = mean_std([5.0, math.nan])
    assert (mean, n) == (5.0, 1) and math.isnan(std)
    assert mean_std([])[2] == 0


def test_final_best_and_to_target_numbers(tmp_path: Path) -> None:
    # Arrange: fedavg reaches 0.85 at round 3 (seed 0) and round 2 (seed 1)
    write_run(tmp_path, "fedavg", 0, [0.5, 0.8, 0.9])
    write_run(tmp_path, "fedavg", 1, [0.4, 0.9, 0.85])
    write_run(tmp_path, "fedprox", 0, [0.3, 0.6, 0.7])
    write_run(tmp_path, "fedprox", 1, [0.2, 0.86, 0.5])

    # Act
    result = compare(tmp_path, "eval/acc", target=0.85)

    # Assert: numbers
    avg, prox = result.cells["fedavg"], result.cells["fedprox"]
    assert avg["eval/acc_final"] == (pytest.approx(0.875), pytest.approx(0.0353553, 1e-5), 2)
    assert avg["eval/acc_best"][:2] == (pytest.approx(0.9), 0.0)
    assert avg["rounds_to_target"][:3] == (2.5, pytest.approx(math.sqrt(0.5)), 2)
    assert avg["bytes_to_target"][:3] == (500.0, pytest.approx(math.sqrt(20000.0)), 2)
    assert prox["eval/acc_best"][0] == pytest.approx(0.78)  # max over rounds, not final
    assert prox["rounds_to_target"][0::2] == (2.0, 1)  # only seed 1 got there
    assert avg["bytes_total"][0] == 600.0
    assert avg["train/loss_final"][0] == pytest.approx(1 / 3)

    # the markdown table and the CSV say the same
    md = (tmp_path / "compare" / "summary.md").read_text()
    # 95% CI: mean ± t(0.975, 1) * std / sqrt(2), t(0.975, 1) = 12.706
    assert (
        "| fedavg | 2 | 0.8750 ± 0.0354 | [0.5573, 1.1927] | 0.9000 ± 0.0000 | 2.5 ± 0.7 | "
        "0.0 ± 0.0 |" in md
    )
    assert (
        "| fedprox | 2 | 0.6000 ± 0.1414 | [-0.6706, 1.8706] | 0.7800 ± 0.1131 | 2.0 (1/2) |" in md
    )
    assert "ddof=1" in md and "`comm/bytes_up_total` + `comm/bytes_down_total`" in md
    rows = read_csv(tmp_path / "compare" / "summary.csv")
    assert float(rows["fedavg"]["eval/acc_final_mean"]) == pytest.approx(0.875)
    assert float(rows["fedavg"]["bytes_to_target_mean"]) == 500.0
    assert rows["fedprox"]["rounds_to_target_n"] == "1"
    assert rows["fedavg"]["target"] == "0.85" and rows["fedavg"]["bytes"] == "total"


def test_never_reached_target_is_a_dash(tmp_path: Path) -> None:
    write_run(tmp_path, "fedavg", 0, [0.1, 0.2])
    write_run(tmp_path, "fedavg", 1, [0.1, 0.3])

    compare(tmp_path, "eval/acc", target=0.9)

    md = (tmp_path / "compare" / "summary.md").read_text()
    assert "| — (0/2) | — (0/2) |" in md
    assert read_csv(tmp_path / "compare" / "summary.csv")["fedavg"]["rounds_to_target_mean"] == ""


def test_default_target_and_bytes_modes(tmp_path: Path) -> None:
    write_run(tmp_path, "fedavg", 0, [0.5, 0.95])

    total = compare(tmp_path, "eval/acc")  # accuracy: target 0.9 unless given
    up = compare(tmp_path, "eval/acc", bytes_mode="up")

    assert total.target == 0.9
    assert total.cells["fedavg"]["bytes_to_target"][0] == 400.0  # 200 up + 200 down
    assert up.cells["fedavg"]["bytes_to_target"][0] == 200.0
    # a single seed: no std, no "±"
    assert (
        "| fedavg | 1 | 0.9500 | — | 0.9500 | 2.0 | 0.0 |"
        in (tmp_path / "compare" / "summary.md").read_text()
    )


def test_losses_are_minimised(tmp_path: Path) -> None:
    write_run(tmp_path, "fedavg", 0, [0.1, 0.2, 0.3], loss=[2.0, 0.5, 0.7])

    result = compare(tmp_path, "train/loss", target=0.6)

    cells = result.cells["fedavg"]
    assert cells["train/loss_best"][0] == 0.5
    assert cells["train/loss_final"][0] == 0.7
    assert cells["rounds_to_target"][0] == 2.0
    assert "rounds to ≤ 0.6" in (tmp_path / "compare" / "summary.md").read_text()


def test_rounds_without_evaluation_are_skipped(tmp_path: Path) -> None:
    write_run(tmp_path, "fedavg", 0, [None, 0.6, None, 0.8])

    cells = compare(tmp_path, "eval/acc", target=0.7).cells["fedavg"]

    assert cells["eval/acc_final"][0] == 0.8
    assert cells["rounds_to_target"][0] == 4.0


def test_incomplete_runs_are_listed_plotted_and_kept_out_of_the_table(tmp_path: Path) -> None:
    # Arrange: fedavg seed 1 is still running; fedprox has no complete run yet
    write_run(tmp_path, "fedavg", 0, [0.5, 0.7, 0.9], config={"rounds": 3})
    write_run(tmp_path, "fedavg", 1, [0.1], status="running", config={"rounds": 3})
    write_run(tmp_path, "fedprox", 0, [0.4, 0.6], status="failed", config={"rounds": 3})
    write_run(tmp_path, "fedbn", 0, [0.3], status=None)  # no run.json at all

    # Act
    result = compare(tmp_path, "eval/acc", target=0.8)

    # Assert
    assert {(r.group, r.seed, r.status) for r in result.incomplete} == {
        ("fedavg", 1, "running"),
        ("fedprox", 0, "failed"),
        ("fedbn", 0, "missing"),
    }
    assert result.cells["fedavg"]["eval/acc_final"][0::2] == (0.9, 1)  # seed 1 left out
    assert result.cells["fedprox"]["eval/acc_final"][0] == 0.6  # its incomplete run
    md = (tmp_path / "compare" / "summary.md").read_text()
    assert "| fedavg | 1 (+1 incomplete) |" in md
    assert "| fedprox | 1 incomplete |" in md
    assert "- `fedavg/seed-1`: running, 1 of 3 rounds recorded" in md
    assert "- `fedprox/seed-0`: failed, 2 of 3 rounds recorded" in md
    for name in ("eval_acc_vs_round.png", "eval_acc_vs_bytes.png"):
        assert Image.open(tmp_path / "compare" / name).size == (960, 630)


def test_partial_last_line_of_a_running_run_is_ignored(tmp_path: Path) -> None:
    run_dir = write_run(tmp_path, "fedavg", 0, [0.5, 0.6], status="running")
    with open(run_dir / "metrics.jsonl", "a") as f:
        f.write('{"round": 3, "eval/a')

    (run,) = read_runs(tmp_path)

    assert run.last_round == 2


def test_overrides_become_a_column_and_swept_keys_are_not_flagged(tmp_path: Path) -> None:
    for lr in ("0.1", "0.01"):
        for seed in (0, 1):
            cfg = {"rounds": 2, "seed": seed, "tag": f"train.lr={lr}", "train": {"lr": lr}}
            write_run(tmp_path, f"fedavg/train.lr={lr}", seed, [0.5, 0.6], config=cfg)

    result = compare(tmp_path, "eval/acc")

    assert [g.name for g in result.groups] == ["fedavg/train.lr=0.01", "fedavg/train.lr=0.1"]
    assert result.differing == {}
    md = (tmp_path / "compare" / "summary.md").read_text()
    assert "| strategy | overrides | seeds |" in md
    assert "| fedavg | train.lr=0.01 | 2 |" in md


def test_labels_come_from_run_json_whatever_folder_is_compared(tmp_path: Path) -> None:
    # Arrange: two experiments with the same strategy, compared from their parent folder
    for exp in ("a", "b"):
        cfg = {"rounds": 1, "strategy": {"name": "fedprox"}, "tag": "train.lr=0.1"}
        write_run(tmp_path, f"{exp}/fedprox/train.lr=0.1", 0, [0.5], config=cfg)

    # Act
    one = compare(tmp_path / "a" / "fedprox", "eval/acc")  # a strategy folder
    both = compare(tmp_path, "eval/acc")

    # Assert
    assert [(g.name, g.strategy, g.overrides) for g in one.groups] == [
        ("train.lr=0.1", "fedprox", "train.lr=0.1")
    ]
    md = (tmp_path / "compare" / "summary.md").read_text()
    assert "| a/fedprox/train.lr=0.1 | train.lr=0.1 | 1 |" in md  # not two "fedprox" rows
    assert len(both.groups) == 2


def test_settings_that_differ_outside_the_sweep_are_flagged(tmp_path: Path) -> None:
    write_run(tmp_path, "fedavg", 0, [0.5], config={"rounds": 1, "seed": 0, "train": {"lr": 0.1}})
    write_run(tmp_path, "fedprox", 0, [0.5], config={"rounds": 1, "seed": 0, "train": {"lr": 1}})

    result = compare(tmp_path, "eval/acc")

    assert result.differing == {"train.lr": ["0.1", "1"]}
    assert "not a controlled comparison" in (tmp_path / "compare" / "summary.md").read_text()


def test_event_files_are_read_when_there_is_no_metrics_jsonl(tmp_path: Path) -> None:
    from torch.utils.tensorboard import SummaryWriter

    run_dir = tmp_path / "fedavg" / "seed-0"
    with SummaryWriter(str(run_dir)) as w:
        for r, acc in enumerate([0.25, 0.75], start=1):
            w.add_scalar("eval/acc", acc, r)
            w.add_scalar("comm/bytes_up_total", 10.0 * r, r)
            w.add_scalar("comm/bytes_down_total", 30.0 * r, r)
        w.add_scalar("hparams/eval/acc", 0.0, 2)  # the HPARAMS copy is not a round
    (run_dir / "run.json").write_text(json.dumps({"status": "complete", "config": {}}))

    result = compare(tmp_path, "eval/acc", target=0.5, out=tmp_path / "elsewhere")

    cells = result.cells["fedavg"]
    assert cells["eval/acc_final"][0] == 0.75
    assert cells["bytes_to_target"][0] == 80.0
    assert (tmp_path / "elsewhere" / "summary.md").exists()
    assert not (tmp_path / "compare").exists()


def test_plots_have_one_band_per_group_and_are_not_blank(tmp_path: Path) -> None:
    write_run(tmp_path, "fedavg", 0, [0.2, 0.5, 0.9])
    write_run(tmp_path, "fedavg", 1, [0.3, 0.6, 0.8])
    write_run(tmp_path, "fedprox", 0, [0.1, 0.4, 0.7])

    result = compare(tmp_path, "eval/acc")

    for path in result.files[2:]:
        pixels = np.asarray(Image.open(path).convert("RGB"), dtype=np.float64)
        assert pixels.std() > 10, f"{path} looks blank"
        assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 20


def test_safe_name() -> None:
    assert safe_name("eval/acc") == "eval_acc"
    assert safe_name("eval/acc_client/3") == "eval_acc_client_3"


# ------------------------------------------------------------------ command line


def test_cli_prints_table_and_writes_files(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    write_run(tmp_path, "fedavg", 0, [0.5, 0.95])
    out = tmp_path / "out"

    rc = cli_main(["compare", str(tmp_path), "--metric", "eval/acc", "--target", "0.9"])
    rc_out = cli_main(["compare", str(tmp_path), "--out", str(out)])

    assert rc == rc_out == 0
    printed = capsys.readouterr().out
    assert "| fedavg | 1 | 0.9500 | — |" in printed
    assert {p.name for p in out.iterdir()} == {
        "summary.md",
        "summary.csv",
        "eval_acc_vs_round.png",
        "eval_acc_vs_bytes.png",
    }


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["{empty}"], "no runs under"),
        (["{empty}/nope"], "is not a directory"),
        (["{runs}", "--metric", "eval/nope"], "available: comm/bytes_down_total, comm/"),
        (["{runs}", "--target", "high"], "argument --target: invalid float value: 'high'"),
        (["{runs}", "--bytes", "sideways"], "argument --bytes: invalid choice"),
        (
            ["{runs}", "--baseline", "scaffold"],
            "--baseline 'scaffold' is no group (allowed: fedavg)",
        ),
        ([], "the following arguments are required: experiment_dir"),
    ],
)
def test_cli_refuses_bad_input_in_one_line(
    tmp_path: Path,
    capsys,  # type: ignore[no-untyped-def]
    args: list[str],
    message: str,
) -> None:
    (tmp_path / "empty" / "fedavg").mkdir(parents=True)  # a folder, but no seed-<S> runs
    write_run(tmp_path / "runs", "fedavg", 0, [0.5])
    argv = [a.format(empty=tmp_path / "empty", runs=tmp_path / "runs") for a in args]

    rc = cli_main(["compare", *argv])

    err = capsys.readouterr().err
    assert rc == 2
    assert message in err
    assert len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "empty" / "compare").exists()


def test_compare_raises_user_error_for_unknown_bytes_mode(tmp_path: Path) -> None:
    write_run(tmp_path, "fedavg", 0, [0.5])
    with pytest.raises(UserError, match="allowed: total, up, down"):
        compare(tmp_path, bytes_mode="both")


def test_statistics_match_the_standard_library(tmp_path: Path) -> None:
    finals = [0.61, 0.72, 0.58]
    for seed, f in enumerate(finals):
        write_run(tmp_path, "fedavg", seed, [0.1, f])

    cells = compare(tmp_path, "eval/acc").cells["fedavg"]

    assert cells["eval/acc_final"][0] == pytest.approx(statistics.mean(finals))
    assert cells["eval/acc_final"][1] == pytest.approx(statistics.stdev(finals))


# ------------------------------------------------------------------ intervals and paired tests


def test_t_interval_of_one_two_three() -> None:
    # mean 2, std 1, n 3: half-width t(0.975, 2) / sqrt(3) = 4.302653 / 1.732051 = 2.484138
    low, high = t_interval([1.0, 2.0, 3.0])
    assert (low, high) == (
        pytest.approx(2 - 2.484138, abs=1e-6),
        pytest.approx(2 + 2.484138, abs=1e-6),
    )
    assert all(math.isnan(x) for x in t_interval([5.0]))


def test_paired_test_on_hand_checkable_differences() -> None:
    base = [0.5, 0.6, 0.7, 0.8]
    # differences 0.04, 0.01, 0.02, 0.03: mean 0.025, std sqrt(0.0005 / 3), t = sqrt(15)
    up = paired_test([0.54, 0.61, 0.72, 0.83], base)
    # differences 0.04, -0.01, 0.02, 0.03: signed ranks +4, -1, +3, +2
    mixed = paired_test([0.54, 0.59, 0.72, 0.83], base)

    assert up.n == 4 and up.mean_diff == pytest.approx(0.025)
    assert up.t_p == pytest.approx(0.0304663, rel=1e-4)  # 2 * P(T_3 > sqrt(15))
    assert up.wilcoxon_p == pytest.approx(2 / 16)  # all four of one sign: exact 2 / 2^4
    assert up.min_wilcoxon_p == pytest.approx(0.125)
    half = 3.182446 * math.sqrt(0.0005 / 3) / 2  # t(0.975, 3) * std / sqrt(4)
    assert (up.ci_low, up.ci_high) == (pytest.approx(0.025 - half), pytest.approx(0.025 + half))
    assert mixed.wilcoxon_p == pytest.approx(2 * 2 / 16)  # W- = 1: P(W <= 1) = 2/16


def test_paired_test_drops_unfinished_pairs_and_says_when_it_does_not_apply() -> None:
    one = paired_test([0.5, math.nan], [0.4, 0.3])
    same = paired_test([0.5, 0.6], [0.5, 0.6])

    assert one.n == 1 and one.mean_diff == pytest.approx(0.1) and math.isnan(one.t_p)
    assert same.n == 2 and math.isnan(same.t_p) and math.isnan(same.wilcoxon_p)
    with pytest.raises(ValueError, match="3 values against 2"):
        paired_test([1.0, 2.0, 3.0], [1.0, 2.0])


def test_compare_pairs_seeds_against_the_baseline(tmp_path: Path) -> None:
    base = [0.5, 0.6, 0.7, 0.8]
    for seed, (b, p) in enumerate(zip(base, [0.54, 0.61, 0.72, 0.83], strict=True)):
        write_run(tmp_path, "fedavg", seed, [0.1, b])
        write_run(tmp_path, "fedprox", seed, [0.1, p])
    write_run(tmp_path, "fedprox", 9, [0.1, 0.99])  # no fedavg seed 9: not a pair

    result = compare(tmp_path, "eval/acc")  # fedavg is the default baseline

    assert result.baseline == "fedavg"
    test = result.tests["fedprox"]
    assert test.n == 4 and test.t_p == pytest.approx(0.0304663, rel=1e-4)
    md = (tmp_path / "compare" / "summary.md").read_text()
    assert "## Paired tests against `fedavg`" in md
    assert "| fedprox | 4 | +0.0250 | [+0.0045, +0.0455] | 0.030 | 0.125 |" in md
    assert "paired t-test (Student; `scipy.stats.ttest_rel`)" in md
    assert "Wilcoxon signed-rank test (`scipy.stats.wilcoxon`" in md
    assert "(0.125 for n = 4)" in md
    row = read_csv(tmp_path / "compare" / "summary.csv")["fedprox"]
    assert row["baseline"] == "fedavg" and row["pairs"] == "4"
    assert float(row["wilcoxon_p"]) == pytest.approx(0.125)


def test_a_seed_with_another_partition_is_not_paired(tmp_path: Path) -> None:
    for seed in (0, 1):
        for strategy, acc in (("fedavg", 0.5), ("fedprox", 0.6)):
            run_dir = write_run(tmp_path, strategy, seed, [acc + seed / 10])
            text = "clients 0-1" if (strategy, seed) != ("fedprox", 1) else "other clients"
            (run_dir / "partition.txt").write_text(text)

    result = compare(tmp_path, "eval/acc", baseline="fedavg")

    assert result.tests["fedprox"].n == 1
    assert any("`fedprox` seed 1 is not paired" in note for note in result.unpaired)


def test_baseline_choice(tmp_path: Path) -> None:
    write_run(tmp_path, "fedprox", 0, [0.5])
    write_run(tmp_path, "fedbn/lr=0.05", 0, [0.6])
    write_run(tmp_path, "fedbn/lr=0.1", 0, [0.6])

    assert compare(tmp_path).baseline is None  # no fedavg: no paired tests
    assert "None: no baseline" in (tmp_path / "compare" / "summary.md").read_text()
    assert compare(tmp_path, baseline="fedprox").baseline == "fedprox"
    assert compare(tmp_path, baseline="fedbn/lr=0.1").baseline == "fedbn/lr=0.1"
    with pytest.raises(
        UserError, match=r"matches 2 groups; name one of: fedbn/lr=0\.05, fedbn/lr=0\.1"
    ):
        compare(tmp_path, baseline="fedbn")


def test_wall_time_of_a_run_resumed_by_an_older_version_adds_its_processes() -> None:
    from fedsim.analysis.rundirs import wall_seconds

    restarted = [{"time/elapsed_s": e} for e in (100.0, 200.0, 50.0, 120.0)]
    assert wall_seconds(restarted) == 320.0  # 200 s before the resume, 120 s after
    assert wall_seconds([{"time/elapsed_s": e} for e in (100.0, 200.0, 260.0)]) == 260.0
    assert wall_seconds([{"round": 1}]) == 0.0
    # a restart that shows no drop: the resumed process's first round took longer than
    # everything before it, but it ended sooner after its start than a round can
    old = [(30.0, 29.5), (35.0, 34.8), (60.0, 24.9)]
    assert wall_seconds([{"time/elapsed_s": e, "time/round_s": r} for e, r in old]) == 90.0
    # today's resume: the clock goes on from the checkpoint, nothing is added
    new = [(10.0, 9.9), (20.0, 9.8), (30.0, 9.9)]
    assert wall_seconds([{"time/elapsed_s": e, "time/round_s": r} for e, r in new]) == 30.0


def test_compare_reports_the_wall_time_of_every_process_of_a_resumed_run(tmp_path: Path) -> None:
    from fedsim.analysis.comparison import run_values
    from fedsim.analysis.rundirs import Run

    rows = [
        {"round": r, "eval/acc": 0.5, "time/elapsed_s": e, "time/round_s": 4.0}
        for r, e in ((1, 4.0), (2, 8.0), (3, 4.5), (4, 8.5))  # resumed after round 2
    ]
    run = Run(path=tmp_path, group="fedavg", seed=0, status="complete", rows=rows)
    assert run_values(run, "eval/acc", None, "total", [])["wall_s"] == 16.5
