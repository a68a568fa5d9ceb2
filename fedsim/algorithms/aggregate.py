"""Aggregation maths as pure functions over NumPy arrays (no Flower, no torch).

Kept apart from the strategy classes so that they can be tested on hand-checkable
numbers: weights ``[1, 3]`` and values ``[0, 4]`` average to exactly ``3.0``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

Arrays = Mapping[str, np.ndarray]


def weighted_average(updates: Sequence[Arrays], weights: Sequence[float]) -> dict[str, np.ndarray]:
    """Weighted mean of several clients' arrays, key by key.

    Accumulates in float64 and casts back to each array's dtype (integer buffers such as
    BatchNorm's ``num_batches_tracked`` are rounded).  Every update must carry the same
    keys with the same shapes.

    Raises
    ------
    ValueError
        If there are no updates, the weights do not sum to a positive number, or the
        updates disagree on keys or shapes.
    """
    if not updates:
        raise ValueError("weighted_average needs at least one update")
    if len(updates) != len(weights):
        raise ValueError(f"{len(updates)} updates but {len(weights)} weights")
    w = np.asarray(weights, dtype=np.float64)
    if np.any(w < 0) or w.sum() <= 0:
        raise ValueError(f"weights must be non-negative with a positive sum, got {list(weights)}")
    w = w / w.sum()
    keys = list(updates[0].keys())
    out: dict[str, np.ndarray] = {}
    for key in keys:
        first = updates[0][key]
        acc = np.zeros(first.shape, dtype=np.float64)
        for wi, upd in zip(w, updates, strict=True):
            if key not in upd:
                raise ValueError(f"update is missing key '{key}'")
            if upd[key].shape != first.shape:
                raise ValueError(f"shape mismatch for '{key}': {upd[key].shape} vs {first.shape}")
            acc += wi * upd[key]
        if np.issubdtype(first.dtype, np.integer):
            out[key] = np.rint(acc).astype(first.dtype)
        else:
            out[key] = acc.astype(first.dtype)
    return out


def is_finite_update(update: Arrays) -> bool:
    """True when every floating-point array of the update is free of NaN and Inf."""
    return all(
        bool(np.isfinite(a).all()) for a in update.values() if np.issubdtype(a.dtype, np.floating)
    )


def update_norm(update: Arrays, reference: Arrays) -> float:
    """L2 norm of ``update - reference`` over the floating-point keys both share.

    One pass per array (a float32 difference and a BLAS dot product); NaN or Inf in the
    update makes the result non-finite, so this doubles as a fast finiteness check.
    """
    total = 0.0
    for key, value in update.items():
        if key in reference and np.issubdtype(value.dtype, np.floating):
            diff = np.subtract(value, reference[key], dtype=np.float32).ravel()
            total += float(np.dot(diff, diff))
    return float(np.sqrt(total))
