"""Pure codecs and byte accounting of the compressors (:mod:`fedsim.channels`).

Free functions on numpy arrays, tested on hand-checkable numbers; the compressor
classes (:mod:`fedsim.algorithms.channels.compressors`) frame their output into records.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Mapping

import numpy as np
from flwr.app import ArrayRecord, Message

from fedsim.records import array_records

SEP = "|"  # record key = "<array name>|<part>"; model keys contain dots, never bars
SHAPE = "shape"  # the part that describes an encoded array's shape (framing, not counted)
QSGD_BUCKET = 512

Arrays = Mapping[str, np.ndarray]
#: record name -> the arrays a client holds after decoding the downlink (what the uplink
#: sends its updates against)
References = Mapping[str, Mapping[str, np.ndarray]]


# --------------------------------------------------------------------------- accounting


def payload_nbytes(record: ArrayRecord) -> int:
    """Data bytes of an ArrayRecord: ``prod(shape) * itemsize`` summed over its arrays."""
    total = 0
    for key, arr in record.items():
        if key.endswith(_FRAMING):
            continue  # framing, like the npy header: the shape of an encoded array
        total += math.prod(arr.shape) * _itemsize(arr.dtype)
    return total


_FRAMING = f"{SEP}{SHAPE}"


@functools.lru_cache(maxsize=64)
def _itemsize(dtype: str) -> int:
    return np.dtype(dtype).itemsize


def wire_nbytes(messages: Iterable[Message]) -> int:
    """Data bytes of every array record in the messages that carry content."""
    return sum(
        payload_nbytes(rec)
        for m in messages
        if m.has_content()
        for rec in array_records(m.content).values()
    )


def _described(payload: ArrayRecord) -> dict[str, np.ndarray]:
    """Zero arrays shaped as the payload describes them (for decoding without ``like``)."""
    out: dict[str, np.ndarray] = {}
    for key, arr in payload.items():
        if SEP not in key:
            out[key] = arr.numpy()
        elif key.endswith(f"{SEP}{SHAPE}"):
            shape = tuple(int(d) for d in arr.numpy())
            out[key[: -len(SHAPE) - 1]] = np.zeros(shape, dtype=np.float32)
    return out


# --------------------------------------------------------------------------- pure codecs


def num_kept(d: int, ratio: float) -> int:
    """``k = ceil(ratio * d)``, at least 1 and at most ``d``."""
    return min(d, max(1, math.ceil(ratio * d - 1e-9)))


def randk_indices(seed: int, d: int, k: int) -> np.ndarray:
    """The RandK mask of a seed: ``k`` distinct indices of ``range(d)``, sorted."""
    return np.sort(np.random.default_rng(seed).choice(d, size=k, replace=False))


def randk(v: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Dense RandK estimate ``(d/k) * v * mask`` (the maths, for tests and strategies)."""
    d = v.size
    out = np.zeros_like(v)
    idx = randk_indices(int(rng.integers(2**63)), d, k)
    out[idx] = v[idx] * (d / k)
    return out


def topk_indices(v: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` largest ``|v_i|`` (ties broken by position), sorted."""
    if k >= v.size:
        return np.arange(v.size)
    order = np.argsort(-np.abs(v), kind="stable")[:k]
    return np.sort(order)


def topk(v: np.ndarray, k: int) -> np.ndarray:
    """Dense TopK: ``v`` with all but its ``k`` largest-magnitude entries zeroed."""
    out = np.zeros_like(v)
    idx = topk_indices(v, k)
    out[idx] = v[idx]
    return out


def _scatter_rows(rows: np.ndarray, idx: np.ndarray, scale: float) -> np.ndarray:
    """Zeros but ``rows[i, idx[i]] * scale`` (the rows rounded to float32 first)."""
    as_sent = rows.astype(np.float32).astype(np.float64)
    out = np.zeros_like(as_sent)
    at = np.arange(rows.shape[0])[:, None]
    out[at, idx] = as_sent[at, idx] * scale
    return out


def qsgd_encode(
    v: np.ndarray, levels: int, rng: np.random.Generator, bucket: int = QSGD_BUCKET
) -> tuple[np.ndarray, np.ndarray]:
    """Per-bucket norms (float32) and signed integer levels (int8) of QSGD."""
    d = v.size
    nb = max(1, math.ceil(d / bucket))
    padded = np.zeros(nb * bucket, dtype=np.float64)
    padded[:d] = v
    blocks = padded.reshape(nb, bucket)
    norms = np.linalg.norm(blocks, axis=1).astype(np.float32)
    scale = np.where(norms > 0, levels / np.maximum(norms.astype(np.float64), 1e-300), 0.0)
    mag = np.abs(blocks) * scale[:, None]
    lower = np.floor(mag)
    up = rng.random(mag.shape) < (mag - lower)
    q = np.minimum(lower + up, levels) * np.sign(blocks)
    return norms, q.reshape(-1)[:d].astype(np.int8)


def qsgd_decode(
    norms: np.ndarray, q: np.ndarray, levels: int, bucket: int = QSGD_BUCKET
) -> np.ndarray:
    """Dense float64 vector of a QSGD encoding."""
    d = q.size
    per_coord = np.repeat(norms.astype(np.float64), bucket)[:d]
    return per_coord * q.astype(np.float64) / levels
