"""What ``fedsim run`` does before its first round, and what it leaves out: only the
chosen scenario files are read, a single run is composed once (not by Hydra again), and
neither ``torch._dynamo`` nor matplotlib is imported (``bench/startup.py`` times it)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hydra.core.config_store import ConfigStore

from fedsim import cli
from fedsim.engine import conf
from fedsim.engine.conf import register_configs, selected_scenarios, to_plain


def test_selected_scenarios_are_the_chosen_ones_or_the_default() -> None:
    assert selected_scenarios(["rounds=1"]) == {"digits_iid"}  # RunConfig's default
    assert selected_scenarios(["scenario=pacs", "seed=1"]) == {"pacs"}
    assert selected_scenarios(["scenario=pacs,digits_dirichlet_0.1"]) == {
        "pacs",
        "digits_dirichlet_0.1",
    }
    assert selected_scenarios(["scenario.num_clients=4"]) == {"digits_iid"}
    assert selected_scenarios(["scenario=glob(digits*)"]) is None  # only Hydra can tell


def test_register_configs_reads_only_the_selected_scenario_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    good = tmp_path / "startup_good.yaml"
    good.write_text("num_clients: 3\n")
    bad = tmp_path / "startup_bad.yaml"
    bad.write_text("num_clients: [\n")  # not YAML
    monkeypatch.setattr(conf, "scenario_files", lambda: {"startup_good": good, "startup_bad": bad})
    repo = ConfigStore.instance().repo.setdefault("scenario", {})
    try:
        only_good = register_configs(only={"startup_good"})
        assert only_good == {}  # the broken file was not read
        assert "startup_good.yaml" in repo and "startup_bad.yaml" not in repo

        everything = register_configs()
        assert list(everything) == ["startup_bad"]
    finally:
        for name in ("startup_good", "startup_bad"):
            repo.pop(f"{name}.yaml", None)
            conf._STORED.pop(("scenario", name), None)


def test_compose_reads_only_the_chosen_scenario_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``fedsim.run``, the tests and the benchmarks compose through ``compose``: it reads
    the chosen scenario (a name or a path), not every shipped file."""
    bad = tmp_path / "compose_bad.yaml"
    bad.write_text("num_clients: [\n")  # read, it would make this scenario unusable
    chosen = tmp_path / "compose_chosen.yaml"
    chosen.write_text("num_clients: 3\n")
    monkeypatch.setattr(conf, "scenario_files", lambda: {"compose_bad": bad})
    read: list[str] = []
    real = conf.load_scenario_file
    monkeypatch.setattr(
        conf, "load_scenario_file", lambda path: read.append(path.stem) or real(path)
    )
    try:
        cfg = conf.compose([f"scenario={chosen}", "rounds=1"])
        assert cfg.scenario.num_clients == 3
        assert read == ["compose_chosen"]
    finally:
        repo = ConfigStore.instance().repo.get("scenario", {})
        for name in ("compose_bad", "compose_chosen"):
            repo.pop(f"{name}.yaml", None)
            conf._STORED.pop(("scenario", name), None)


def _capture_runs(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Replace the run itself: record the configuration each run would execute."""
    import fedsim.engine.runner

    seen: list[Any] = []

    def execute(cfg: Any) -> dict[str, Any]:
        seen.append(cfg)
        return {"final": {"eval/acc": 0.5}, "run_dir": "unused"}

    monkeypatch.setattr(fedsim.engine.runner, "execute", execute)
    return seen


def test_a_single_run_runs_the_precheck_config_without_hydra_main(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import hydra

    seen = _capture_runs(monkeypatch)
    args = ["rounds=1", "train.lr=0.01", "scenario=digits_dirichlet_0.1", f"output_dir={tmp_path}"]
    assert cli.cmd_run([*args, "hydra.verbose=false"]) == 0  # a hydra key: Hydra runs it

    def no_hydra(*a: Any, **k: Any) -> Any:
        raise AssertionError("hydra.main called for a single run")

    monkeypatch.setattr(hydra, "main", no_hydra)
    assert cli.cmd_run(args) == 0

    via_hydra, direct = seen
    assert to_plain(direct) == to_plain(via_hydra)
    assert direct.train.lr == 0.01 and direct.scenario.name == "digits_dirichlet_0.1"


def test_a_single_run_reports_a_bad_value_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    seen = _capture_runs(monkeypatch)

    code = cli.cmd_run(["rounds=0", f"output_dir={tmp_path}"])

    assert code == 2 and not seen
    assert capsys.readouterr().err.strip() == "fedsim: error: rounds: must be >= 1, got 0"


@pytest.mark.parametrize(
    "extra",
    [
        (),
        # FRAug's generator and transformation network, FedoSSL's centroids: their own
        # optimisers too
        ("strategy=fraug",),
        ("scenario=digits_open_world", "strategy=fedossl", "scenario.num_clients=5"),
    ],
    ids=["fedavg", "fraug", "fedossl"],
)
def test_a_one_round_run_imports_neither_dynamo_nor_matplotlib(
    tmp_path: Path, extra: tuple[str, ...]
) -> None:
    # torch._dynamo (the first torch.optim optimiser) and matplotlib (the partition
    # picture) were a second each of start-up; a fresh process shows what a run imports
    args = ["run", "rounds=1", "scenario.num_clients=2", "backbone.width=0.25", *extra]
    code = (
        "import sys\n"
        "from fedsim.cli import main\n"
        f"assert main({args!r} + ['progress=false', 'output_dir={tmp_path}']) == 0\n"
        "print(sorted(m for m in ('torch._dynamo', 'matplotlib', 'sympy') if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)

    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"
    assert next(tmp_path.rglob("partition.png")).stat().st_size > 0
