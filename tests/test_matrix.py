"""Every registered strategy x every uplink channel x {in-process, 2 worker processes}.

Two rounds each.  (A lossy *downlink* compresses the model itself for FedAvg-like
strategies, which has no reference point; ``tests/test_channels.py`` covers it.)

The wrappers (``fedsim.algorithms.wrap``) promise that no algorithm can bypass participation, the
channels or reply filtering.  Each cell checks: every logged number is finite; the bytes
the round loop counted are the data bytes of the messages that crossed the grid, and a
lossy channel sends fewer of them than the identity channel did in the reference run of
the same strategy (``tests/golden``; the identity cells send exactly those bytes, under
either runtime); the model is no worse than at the start (classification: the last
round's federated loss is at most 5 % above the first round's; MASHA: the relative
distance to the solution has not grown).  The cells recorded in
``tests/golden/final_metrics.json`` (every strategy on the identity channel, FedAvg and
MASHA1 on each lossy uplink; recorded in-process) also reproduce every recorded final
metric, in-process and with worker processes.
The in-process cells run in the default suite, and so do the worker cells of one
strategy per family with the identity and RandK channels; the other worker cells are
``slow``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import golden
import pytest

from fedsim.algorithms.registry import algorithms
from fedsim.tracking.callbacks import Callback

STRATEGIES = list(algorithms())
CHANNELS = ("identity", "randk", "topk", "qsgd")


def overrides(name: str, channel: str, tmp_path: Path, workers: int) -> list[str]:
    out = [
        f"strategy={name}",
        "rounds=2",
        "progress=false",
        f"output_dir={tmp_path}",
        "runtime.threads=1",
        f"runtime.workers={workers}",
    ]
    if name in ("masha1", "masha2", "eg", "naive_eg"):
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
        out += ["strategy.eta=0.01"]  # Flower's 0.1 moves every weight by ~0.1 a round
    if channel != "identity":
        out += [f"channel.up={channel}", "channel.up.ratio=0.3"]
    return out


class Collect(Callback):
    """A round-loop callback that keeps every round's metrics."""

    def __init__(self) -> None:
        self.rounds: list[dict[str, float]] = []

    def on_start(self, info: dict[str, Any]) -> None:
        pass

    def on_round(self, server_round: int, metrics: dict[str, float]) -> None:
        self.rounds.append(dict(metrics))

    def on_end(self, summary: dict[str, float], status: str) -> None:
        pass


def run_cell(name: str, channel: str, tmp_path: Path, workers: int) -> None:
    from recording import RecordingGrid

    from fedsim.algorithms.channels import wire_nbytes
    from fedsim.engine.app import CONFIG_KEY, make_client_app
    from fedsim.engine.conf import compose, to_json
    from fedsim.engine.server import run_experiment

    cfg = compose(overrides(name, channel, tmp_path, workers))
    grid = RecordingGrid(
        make_client_app(),
        cfg.scenario.num_clients,
        {CONFIG_KEY: to_json(cfg)},
        workers=workers,
        threads=1,
    )
    collect = Collect()
    final = run_experiment(grid, cfg, tmp_path / "run", callbacks=[collect])
    first, last = collect.rounds[0], collect.rounds[-1]
    for rnd in collect.rounds:  # every number logged is finite
        bad = {k: v for k, v in rnd.items() if not math.isfinite(v)}
        assert not bad, f"{name} x {channel}: non-finite metrics {bad}"
    train = [m for m in grid.received if m.has_content() and m.metadata.message_type == "train"]
    sent = [m for m in grid.sent if m.metadata.message_type == "train"]
    assert last["comm/bytes_up_total"] == wire_nbytes(train)
    assert last["comm/bytes_down_total"] == wire_nbytes(sent)
    total = last["comm/bytes_up_total"] + last["comm/bytes_down_total"]
    assert total > 0
    reference = golden.cell(name, "identity")
    assert reference is not None, f"{name}: no reference run in {golden.FILE}"
    plain = (
        reference["metrics"]["comm/bytes_up_total"] + reference["metrics"]["comm/bytes_down_total"]
    )
    if channel == "identity":
        assert total == plain, f"{name}: {total} bytes, the reference run sent {plain}"
    else:
        assert total < plain, (
            f"{name} x {channel}: {total} bytes, not fewer than identity's {plain}"
        )
    recorded = golden.cell(name, channel)
    if recorded is not None:  # worker processes give the in-process numbers
        settings = [o for o in overrides(name, channel, tmp_path, 0) if "output_dir=" not in o]
        assert settings == recorded["overrides"], "not the settings of the recorded run"
        bad = golden.mismatches(f"{name}/{channel}", recorded["metrics"], final)
        assert not bad, "final metrics moved from tests/golden:\n" + "\n".join(bad)
    if "masha/rel_dist" in last:
        if not (name == "naive_eg" and channel != "identity"):  # the baseline that stalls
            assert last["masha/rel_dist"] <= first.get("masha/rel_dist", 1.0) + 1e-9
        return
    assert last["eval/loss"] <= 1.05 * first["eval/loss"], (name, channel, first, last)
    # the updates arrived: the global model moved away from the initial weights
    import torch

    from fedsim.models.modelzoo import initial_model

    final = torch.load(tmp_path / "run" / "final_model.pt")
    start = initial_model(cfg.backbone, (1, 8, 8), 10, cfg.seed).state_dict()
    moved = max(float((final[k].double() - start[k].double()).abs().max()) for k in start)
    assert moved > 1e-4, f"{name} x {channel}: the global model did not change"


@pytest.mark.parametrize("channel", CHANNELS)
@pytest.mark.parametrize("name", STRATEGIES)
def test_in_process(name: str, channel: str, tmp_path: Path) -> None:
    run_cell(name, channel, tmp_path, workers=0)


#: one strategy of each family runs with worker processes in the default suite
WORKERS_QUICK = ("fedavg", "fedbn", "scaffold", "fedadam", "krum", "fraug", "fedossl", "masha1")
WORKER_CELLS = [
    pytest.param(
        n,
        c,
        marks=[] if n in WORKERS_QUICK and c in ("identity", "randk") else [pytest.mark.slow],
    )
    for c in CHANNELS
    for n in STRATEGIES
]


@pytest.mark.parametrize(("name", "channel"), WORKER_CELLS)
def test_two_worker_processes(name: str, channel: str, tmp_path: Path) -> None:
    run_cell(name, channel, tmp_path, workers=2)
