"""Compression channels: encode on the sender, measure in transit, decode on the receiver.

A channel turns a mapping of named arrays into the :class:`~flwr.app.ArrayRecord` that
really travels, and back.  Strategies never know which codec is in use: the base server
strategy and the base client call :func:`make_channel` with ``channel.up`` /
``channel.down`` of the run configuration, and the round loop measures what crossed the
Grid with :func:`wire_nbytes` (FLSim's channel design, see ``shared/STYLE.md`` §5).

Codecs (every one works array by array, on the flattened array; non-floating arrays,
e.g. BatchNorm's ``num_batches_tracked``, always travel unchanged):

``identity``
    The arrays as they are (byte-identical to a message without a channel).
``randk``
    RandK (unbiased): ``k = ceil(ratio * d)`` coordinates drawn uniformly without
    replacement, scaled by ``d / k`` on the receiver, so ``E[Q(v)] = v`` and
    ``E||Q(v)||^2 = (d/k) ||v||^2``.  The mask is drawn from a fresh 64-bit seed per call
    (the caller passes a generator derived from ``(seed, round, client)``); the seed, not
    the indices, is sent.
``topk``
    TopK (contractive, biased): the ``k`` largest-magnitude coordinates, unscaled;
    ``||C(v) - v||^2 <= (1 - k/d) ||v||^2`` (``delta = d/k``).  Values and indices are sent.
``qsgd``
    QSGD (Alistarh et al., NeurIPS 2017, arXiv 1610.02132) with ``s = levels`` levels per
    bucket of :data:`QSGD_BUCKET` coordinates: ``Q(v_i) = ||v_b|| sign(v_i) xi_i / s`` with
    ``xi_i`` the stochastic rounding of ``s |v_i| / ||v_b||`` (unbiased).  Sent: one float32
    norm per bucket and one signed int8 level per coordinate (so ``levels <= 127``; no
    Elias coding, unlike the paper).
``sparse``
    Lossless: the non-zero values and their indices when that is smaller than the dense
    array, else the dense array.  Useful for a server that forwards an average of sparse
    vectors uncompressed ("unidirectional" compression).

Byte convention (:func:`payload_nbytes`): the bytes of the array *data* that is sent —
4 per float32 value, 4 per int32 index, 8 per seed, 1 per int8 level.  The per-array
framing that Flower adds on the wire (the ``.npy`` header, dtype, shape and record keys,
about 128 bytes per array) and the config/metric scalars are not counted: they do not
depend on the codec and would swamp the payload of small problems.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Collection, Iterable, Mapping
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, Message

from fedsim.config import ChannelSideConfig
from fedsim.tracking import Callback

SEP = "|"  # record key = "<array name>|<part>"; model keys contain dots, never bars
SHAPE = "shape"  # the part that describes an encoded array's shape (framing, not counted)
QSGD_BUCKET = 512
CHANNEL_NAMES = ("identity", "randk", "topk", "qsgd", "sparse")

Arrays = Mapping[str, np.ndarray]


# --------------------------------------------------------------------------- accounting


def payload_nbytes(record: ArrayRecord) -> int:
    """Data bytes of an ArrayRecord: ``prod(shape) * itemsize`` summed over its arrays."""
    total = 0
    for key, arr in record.items():
        if key.endswith(f"{SEP}{SHAPE}"):
            continue  # framing, like the npy header: the shape of an encoded array
        total += int(np.prod(arr.shape, dtype=np.int64)) * np.dtype(arr.dtype).itemsize
    return total


def wire_nbytes(messages: Iterable[Message]) -> int:
    """Data bytes of every array record in the messages that carry content."""
    return sum(
        payload_nbytes(rec)
        for m in messages
        if m.has_content()
        for rec in m.content.array_records.values()
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


# --------------------------------------------------------------------------- channels


class Channel(ABC):
    """One direction of a link: ``encode`` on the sender, ``decode`` on the receiver."""

    name = "channel"
    lossless = False

    def encode(
        self, arrays: Arrays, rng: np.random.Generator, exact: Collection[str] = ()
    ) -> ArrayRecord:
        """The record that travels for ``arrays`` (key order kept); arrays named in
        ``exact`` (statistics such as BatchNorm's running variance, which a sparsified
        update could make negative) travel as they are."""
        out: OrderedDict[str, Array] = OrderedDict()
        for key, value in arrays.items():
            value = np.asarray(value)
            if key in exact or not np.issubdtype(value.dtype, np.floating):
                out[key] = Array(np.ascontiguousarray(value))
                continue
            for part, data in self.encode_vector(value.reshape(-1), rng).items():
                out[f"{key}{SEP}{part}"] = Array(np.ascontiguousarray(data))
            out[f"{key}{SEP}{SHAPE}"] = Array(np.asarray(value.shape, dtype=np.int64))
        return ArrayRecord(out)

    def decode(self, payload: ArrayRecord, like: Arrays | None) -> dict[str, np.ndarray]:
        """Arrays shaped (and typed) like ``like`` from a payload of :meth:`encode`;
        without ``like`` every array the payload holds, float32, in its sent shape."""
        if like is None:
            like = _described(payload)
        out: dict[str, np.ndarray] = {}
        for key, ref in like.items():
            ref = np.asarray(ref)
            if key in payload:
                out[key] = payload[key].numpy().reshape(ref.shape)
                continue
            prefix = f"{key}{SEP}"
            parts = {
                k[len(prefix) :]: a.numpy() for k, a in payload.items() if k.startswith(prefix)
            }
            parts.pop(SHAPE, None)
            if not parts:
                continue  # not sent (e.g. a strategy that shares a subset)
            vec = self.decode_vector(parts, ref.size)
            out[key] = vec.reshape(ref.shape).astype(ref.dtype, copy=False)
        return out

    @abstractmethod
    def encode_vector(self, v: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """Parts of the encoding of one flat floating vector."""

    @abstractmethod
    def decode_vector(self, parts: Mapping[str, np.ndarray], d: int) -> np.ndarray:
        """The flat vector (length ``d``) of :meth:`encode_vector`'s parts."""

    def roundtrip(self, v: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """``decode(encode(v))`` of one vector: what the receiver ends up with."""
        return self.decode_vector(self.encode_vector(np.asarray(v).reshape(-1), rng), v.size)


class IdentityChannel(Channel):
    """No compression; the arrays travel as they are."""

    name = "identity"
    lossless = True

    def encode(
        self, arrays: Arrays, rng: np.random.Generator, exact: Collection[str] = ()
    ) -> ArrayRecord:
        return ArrayRecord(
            OrderedDict((k, Array(np.ascontiguousarray(v))) for k, v in arrays.items())
        )

    def decode(self, payload: ArrayRecord, like: Arrays | None) -> dict[str, np.ndarray]:
        like = like or {}
        return {
            k: a.numpy().reshape(np.shape(like[k])) if k in like else a.numpy()
            for k, a in payload.items()
        }

    def encode_vector(self, v: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
        return {"dense": v}

    def decode_vector(self, parts: Mapping[str, np.ndarray], d: int) -> np.ndarray:
        return np.asarray(parts["dense"]).reshape(d)


class RandKChannel(Channel):
    """RandK, scaled ``d/k`` (unbiased); sends ``k`` float32 values and a uint64 seed."""

    name = "randk"

    def __init__(self, ratio: float) -> None:
        self.ratio = ratio

    def encode_vector(self, v: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
        k = num_kept(v.size, self.ratio)
        seed = int(rng.integers(2**63))
        idx = randk_indices(seed, v.size, k)
        return {"values": v[idx].astype(np.float32), "seed": np.array([seed], dtype=np.uint64)}

    def decode_vector(self, parts: Mapping[str, np.ndarray], d: int) -> np.ndarray:
        values = np.asarray(parts["values"], dtype=np.float64)
        k = values.size
        idx = randk_indices(int(parts["seed"][0]), d, k)
        out = np.zeros(d, dtype=np.float64)
        out[idx] = values * (d / k)
        return out


class TopKChannel(Channel):
    """TopK (contractive); sends ``k`` float32 values and ``k`` int32 indices."""

    name = "topk"

    def __init__(self, ratio: float) -> None:
        self.ratio = ratio

    def encode_vector(self, v: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
        idx = topk_indices(v, num_kept(v.size, self.ratio))
        return {"values": v[idx].astype(np.float32), "indices": idx.astype(np.int32)}

    def decode_vector(self, parts: Mapping[str, np.ndarray], d: int) -> np.ndarray:
        out = np.zeros(d, dtype=np.float64)
        out[np.asarray(parts["indices"], dtype=np.int64)] = parts["values"]
        return out


class QSGDChannel(Channel):
    """QSGD stochastic quantisation; one float32 norm per bucket, one int8 per coordinate."""

    name = "qsgd"

    def __init__(self, levels: int) -> None:
        self.levels = levels

    def encode_vector(self, v: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
        norms, q = qsgd_encode(v, self.levels, rng)
        return {"norms": norms, "levels": q}

    def decode_vector(self, parts: Mapping[str, np.ndarray], d: int) -> np.ndarray:
        return qsgd_decode(np.asarray(parts["norms"]), np.asarray(parts["levels"]), self.levels)


class SparseChannel(Channel):
    """Lossless: non-zeros as float32 values + int32 indices, or dense when smaller."""

    name = "sparse"
    lossless = True

    def encode_vector(self, v: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
        idx = np.flatnonzero(v)
        if idx.size * 8 >= v.size * 4:
            return {"dense": v.astype(np.float32)}
        return {"values": v[idx].astype(np.float32), "indices": idx.astype(np.int32)}

    def decode_vector(self, parts: Mapping[str, np.ndarray], d: int) -> np.ndarray:
        if "dense" in parts:
            return np.asarray(parts["dense"], dtype=np.float64).reshape(d)
        out = np.zeros(d, dtype=np.float64)
        out[np.asarray(parts["indices"], dtype=np.int64)] = parts["values"]
        return out


def make_channel(cfg: ChannelSideConfig) -> Channel:
    """The channel named by ``cfg.name`` (validated at config load)."""
    if cfg.name == "identity":
        return IdentityChannel()
    if cfg.name == "randk":
        return RandKChannel(cfg.ratio)
    if cfg.name == "topk":
        return TopKChannel(cfg.ratio)
    if cfg.name == "qsgd":
        return QSGDChannel(cfg.levels)
    if cfg.name == "sparse":
        return SparseChannel()
    raise ValueError(f"unknown channel '{cfg.name}' (allowed: {', '.join(CHANNEL_NAMES)})")


def validate_channel(cfg: ChannelSideConfig, where: str) -> str | None:
    """An error message for a bad channel setting, or None."""
    if cfg.name not in CHANNEL_NAMES:
        return f"{where}.name: unknown '{cfg.name}' (allowed: {', '.join(sorted(CHANNEL_NAMES))})"
    if not 0 < cfg.ratio <= 1:
        return f"{where}.ratio: must be in (0, 1], got {cfg.ratio}"
    if not 1 <= cfg.levels <= 127:
        return f"{where}.levels: must be in [1, 127] (int8 levels), got {cfg.levels}"
    return None


# --------------------------------------------------------------------------- tracking

BYTES_AXIS_DIR = "by_bytes"  # TensorBoard run (sub-directory) whose step is cumulative kB
BYTES_AXIS_METRICS = (
    "masha/rel_dist",
    "eval/clean_acc",
    "eval/adv_acc",
    "eval/adv_acc_refit",
    "eval/acc",
    "eval/global_acc",
    "train/loss",
)


class BytesAxisCallback(Callback):
    """TensorBoard scalars against communication instead of rounds.

    Writes the metrics of :data:`BYTES_AXIS_METRICS` present in a round to the event file
    of ``<run_dir>/by_bytes`` with step = cumulative uplink + downlink kilobytes (1 kB =
    1000 bytes), so TensorBoard's runs ``.../by_bytes`` compare methods per byte sent.
    """

    def __init__(self, run_dir: Any) -> None:
        self.run_dir = run_dir
        self.writer: Any = None

    def on_start(self, info: dict[str, Any]) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(self.run_dir / BYTES_AXIS_DIR))

    def on_round(self, server_round: int, metrics: dict[str, float]) -> None:
        if self.writer is None:
            return
        total = metrics.get("comm/bytes_up_total", 0.0) + metrics.get("comm/bytes_down_total", 0.0)
        step = int(total // 1000)
        for key in BYTES_AXIS_METRICS:
            value = metrics.get(key)
            if value is not None and math.isfinite(value):
                self.writer.add_scalar(key, value, step)

    def on_end(self, summary: dict[str, float], status: str) -> None:
        if self.writer is not None:
            self.writer.flush()
            self.writer.close()
