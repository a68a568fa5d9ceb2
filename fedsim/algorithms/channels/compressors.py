"""The compressors: :class:`Channel` and fedsim's codecs, found in a registry filled by
entry points (group ``fedsim.channels``); see :mod:`fedsim.algorithms.channels`.
"""

from __future__ import annotations

import inspect
import math
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Collection, Mapping
from functools import lru_cache
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord

from fedsim.algorithms.channels.codecs import (
    QSGD_BUCKET,
    SEP,
    SHAPE,
    Arrays,
    _described,
    _scatter_rows,
    num_kept,
    qsgd_decode,
    qsgd_encode,
    randk_indices,
    topk_indices,
)
from fedsim.algorithms.registry import CHANNEL_GROUP, plugins
from fedsim.config import ChannelSideConfig
from fedsim.errors import ConfigError

# --------------------------------------------------------------------------- channels


class Channel(ABC):
    """A compressor: ``encode`` on the sender, ``decode`` on the receiver.

    A new compressor subclasses this, implements :meth:`encode_vector` and
    :meth:`decode_vector` (one flat floating vector each: integer arrays and exact keys
    never reach them) and is published under the entry-point group ``fedsim.channels``;
    ``channel.up=<name>`` then builds it with :meth:`from_config`.  The class attributes
    and the bounds below describe it to algorithms that are compression methods
    themselves (MASHA's default step sizes and sync probability), so that no algorithm
    asks for a compressor by name.
    """

    name = "channel"
    #: ``decode(encode(v)) == v`` for every float32 ``v``
    lossless = False
    #: the payload is the arrays themselves, so a link over it leaves messages untouched
    verbatim = False
    #: sends the values of a subset of the coordinates (:meth:`kept` of them)
    sparsifier = False

    @classmethod
    def from_config(cls, side: ChannelSideConfig) -> Channel:
        """The channel that a ``channel.up`` / ``channel.down`` section describes."""
        return cls()

    @classmethod
    def check(cls, side: ChannelSideConfig, where: str) -> str | None:
        """An error message for a bad value of the section (``where`` is its key path),
        or None.  The shared keys must be valid whichever channel is named (a sweep may
        switch the name and keep them); a subclass adds its own checks."""
        if not 0 < side.ratio <= 1:
            return f"{where}.ratio: must be in (0, 1], got {side.ratio}"
        if not 1 <= side.levels <= 127:
            return f"{where}.levels: must be in [1, 127] (int8 levels), got {side.levels}"
        return None

    def compression(self) -> float:
        """``beta``: how many times fewer coordinates (bytes, for a quantiser) than the
        dense float32 vector are sent; 1 when nothing is saved."""
        return 1.0

    def variance(self) -> float | None:
        """``q`` with ``E||Q(v)||^2 <= q ||v||^2`` (for a contractive compressor the
        ``delta`` of ``||C(v) - v||^2 <= (1 - 1/delta) ||v||^2``); None when no bound is
        known, e.g. for a plug-in that does not say."""
        return 1.0 if self.lossless else None

    def kept(self, d: int) -> int:
        """How many coordinates of a ``d``-vector have their value sent."""
        return d

    def vector_nbytes(self, d: int) -> float:
        """Payload bytes of one ``d``-vector (:func:`payload_nbytes`'s convention); an
        upper bound for a codec whose size depends on the data."""
        return 4.0 * d

    def roundtrip_rows(
        self, rows: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, float]:
        """Every row of ``rows`` sent as float32 and decoded (float64), and the payload
        bytes per row: many vectors at once for MASHA's vectorised sweeps.  Row by row
        here; a sparsifier overrides it with one batched draw (statistically, not
        bitwise, equal to :meth:`encode_vector` row by row)."""
        out = np.empty(rows.shape, dtype=np.float64)
        nbytes = 0
        for i, row in enumerate(rows):
            parts = self.encode_vector(row.astype(np.float32), rng)
            out[i] = self.decode_vector(parts, row.size).astype(np.float32)
            nbytes += sum(int(np.asarray(p).nbytes) for p in parts.values())
        return out, nbytes / max(1, len(rows))

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
    verbatim = True

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


