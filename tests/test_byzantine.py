"""Byzantine clients of a scenario's ``faults:`` section (fedsim.data.faults,
fedsim.algorithms.wrap.client)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from fedsim.config import FaultConfig
from fedsim.data.faults import attack, attacks, byzantine_clients, flips_labels
from fedsim.errors import ConfigError
from fedsim.records import arrays_from_numpy, numpy_from_arrays


def test_attackers_are_a_fixed_set_per_seed() -> None:
    f = FaultConfig(byzantine=0.3)
    a = byzantine_clients(f, 10, seed=0)
    assert len(a) == 3 and a == byzantine_clients(f, 10, seed=0)
    assert byzantine_clients(f, 10, seed=1) != a or len(a) == 10
    assert byzantine_clients(FaultConfig(), 10, 0) == frozenset()
    flip = FaultConfig(byzantine=0.3, attack="label_flip")
    assert all(flips_labels(flip, 10, 0, p) == (p in a) for p in range(10))
    assert not any(attacks(flip, 10, 0, p) for p in range(10))  # label_flip trains, not tampers


def test_attacks_on_hand_checkable_numbers() -> None:
    received = arrays_from_numpy({"w": np.array([1.0, 1.0], dtype=np.float32)})
    sent = arrays_from_numpy({"w": np.array([2.0, 0.0], dtype=np.float32)})  # update [1, -1]
    rng = np.random.default_rng(0)
    flip = numpy_from_arrays(attack(FaultConfig(attack="sign_flip"), received, sent, rng))
    assert flip["w"].tolist() == [-3.0, 5.0]  # 1 - 4 * [1, -1]
    scale = FaultConfig(attack="scale", attack_scale=10.0)
    assert numpy_from_arrays(attack(scale, received, sent, rng))["w"].tolist() == [11.0, -9.0]
    noisy = numpy_from_arrays(attack(FaultConfig(attack="gaussian"), received, sent, rng))["w"]
    assert noisy.shape == (2,) and not np.allclose(noisy, [2.0, 0.0])


def test_bad_attack_settings_are_refused(fast_cfg) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError, match=r"faults\.attack: unknown 'flip'"):
        fast_cfg("scenario.faults.attack=flip")
    with pytest.raises(ConfigError, match=r"faults\.byzantine: must be in \[0, 1\)"):
        fast_cfg("scenario.faults.byzantine=1.0")


@dataclass
class Round:
    """What one recorded FedAvg round shows: arrays as float64, replies by partition id."""

    metrics: dict[str, float]
    start: dict[str, np.ndarray]  # the global model the clients received
    replies: dict[int, dict[str, np.ndarray]]  # the model each client sent back
    examples: dict[int, float]  # each reply's num-examples (FedAvg's weight)
    final: dict[str, np.ndarray]  # the global model after aggregation


def _floats(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {
        k: v.astype(np.float64) for k, v in arrays.items() if np.issubdtype(v.dtype, np.floating)
    }


def _one_fedavg_round(tmp_path: Path, *extra: str) -> Round:
    """One FedAvg round of the 10 digits_iid clients on a RecordingGrid."""
    import torch
    from conftest import small_overrides
    from recording import RecordingGrid

    from fedsim.engine.app import CONFIG_KEY, make_client_app
    from fedsim.engine.conf import compose, to_json
    from fedsim.engine.runtime.inline import NODE_BASE
    from fedsim.engine.server import run_experiment

    cfg = compose(small_overrides(tmp_path, "strategy=fedavg", "rounds=1",
                                  "runtime.threads=1", "train.local_steps=4", *extra))  # fmt: skip
    grid = RecordingGrid(make_client_app(), cfg.scenario.num_clients, {CONFIG_KEY: to_json(cfg)})
    metrics = run_experiment(grid, cfg, tmp_path / "run", callbacks=[])
    sent = [m for m in grid.sent if m.metadata.message_type == "train"]
    replies = {
        m.metadata.src_node_id - NODE_BASE: m
        for m in grid.received
        if m.has_content() and m.metadata.message_type == "train"
    }
    final = torch.load(tmp_path / "run" / "final_model.pt")
    return Round(
        metrics=metrics,
        start=_floats(numpy_from_arrays(sent[0].content.array_records["arrays"])),
        replies={
            p: _floats(numpy_from_arrays(m.content.array_records["arrays"]))
            for p, m in replies.items()
        },
        examples={
            p: float(m.content.metric_records["metrics"]["num-examples"])  # type: ignore[arg-type]
            for p, m in replies.items()
        },
        final=_floats({k: v.numpy() for k, v in final.items()}),
    )


def test_sign_flip_reverses_the_attackers_updates_and_moves_fedavg_against_them(
    tmp_path: Path,
) -> None:
    """The same seed with and without ``sign_flip`` (attack_scale 4, 3 of 10 clients).

    Honest clients send the same arrays in both runs; the attackers send
    ``start - 4 u`` where the clean run's same client sent ``start + u``, and they are the
    clients the server counts.  FedAvg's new model is the example-weighted mean, so it
    moves by exactly ``-(4 + 1) * sum_attackers(w_i u_i)`` against the clean run's.
    """
    clean = _one_fedavg_round(tmp_path / "clean")
    attacked = _one_fedavg_round(
        tmp_path / "attacked", "scenario.faults.byzantine=0.3", "scenario.faults.attack=sign_flip"
    )
    assert set(clean.replies) == set(attacked.replies) == set(range(10))
    assert clean.examples == attacked.examples
    start = clean.start
    assert all(np.array_equal(start[k], attacked.start[k]) for k in start)

    flipped = set()
    for pid in range(10):
        u = {k: v - start[k] for k, v in clean.replies[pid].items()}
        got = {k: v - start[k] for k, v in attacked.replies[pid].items()}
        if all(np.array_equal(got[k], u[k]) for k in u):
            continue  # an honest client: untouched
        flipped.add(pid)
        for k in u:  # float32 on the wire: start - 4 u, rounded, then minus start
            np.testing.assert_allclose(got[k], -4.0 * u[k], rtol=1e-4, atol=1e-6, err_msg=k)
    attackers = byzantine_clients(FaultConfig(byzantine=0.3), 10, seed=0)
    assert len(attackers) == 3 and flipped == attackers, (flipped, attackers)
    assert attacked.metrics["sys/byzantine_clients"] == 3.0
    assert clean.metrics.get("sys/byzantine_clients", 0.0) == 0.0

    total = sum(clean.examples.values())
    for k in start:
        shift = attacked.final[k] - clean.final[k]
        attackers_part = sum(
            clean.examples[p] / total * (clean.replies[p][k] - start[k]) for p in attackers
        )
        np.testing.assert_allclose(shift, -5.0 * attackers_part, rtol=1e-3, atol=1e-6, err_msg=k)
    moved = max(float(np.abs(attacked.final[k] - clean.final[k]).max()) for k in start)
    assert moved > 1e-3, "the attack did not move the global model"


@pytest.mark.slow
def test_krum_and_bulyan_end_above_fedavg_under_sign_flipping(tmp_path: Path) -> None:
    from fedsim.api import run

    common = ["runtime.threads=1", f"output_dir={tmp_path}", "progress=false",
              "scenario.faults.byzantine=0.3", "scenario.faults.attack=sign_flip"]  # fmt: skip
    # Flower's Bulyan defaults to f = 0 attackers, where it keeps every update (= FedAvg);
    # n >= 4 f + 3 lets 10 clients name f = 1 (docs/results/robust.md)
    extra = {"fedavg": [], "krum": [], "bulyan": ["strategy.num_malicious_nodes=1"]}
    acc = {s: run(strategy=s, rounds=10, overrides=common + o).metrics["eval/acc"]
           for s, o in extra.items()}  # fmt: skip
    assert acc["krum"] > acc["fedavg"] and acc["bulyan"] > acc["fedavg"], acc
