"""What one client-round costs outside training, before and after fedsim's fast codec.

    python -m bench.codec

On the digits CNN's state dict (the overhead job's model): Flower's ``Array(ndarray)`` /
``Array.numpy()`` (``np.save`` / ``np.load`` per array) against fedsim's
``to_array`` / ``from_array`` (byte-identical wire format, one copy, cached header, no
header parsing), and the update-norm check in float64 against one float32 pass.
Median of 15 repetitions per operation; appends to ``bench/results/codec.md``.
"""

from __future__ import annotations

import statistics
import time

import numpy as np
from flwr.app import Array

from bench.compare_runtimes import machine
from fedsim.algorithms.aggregate import update_norm
from fedsim.config import BackboneConfig
from fedsim.models.modelzoo import initial_model
from fedsim.records import from_array, to_array


def timed(fn, reps: int = 15) -> float:  # type: ignore[no-untyped-def]
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return statistics.median(out)


def norm_float64(update: dict, reference: dict) -> float:  # type: ignore[type-arg]
    """The first version: float64 copies of both arrays per key."""
    total = 0.0
    for key, value in update.items():
        if np.issubdtype(value.dtype, np.floating):
            diff = value.astype(np.float64) - reference[key]
            total += float(np.dot(diff.ravel(), diff.ravel()))
    return float(np.sqrt(total))


def main() -> None:
    model = initial_model(BackboneConfig(name="cnn_digits"), (1, 8, 8), 10, seed=0)
    arrays = {k: v.numpy() for k, v in model.state_dict().items()}
    params = sum(a.size for a in arrays.values())
    flower = {k: Array(v) for k, v in arrays.items()}
    ours = {k: to_array(v) for k, v in arrays.items()}
    assert all(flower[k].data == ours[k].data for k in arrays)  # same bytes on the wire
    other = {k: v + 1 if v.dtype.kind == "f" else v for k, v in arrays.items()}
    rows = [
        (
            "serialise (Array(ndarray) vs to_array)",
            lambda: [Array(v) for v in arrays.values()],
            lambda: [to_array(v) for v in arrays.values()],
        ),
        (
            "deserialise (Array.numpy() vs from_array)",
            lambda: [a.numpy() for a in flower.values()],
            lambda: [from_array(a) for a in ours.values()],
        ),
        (
            "update-norm check (float64 vs float32)",
            lambda: norm_float64(other, arrays),
            lambda: update_norm(other, arrays),
        ),
    ]
    lines = [
        f"## codec — {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        "",
        f"Machine: {machine()}.  Command: `python -m bench.codec`.  Model: cnn_digits on 1x8x8 "
        f"({params:,} values, {len(arrays)} arrays); median of 15 repetitions.",
        "",
        "| operation (per message) | before (ms) | after (ms) | speed-up |",
        "|---|---|---|---|",
    ]
    for name, before, after in rows:
        b, a = timed(before), timed(after)
        lines.append(f"| {name} | {b * 1000:.2f} | {a * 1000:.2f} | {b / a:.1f}x |")
    text = "\n".join(lines) + "\n"
    print(text)
    with open("bench/results/codec.md", "a") as f:
        f.write(text + "\n")


if __name__ == "__main__":
    main()
