"""Record the final metrics of short reference runs: the guard for behaviour-preserving changes.

Every registered strategy runs two rounds in-process on the identity channel with the
settings of ``tests/test_matrix.py`` (``overrides(name, "identity", ...)``: 3 clients and a
quarter-width CNN on the embedded digits, the 4-client bilinear problem for the MASHA
family, ``digits_open_world`` for FedoSSL), and FedAvg and MASHA1 also run through each
lossy uplink (RandK, TopK, QSGD at ratio 0.3).  Each run's final metrics (what
``fedsim.engine.server.run_experiment`` returns) go to ``tests/golden/final_metrics.json``;
``tests/test_golden.py`` and ``tests/test_matrix.py`` check that a run of the same cell
still gives them.

Left out: wall-clock measurements (``time/...``, and ``sys/...`` keys that hold seconds),
and any metric that differs between two runs of the same cell in this process (every cell
runs twice, so a metric that depends on timing or on global state never enters the file).

Run it on a clean checkout of the commit whose behaviour is the reference::

    git worktree add /tmp/fedsim-golden <commit>
    cp scripts/golden_metrics.py /tmp/fedsim-golden/scripts/
    cd /tmp/fedsim-golden && PYTHONPATH=/tmp/fedsim-golden \\
        /work/main/.venv/bin/python scripts/golden_metrics.py \\
        --out /work/main/tests/golden/final_metrics.json
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

MASHA_FAMILY = ("masha1", "masha2", "eg", "naive_eg")
LOSSY_STRATEGIES = ("fedavg", "masha1")
LOSSY_CHANNELS = ("randk", "topk", "qsgd")


def overrides(name: str, channel: str) -> list[str]:
    """The settings of a cell, as ``tests/test_matrix.py`` composes them (no output_dir).

    Kept here verbatim (not imported from the tests) so that the golden file records the
    settings it was made with; ``tests/test_matrix.py`` checks that its own cells still
    compose the same list.
    """
    out = [
        f"strategy={name}",
        "rounds=2",
        "progress=false",
        "runtime.threads=1",
        "runtime.workers=0",
    ]
    if name in MASHA_FAMILY:
        out += ["scenario=masha_bilinear", "scenario.num_clients=4", "scenario.problem.dim=20"]
    elif name.startswith("fedossl"):
        out += [
            "scenario=digits_open_world",
            "backbone.width=0.25",
            "train.local_epochs=1",
            "train.batch_size=64",
        ]
    else:
        out += ["scenario.num_clients=3", "backbone.width=0.25", "train.local_steps=4"]
    if name in ("fedadam", "fedadagrad"):
        out += ["strategy.eta=0.01"]
    if channel != "identity":
        out += [f"channel.up={channel}", "channel.up.ratio=0.3"]
    return out


def cells() -> list[tuple[str, str]]:
    """Every strategy on the identity channel, then FedAvg and MASHA1 on each lossy uplink."""
    from fedsim.algorithms.registry import algorithms

    out = [(name, "identity") for name in algorithms()]
    out += [(name, ch) for name in LOSSY_STRATEGIES for ch in LOSSY_CHANNELS]
    return out


def cell_key(name: str, channel: str) -> str:
    return f"{name}/{channel}"


def is_timing(metric: str) -> bool:
    """A wall-clock measurement: never the same twice, so never recorded."""
    return metric.startswith("time/") or (metric.startswith("sys/") and metric.endswith("_s"))


def run_cell(cell_overrides: list[str], output_dir: Path) -> dict[str, float]:
    """One in-process run of a cell; returns ``run_experiment``'s final metrics."""
    from fedsim.engine.app import CONFIG_KEY, make_client_app
    from fedsim.engine.conf import compose, to_json
    from fedsim.engine.runtime.inline import InlineGrid
    from fedsim.engine.server import run_experiment
    from fedsim.tracking.callbacks import Callback

    class Quiet(Callback):
        """No TensorBoard, no files: the numbers are all a golden run needs."""

        def on_start(self, info: dict[str, Any]) -> None:
            pass

        def on_round(self, server_round: int, metrics: dict[str, float]) -> None:
            pass

        def on_end(self, summary: dict[str, float], status: str) -> None:
            pass

    cfg = compose([*cell_overrides, f"output_dir={output_dir}"])
    grid = InlineGrid(
        make_client_app(),
        cfg.scenario.num_clients,
        {CONFIG_KEY: to_json(cfg)},
        workers=0,
        threads=1,
    )
    return dict(run_experiment(grid, cfg, output_dir / "run", callbacks=[Quiet()]))


def same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == b


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "tests/golden/final_metrics.json")
    args = parser.parse_args()

    import fedsim

    commit = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--", "fedsim", "strategies", "clients", "protocols"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    print(f"fedsim imported from {fedsim.__file__}; commit {commit}", file=sys.stderr)
    if dirty:
        print(f"warning: uncommitted changes in the library:\n{dirty}", file=sys.stderr)

    recorded: dict[str, Any] = {}
    dropped: dict[str, list[str]] = {}
    for name, channel in cells():
        ov = overrides(name, channel)
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            first = run_cell(ov, Path(tmp) / "a")
            second = run_cell(ov, Path(tmp) / "b")
        kept = {}
        for metric, value in first.items():
            if is_timing(metric):
                continue
            if metric not in second or not same(value, second[metric]):
                dropped.setdefault(cell_key(name, channel), []).append(metric)
                continue
            kept[metric] = value
        recorded[cell_key(name, channel)] = {"overrides": ov, "metrics": kept}
        print(
            f"{cell_key(name, channel)}: {len(kept)} metrics, "
            f"{time.perf_counter() - t0:.1f} s for two runs",
            file=sys.stderr,
        )

    doc = {
        "commit": commit,
        "command": (
            f"git worktree add /tmp/fedsim-golden {commit[:7]} && "
            "cp scripts/golden_metrics.py /tmp/fedsim-golden/scripts/ && "
            "cd /tmp/fedsim-golden && PYTHONPATH=/tmp/fedsim-golden "
            "/work/main/.venv/bin/python scripts/golden_metrics.py "
            "--out /work/main/tests/golden/final_metrics.json"
        ),
        "imported_from": fedsim.__file__,
        "excluded": (
            "time/* and sys/*_s (wall clock); metrics that differ between two runs of a cell"
        ),
        "nondeterministic": dropped,
        "cells": recorded,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
    print(f"wrote {len(recorded)} cells to {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
