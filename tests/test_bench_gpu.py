"""bench/gpu.py runs end to end (on the CPU, at a tiny budget) and reports every contender."""

from __future__ import annotations

import pytest


@pytest.mark.slow
def test_gpu_benchmark_runs_on_cpu_at_a_tiny_budget() -> None:
    from bench.gpu import main

    text = main(
        [
            "--device", "cpu", "--clients", "12", "--per-round", "3", "--samples", "8",
            "--rounds", "2", "--models", "cnn_digits", "--cnn-width", "0.25",
            "--repeats", "1", "--no-write",
        ]
    )  # fmt: skip
    rows = [line for line in text.splitlines() if line.startswith("| cnn_digits")]
    assert [r.split(" | ")[1] for r in rows] == [
        "plain PyTorch loop",
        "fedsim (clients one by one)",
        "fedsim runtime.vectorize=auto",
    ]
    acc = [float(r.rstrip(" |").rsplit(" | ", 1)[1]) for r in rows]
    assert acc[0] == acc[1], rows  # the same training: the same final accuracy
    assert abs(acc[2] - acc[0]) <= 0.01, rows  # batched: the same up to float noise
