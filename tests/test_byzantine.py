"""Byzantine clients of a scenario's ``faults:`` section (fedsim.faults, fedsim.wrap.client)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fedsim.config import FaultConfig
from fedsim.errors import ConfigError
from fedsim.faults import attack, attacks, byzantine_clients, flips_labels
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


def test_attackers_are_counted_and_hurt_fedavg(tmp_path: Path) -> None:
    from fedsim.api import run

    common = ["backbone.width=0.25", "runtime.threads=1", f"output_dir={tmp_path}",
              "progress=false", "scenario.faults.byzantine=0.3",
              "scenario.faults.attack=sign_flip"]  # fmt: skip
    result = run(strategy="fedavg", rounds=2, overrides=common)
    rounds = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").open()]
    assert [r["sys/byzantine_clients"] for r in rounds] == [3.0, 3.0]


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
