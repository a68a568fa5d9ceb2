"""Links: one direction of the connection, used by both ends (see :mod:`fedsim.channels`)."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass

import numpy as np
from flwr.app import ArrayRecord

from fedsim.algorithms.channels.codecs import Arrays, References, payload_nbytes
from fedsim.algorithms.channels.compressors import Channel, channel_classes, make_channel
from fedsim.algorithms.payloads import ARRAYS
from fedsim.algorithms.registry import get
from fedsim.config import RunConfig
from fedsim.records import arrays_from_numpy, numpy_from_arrays
from fedsim.seeding import derive_rng

# --------------------------------------------------------------------------- links


def _stream(record: str) -> str:
    """The seed stream of a record's codec (the model record keeps the historic name)."""
    return "" if record == ARRAYS else f"/{record}"


def _floating(a: np.ndarray) -> bool:
    return bool(np.issubdtype(a.dtype, np.floating))


@dataclass(frozen=True)
class Link:
    """One direction of the connection: a compressor, its seed streams, its two stages.

    ``direction`` is ``up`` (client to server) or ``down``.  Records named in ``exact``
    (an algorithm's ``AlgorithmSpec.exact_records``: small statistics such as counts)
    never pass through the compressor.  Every encoding draws from
    ``derive_rng(seed, "channel/<direction>[/<record>]", round, *ids)`` (:meth:`rng`), so
    the sender's draws depend on the run's seed, the round and the client only.

    A *reference* (:data:`References`) turns a link into a link of updates: a record the
    receiver holds a reference for is sent as ``arrays - reference`` and the receiver adds
    its reference back; a record without one travels as it is.  fedsim's uplink is such a
    link, against what the client decoded from the downlink.
    """

    direction: str
    channel: Channel
    seed: int = 0
    exact: frozenset[str] = frozenset()

    @property
    def name(self) -> str:
        return self.channel.name

    @property
    def lossless(self) -> bool:
        return self.channel.lossless

    @property
    def verbatim(self) -> bool:
        """True when messages cross this link untouched (the identity compressor)."""
        return self.channel.verbatim

    def compression(self) -> float:
        return self.channel.compression()

    def variance(self) -> float | None:
        return self.channel.variance()

    def rng(self, server_round: int, *ids: int, record: str = ARRAYS) -> np.random.Generator:
        """The generator of one encoding of ``record`` in ``server_round`` (``ids``: the
        client's partition id, none for a broadcast encoded once for everyone)."""
        purpose = f"channel/{self.direction}{_stream(record)}"
        return derive_rng(self.seed, purpose, server_round, *ids)

    def encode(
        self,
        arrays: Arrays,
        server_round: int,
        *ids: int,
        record: str = ARRAYS,
        exact_keys: Collection[str] = (),
    ) -> ArrayRecord:
        """The payload of ``arrays`` (arrays named in ``exact_keys`` travel as they are)."""
        rng = self.rng(server_round, *ids, record=record)
        return self.channel.encode(arrays, rng, exact_keys)

    def decode(self, payload: ArrayRecord, like: Arrays | None = None) -> dict[str, np.ndarray]:
        """The arrays of a payload of :meth:`encode` (shaped and typed like ``like``)."""
        return self.channel.decode(payload, like)

    @staticmethod
    def nbytes(payload: ArrayRecord) -> int:
        """Data bytes of a payload as it travels (:func:`payload_nbytes`)."""
        return payload_nbytes(payload)

    def send(
        self,
        records: Mapping[str, ArrayRecord],
        server_round: int,
        pid: int,
        reference: References | None = None,
        exact_keys: Collection[str] = (),
    ) -> dict[str, ArrayRecord]:
        """Sender stage: the array records of one message as they travel to or from
        client ``pid``.  Without ``reference`` every record but the exact ones is encoded;
        with it, the records it holds are encoded as updates against it.  ``exact_keys``
        (a model's buffers: a sparsified running variance could turn negative) travel
        unencoded inside the model record."""
        if self.verbatim:
            return dict(records)
        out: dict[str, ArrayRecord] = {}
        for name, record in records.items():
            ref = None if reference is None else reference.get(name)
            if name in self.exact or (reference is not None and ref is None):
                out[name] = record  # nothing to take an update against: as it is
                continue
            arrays = numpy_from_arrays(record)
            if ref is not None:
                arrays = {
                    k: v - ref[k] if k in ref and _floating(v) else v for k, v in arrays.items()
                }
            keys = exact_keys if name == ARRAYS else ()
            out[name] = self.encode(arrays, server_round, pid, record=name, exact_keys=keys)
        return out

    def receive(
        self, records: Mapping[str, ArrayRecord], reference: References | None = None
    ) -> dict[str, ArrayRecord]:
        """Receiver stage: the array records of :meth:`send` as the receiver uses them
        (with the same ``reference`` as the sender: the updates added back to it)."""
        if self.verbatim:
            return dict(records)
        out: dict[str, ArrayRecord] = {}
        for name, record in records.items():
            ref = None if reference is None else reference.get(name)
            if name in self.exact or (reference is not None and ref is None):
                out[name] = record
                continue
            if ref is None:
                out[name] = arrays_from_numpy(self.decode(record))
                continue
            delta = self.decode(record, ref)
            out[name] = arrays_from_numpy(
                {
                    k: (ref[k] + d).astype(ref[k].dtype) if k in ref and _floating(d) else d
                    for k, d in delta.items()
                }
            )
        return out


@dataclass(frozen=True)
class Links:
    """A run's two links; ``native``: the algorithm is a compression method and applies
    them itself (``AlgorithmSpec.native_channels``, MASHA), so the wrappers pass its
    messages through (their bytes are still counted)."""

    up: Link
    down: Link
    native: bool = False

    @property
    def coded(self) -> bool:
        """Whether the wrappers encode this run's training messages at all."""
        return not self.native and not (self.up.verbatim and self.down.verbatim)

    def delivered(
        self, records: Mapping[str, ArrayRecord]
    ) -> tuple[dict[str, ArrayRecord], dict[str, dict[str, np.ndarray]]]:
        """What a client holds after the downlink carried ``records``: the records as it
        decodes them and, unless the uplink is verbatim, their arrays, the references of
        its reply.  The server calls this on what it sent, the client on what it got, so
        both ends hold the same references."""
        got = self.down.receive(records)
        if self.up.verbatim:
            return got, {}
        return got, {name: numpy_from_arrays(record) for name, record in got.items()}


def build_links(cfg: RunConfig) -> Links:
    """The links of a run (``channel.up`` / ``channel.down``, the algorithm's exact
    records).  Built once per run by each side that uses them: the server wrapper (and an
    algorithm that applies them itself) at set-up, the clients of a process in their
    environment (``fedsim.algorithms.client.ClientEnv.links``); links hold no state, so
    equal configurations give equal links."""
    spec = get(cfg.strategy.name)
    exact = frozenset(spec.exact_records)
    return Links(
        Link("up", make_channel(cfg.channel.up), cfg.seed, exact),
        Link("down", make_channel(cfg.channel.down), cfg.seed, exact),
        spec.native_channels,
    )


def clear_registry() -> None:
    """Forget the registered compressors (for a process that installs a plug-in after its
    first lookup)."""
    channel_classes.cache_clear()
