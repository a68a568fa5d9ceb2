"""Bad input is refused with one clear line, exit status 2, no traceback, nothing touched.

The corpus: malformed data files (tests/malformed/data), corrupt checkpoints
(tests/malformed/checkpoints), bad command-line overrides, bad resumes.  Malformed
scenario files have their own corpus (tests/malformed/scenarios, tests/test_scenarios.py).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from fedsim.cli import main
from fedsim.engine import checkpoint as ckpt_io
from fedsim.engine.conf import compose, to_plain

MALFORMED = Path(__file__).parent / "malformed"


def _refused(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    code = main(argv)
    err = capsys.readouterr().err
    errors = [ln for ln in err.splitlines() if ln.startswith("fedsim: error:")]
    assert code == 2, err
    assert len(errors) == 1, err
    assert "Traceback" not in err
    return errors[0]


# --------------------------------------------------------------------- overrides
OVERRIDES = [
    (["rounds=abc"], "rounds"),
    (["rounds=0"], "rounds"),
    (["rounds"], "expected key=value"),
    (["train.bogus=1"], "train.bogus"),
    (["strategy=nope"], "allowed: "),
    (["backbone=vgg"], "allowed: "),
    (["scenario=nope"], "allowed: "),
    (["runtime=spark"], "allowed: "),
    (["seed=0,x"], "seed"),
    (["train.lr=-1"], "train.lr"),
    (["train.optimizer=rmsprop"], "train.optimizer"),
    (["precision=fp8"], "precision"),
    (["train.batch_size=0"], "train.batch_size"),
    (["scenario=/definitely/missing.yaml"], "file not found"),
    (["scenario.num_clients=100000"], "num_clients"),
    (["scenario.participation.fraction=1.5"], "participation.fraction"),
]


@pytest.mark.parametrize(("argv", "fragment"), OVERRIDES, ids=[" ".join(a) for a, _ in OVERRIDES])
def test_bad_override_is_refused(argv, fragment, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    line = _refused(capsys, ["run", *argv, f"output_dir={tmp_path}/out", "progress=false"])
    assert fragment in line
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------- data files
DATA = sorted(p.name for p in (MALFORMED / "data").glob("*.npz"))


@pytest.mark.parametrize("name", DATA)
def test_malformed_data_file_is_refused(name: str, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    path = MALFORMED / "data" / name
    scenario = tmp_path / "bad_data.yaml"
    scenario.write_text(
        f"# uses the malformed file {name}\nname: bad_data\nnum_clients: 2\n"
        f"dataset:\n  sources:\n    - {{name: bad, format: npz, train: {path}}}\n"
    )
    line = _refused(
        capsys, ["run", f"scenario={scenario}", f"output_dir={tmp_path}/out", "progress=false"]
    )
    assert name in line  # the message names the file
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------- resume
def _fake_run(tmp_path: Path, *overrides: str) -> tuple[Path, dict]:  # type: ignore[type-arg]
    """A run directory as a killed run leaves it: run.json + checkpoint after round 1."""
    cfg = compose(
        [f"output_dir={tmp_path}", "rounds=3", "backbone.width=0.25", "progress=false", *overrides]
    )
    plain = to_plain(cfg)
    run_dir = tmp_path / "digits_iid" / "fedavg" / "seed-0"
    run_dir.mkdir(parents=True)
    (run_dir / "run.json").write_text(json.dumps({"status": "running", "config": plain}))
    (run_dir / "metrics.jsonl").write_text('{"round": 1, "eval/acc": 0.5}\n')
    return run_dir, plain


CHECKPOINTS = sorted(p.name for p in (MALFORMED / "checkpoints").glob("*.npz"))


@pytest.mark.parametrize("name", CHECKPOINTS)
def test_corrupt_checkpoint_is_refused_and_nothing_changes(
    name: str, tmp_path: Path, capsys
) -> None:  # type: ignore[no-untyped-def]
    run_dir, _ = _fake_run(tmp_path)
    shutil.copy(MALFORMED / "checkpoints" / name, run_dir / ckpt_io.CHECKPOINT_FILE)
    before = {p.name: p.read_bytes() for p in run_dir.iterdir()}
    line = _refused(capsys, ["resume", str(run_dir)])
    assert "checkpoint" in line
    assert {p.name: p.read_bytes() for p in run_dir.iterdir()} == before


def test_resume_with_another_config_is_refused(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    run_dir, plain = _fake_run(tmp_path)
    ckpt_io.save(
        run_dir / ckpt_io.CHECKPOINT_FILE, ckpt_io.Checkpoint(1, plain, {"w": np.zeros(2)})
    )
    before = {p.name: p.read_bytes() for p in run_dir.iterdir()}
    argv = [
        "run",
        f"output_dir={tmp_path}",
        "rounds=3",
        "backbone.width=0.25",
        "train.lr=0.5",
        "resume=true",
    ]
    line = _refused(capsys, [*argv, "progress=false"])
    assert "different configuration" in line and "train" in line
    assert {p.name: p.read_bytes() for p in run_dir.iterdir()} == before


def test_resume_without_checkpoint_is_refused(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    run_dir, _ = _fake_run(tmp_path)
    line = _refused(capsys, ["resume", str(run_dir)])
    assert "no checkpoint" in line


@pytest.mark.parametrize(
    "argv", [["resume"], ["resume", "/no/such/run"], ["resume", ".", "rounds=abc"]]
)
def test_bad_resume_arguments(argv: list[str], capsys) -> None:  # type: ignore[no-untyped-def]
    _refused(capsys, argv)


def test_resume_of_a_finished_run_is_refused(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    run_dir, plain = _fake_run(tmp_path)
    ckpt_io.save(
        run_dir / ckpt_io.CHECKPOINT_FILE, ckpt_io.Checkpoint(3, plain, {"w": np.zeros(2)})
    )
    line = _refused(capsys, ["resume", str(run_dir)])
    assert "nothing to resume" in line


# --------------------------------------------------------------------- output_dir


@pytest.mark.parametrize("where", ["under_a_file", "proc"])
def test_output_dir_that_cannot_be_created_is_refused(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, where: str
) -> None:
    if where == "proc" and not Path("/proc").is_dir():
        pytest.skip("no /proc on this system")
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory\n")
    out = blocker / "runs" if where == "under_a_file" else Path("/proc") / "fedsim-x"
    before = sorted(tmp_path.rglob("*"))
    line = _refused(capsys, ["run", f"output_dir={out}", "rounds=1", "progress=false"])
    assert line.startswith("fedsim: error: output_dir: cannot create "), line
    assert str(out) in line
    assert sorted(tmp_path.rglob("*")) == before  # nothing half-written
    assert blocker.read_text() == "not a directory\n"
    assert not out.exists()