class _Sparsifier(Channel):
    """A compressor that keeps ``k = ceil(ratio * d)`` coordinates of each array."""

    sparsifier = True

    def __init__(self, ratio: float) -> None:
        self.ratio = ratio

    @classmethod
    def from_config(cls, side: ChannelSideConfig) -> Channel:
        return cls(side.ratio)

    def compression(self) -> float:
        return 1.0 / self.ratio

    def variance(self) -> float:
        return 1.0 / self.ratio  # d / k, up to the rounding of k (TopK: its delta)

    def kept(self, d: int) -> int:
        return num_kept(d, self.ratio)


class RandKChannel(_Sparsifier):
    """RandK, scaled ``d/k`` (unbiased); sends ``k`` float32 values and a uint64 seed."""

    name = "randk"

    def vector_nbytes(self, d: int) -> float:
        return 4.0 * self.kept(d) + 8.0

    def roundtrip_rows(
        self, rows: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, float]:
        d = rows.shape[1]
        k = self.kept(d)
        idx = np.argpartition(rng.random(rows.shape), k - 1, axis=1)[:, :k]
        return _scatter_rows(rows, idx, d / k), self.vector_nbytes(d)

    def encode_vector(self, v: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
        k = self.kept(v.size)
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


class TopKChannel(_Sparsifier):
    """TopK (contractive); sends ``k`` float32 values and ``k`` int32 indices."""

    name = "topk"

    def vector_nbytes(self, d: int) -> float:
        return 8.0 * self.kept(d)

    def roundtrip_rows(
        self, rows: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, float]:
        d = rows.shape[1]
        k = self.kept(d)
        as_sent = rows.astype(np.float32).astype(np.float64)
        idx = np.argpartition(-np.abs(as_sent), k - 1, axis=1)[:, :k]
        return _scatter_rows(rows, idx, 1.0), self.vector_nbytes(d)

    def encode_vector(self, v: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
        idx = topk_indices(v, self.kept(v.size))
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

    @classmethod
    def from_config(cls, side: ChannelSideConfig) -> Channel:
        return cls(side.levels)

    def compression(self) -> float:
        return 4.0  # an int8 level instead of a float32 value

    def variance(self) -> float:
        # Alistarh et al., Lemma 3.1, per bucket of QSGD_BUCKET coordinates
        s = self.levels
        return 1.0 + min(QSGD_BUCKET / s**2, math.sqrt(QSGD_BUCKET) / s)

    def vector_nbytes(self, d: int) -> float:
        return float(d + 4 * max(1, math.ceil(d / QSGD_BUCKET)))

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


# --------------------------------------------------------------------------- registry


def _is_channel(obj: Any) -> bool:
    return isinstance(obj, type) and issubclass(obj, Channel) and not inspect.isabstract(obj)


@lru_cache(maxsize=1)
def channel_classes() -> dict[str, type[Channel]]:
    """Every registered compressor by name (entry points of ``fedsim.channels``), sorted."""
    return plugins(CHANNEL_GROUP, _is_channel, "a fedsim.algorithms.channels.Channel subclass")


def _unknown(name: str, where: str) -> str:
    return f"{where}.name: unknown '{name}' (allowed: {', '.join(channel_classes())})"


def make_channel(cfg: ChannelSideConfig) -> Channel:
    """The registered compressor named by ``cfg.name``, built from its section."""
    cls = channel_classes().get(cfg.name)
    if cls is None:
        raise ConfigError(_unknown(cfg.name, "channel"))
    return cls.from_config(cfg)


def validate_channel(cfg: ChannelSideConfig, where: str) -> str | None:
    """An error message for a bad channel section (``where``: its key path), or None."""
    cls = channel_classes().get(cfg.name)
    if cls is None:
        return _unknown(cfg.name, where)
    return cls.check(cfg, where)
