"""The golden final metrics of ``tests/golden``: complete, free of timings, and compared
with a check that fails when a number moves.

The default suite runs no cell here: ``tests/test_matrix.py``'s cells already run every
recorded setting and compare their final metrics with the file (a second run would double
the cost, about 50 s on two cores).  ``pytest -m slow tests/test_golden.py`` reruns each
recorded cell on its own, through the function that recorded it
(``scripts/golden_metrics.py``).
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path
from types import ModuleType

import golden
import pytest
from conftest import REPO

from fedsim.algorithms.registry import algorithms

CELLS = sorted(golden.reference()["cells"])


def _script() -> ModuleType:
    path = REPO / "scripts" / "golden_metrics.py"
    spec = importlib.util.spec_from_file_location("golden_metrics", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_registered_strategy_and_each_lossy_uplink_has_a_reference() -> None:
    recorded = set(CELLS)
    missing = [f"{n}/identity" for n in algorithms() if f"{n}/identity" not in recorded]
    missing += [
        f"{n}/{c}"
        for n in ("fedavg", "masha1")
        for c in ("randk", "topk", "qsgd")
        if f"{n}/{c}" not in recorded
    ]
    assert not missing, f"{golden.FILE} lacks {missing}: run scripts/golden_metrics.py"


def test_the_file_names_its_commit_and_holds_no_timings() -> None:
    ref = golden.reference()
    assert len(ref["commit"]) == 40 and "golden_metrics.py" in ref["command"]
    for key in CELLS:
        metrics = ref["cells"][key]["metrics"]
        assert metrics, key
        timings = [m for m in metrics if m.startswith("time/") or m.endswith("_s")]
        assert not timings, (key, timings)
        assert all(math.isfinite(v) for v in metrics.values()), key


def test_the_recorded_settings_are_the_scripts() -> None:
    script = _script()
    for key in CELLS:
        name, channel = key.split("/")
        assert golden.reference()["cells"][key]["overrides"] == script.overrides(name, channel)


def test_a_moved_or_missing_metric_is_named_with_both_numbers() -> None:
    expected = {"eval/acc": 0.5, "comm/bytes_up_total": 1000.0, "masha/rel_dist": 0.0}
    close = {"eval/acc": 0.5 * (1 + 5e-6), "comm/bytes_up_total": 1000.0, "masha/rel_dist": 5e-8}
    assert golden.mismatches("c", expected, close) == []
    moved = {**close, "eval/acc": 0.5 * (1 + 2e-5), "masha/rel_dist": 2e-7}
    assert golden.mismatches("c", expected, moved) == [
        f"c: eval/acc expected 0.5, got {0.5 * (1 + 2e-5)!r}",
        "c: masha/rel_dist expected 0.0, got 2e-07",
    ]
    assert golden.mismatches("c", expected, {"eval/acc": 0.5, "masha/rel_dist": 0.0}) == [
        "c: comm/bytes_up_total expected 1000.0, got nothing"
    ]


@pytest.mark.slow
@pytest.mark.parametrize("key", CELLS)
def test_a_recorded_cell_reproduces_its_final_metrics(key: str, tmp_path: Path) -> None:
    recorded = golden.reference()["cells"][key]
    final = _script().run_cell(recorded["overrides"], tmp_path)
    bad = golden.mismatches(key, recorded["metrics"], final)
    assert not bad, "final metrics moved from tests/golden:\n" + "\n".join(bad)
