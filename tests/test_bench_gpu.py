"""The GPU campaign without a GPU: its dry run, its benchmark and its preparation helper.

``bench/gpu_campaign.sh --dry-run`` runs every step of the campaign on the CPU at a tiny
budget (no install), so that the script, ``bench/gpu.py`` and the gpu-marked tests'
collection cannot rot while no GPU is at hand.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[1]
CONTENDERS = ["plain PyTorch loop", "fedsim (clients one by one)", "fedsim runtime.vectorize=auto"]


def _prepare() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "prepare_gpu_campaign", REPO / "scripts" / "prepare_gpu_campaign.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_campaign_dry_run_runs_every_step_on_the_cpu(tmp_path: Path) -> None:
    # Arrange
    results = REPO / "bench" / "results" / "gpu.md"
    before = results.read_bytes() if results.exists() else None
    out = tmp_path / "campaign"

    # Act
    proc = subprocess.run(
        ["bash", str(REPO / "bench" / "gpu_campaign.sh"), str(out), "--dry-run"],
        env={**os.environ, "PYTHON": sys.executable},
        capture_output=True,
        text=True,
        timeout=170,
    )

    # Assert: every step ran and campaign.md sums them up
    assert proc.returncode == 0, proc.stdout[-4000:]
    summary = (out / "campaign.md").read_text()
    for step in ("device", "tests", "bench"):
        assert f"| {step} | ok |" in summary, summary
    assert "dry run on the CPU: no GPU figure" in summary
    # the gpu-marked tests were collected (this file's neighbours) and none failed
    suite = ET.parse(out / "pytest-gpu.xml").getroot()
    suite = suite if suite.tag == "testsuite" else suite[0]
    assert int(suite.get("tests", 0)) >= 10
    assert int(suite.get("failures", 0)) == int(suite.get("errors", 0)) == 0
    # the benchmark: three contenders doing the same training, raw numbers beside
    rows = [r for r in (out / "gpu.md").read_text().splitlines() if r.startswith("| cnn_cifar")]
    assert [r.split(" | ")[1] for r in rows] == CONTENDERS
    acc = [float(r.rstrip(" |").rsplit(" | ", 1)[1]) for r in rows]
    assert acc[0] == acc[1], rows  # the same training: the same final accuracy
    assert abs(acc[2] - acc[0]) <= 0.01, rows  # batched: the same up to float noise
    raw = json.loads((out / "gpu.json").read_text())
    assert [r["mode"] for r in raw["runs"]] == ["plain", "inline", "vec"]
    assert raw["gpu"] == "no GPU (device cpu)"
    assert len(raw["runs"][1]["round_s"]) == 2  # fedsim's own round times
    # and no GPU figure was written from the CPU
    assert (results.read_bytes() if results.exists() else None) == before


def _bench_gpu(*args: str) -> subprocess.CompletedProcess[str]:
    """``python -m bench.gpu ARGS`` from the repository root, as the campaign runs it."""
    return subprocess.run(
        [sys.executable, "-m", "bench.gpu", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_gpu_results_file_refuses_a_cpu_run() -> None:
    proc = _bench_gpu("--device", "cpu")

    assert proc.returncode != 0
    assert "GPU figures only" in proc.stderr


def test_gpu_md_is_rebuilt_from_a_partial_json(tmp_path: Path) -> None:
    # Arrange: two runs of an interrupted campaign (plain 2 s, vectorised 0.5 s)
    args = {"rounds": 2, "per_round": 5, "samples": 10, "models": "cnn_cifar", "modes": "plain,vec"}
    run = {"model": "cnn_cifar", "width": 1.0, "wall_s": 9.0, "global_acc": 0.5}
    doc = {
        "date": "d", "command": "c", "machine": "m", "gpu": "g", "data": "x",
        "args": {**args, "batch": 10, "lr": 0.05, "precision": "fp32", "clients": 20},
        "runs": [
            {**run, "mode": "plain", "repeat": 1, "loop_s": 2.0, "round_s": []},
            {**run, "mode": "vec", "repeat": 1, "loop_s": 0.5, "round_s": [0.4, 0.1]},
        ],
        "summary": None,
    }  # fmt: skip
    (tmp_path / "gpu.json").write_text(json.dumps(doc))

    # Act
    proc = _bench_gpu("--from-json", str(tmp_path / "gpu.json"))

    # Assert: 100 images in 2 s = 50/s; 4x the plain loop's; fedsim's round 2 took 0.1 s
    assert proc.returncode == 0, proc.stderr
    text = (tmp_path / "gpu.md").read_text()
    assert "| cnn_cifar (width 1) | plain PyTorch loop | 1.000 | 50 | 1.00 | — | 0.5000 |" in text
    assert "| fedsim runtime.vectorize=auto | 0.250 | 200 | 4.00 | 0.100 | 0.5000 |" in text
    assert text in proc.stdout
    assert json.loads((tmp_path / "gpu.json").read_text())["summary"][1]["vs_plain"] == 4.0


def test_prepared_roots_leave_the_hosts_and_the_unused_packages_out() -> None:
    prepare = _prepare()

    names = {prepare.requirement_name(r) for r in prepare.roots(REPO / "pyproject.toml")}
    with_ray = prepare.roots(REPO / "pyproject.toml", with_ray=True)

    assert not names & {"torch", "torchvision", "timm", "tensorboard", "numpy", "pillow"}
    assert not names & {"ray", "scipy", "scikit-learn", "optuna", "hypothesis"}
    assert {"flwr", "hydra-core", "omegaconf", "matplotlib", "pytest", "pytest-timeout"} <= names
    assert "flwr==1.42.*" in prepare.roots(REPO / "pyproject.toml")  # no Ray extra
    assert "ray" in {prepare.requirement_name(r) for r in with_ray}
    assert any(r.startswith("flwr[simulation]") for r in with_ray)


def _item(name: str, *requires: str) -> dict[str, object]:
    """One ``install`` item of a pip ``--report``."""
    return {"metadata": {"name": name, "version": "1.0", "requires_dist": list(requires)}}


def test_wheel_set_is_the_closure_without_host_and_left_out_packages() -> None:
    prepare = _prepare()
    items = [
        _item("flwr", "numpy", "uv", "httpx", "tomli", 'ray==2; extra == "simulation"'),
        _item("httpx", "idna", "anyio"),
        _item("anyio", "idna", 'exceptiongroup; python_version < "3.11"', "typing_extensions"),
        _item("Matplotlib", "numpy", "fonttools"),
        _item("fonttools", 'brotli; extra == "woff"'),
        _item("idna"), _item("exceptiongroup"), _item("ray", "msgpack"), _item("msgpack"),
        _item("uv"), _item("tomli"),
    ]  # fmt: skip
    env = prepare.target_environment("3.12")

    # Act
    plain = prepare.walk(items, ["flwr", "matplotlib"], env, prepare.left_out(False))
    ray = prepare.walk(items, ["flwr[simulation]"], env, prepare.left_out(True))
    old = prepare.walk(items, ["flwr"], prepare.target_environment("3.10"), set())

    # Assert: the walk stops at the host's packages and at the left-out ones, evaluating
    # markers and extras for the target interpreter
    assert set(plain.pins) == {"flwr", "httpx", "anyio", "idna", "matplotlib", "fonttools"}
    assert plain.left_out == {"uv": {"flwr"}, "tomli": {"flwr"}}
    assert plain.host == {"numpy": {"flwr", "matplotlib"}, "typing-extensions": {"anyio"}}
    assert {"ray", "msgpack"} <= set(ray.pins)
    assert "exceptiongroup" in old.pins and {"uv", "tomli"} <= set(old.pins)


def test_prepared_wheels_target_cp312_manylinux() -> None:
    args = _prepare().platform_args("3.12", 28)

    assert args[:2] == ["--only-binary=:all:", "--python-version"] and args[2] == "3.12"
    platforms = [args[i + 1] for i, a in enumerate(args) if a == "--platform"]
    assert platforms[0] == "manylinux2014_x86_64"
    assert platforms[1:] == [f"manylinux_2_{m}_x86_64" for m in range(17, 29)]
    assert [args[i + 1] for i, a in enumerate(args) if a == "--abi"] == ["cp312", "abi3", "none"]
