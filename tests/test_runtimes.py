"""All runtimes give the same metrics for the same seed (inline, inline with workers, Ray)."""

from __future__ import annotations

import json
from pathlib import Path

from fedsim.engine.runner import execute

KEYS = ["train/loss", "eval/acc", "eval/global_acc", "comm/bytes_up", "comm/bytes_down"]


def _rows(record: dict) -> list[dict]:  # type: ignore[type-arg]
    path = Path(record["run_dir"]) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_inline_and_ray_agree_on_three_rounds(fast_cfg, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    # one torch thread everywhere: Ray gives each ClientApp actor one CPU, and float
    # reductions depend on the thread count
    common = ("rounds=3", "runtime.threads=1", "scenario.num_clients=4")
    inline = _rows(execute(fast_cfg(*common, f"output_dir={tmp_path}/inline")))
    ray = _rows(
        execute(fast_cfg(*common, "runtime=ray", "runtime.threads=1", f"output_dir={tmp_path}/ray"))
    )
    assert [r["round"] for r in ray] == [1, 2, 3]
    for key in KEYS:
        assert [r[key] for r in inline] == [r[key] for r in ray], key
