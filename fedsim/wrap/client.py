"""ClientApp mods that wrap every client: channels, local keys, faults and attacks.

Flower mods (``mod(msg, context, call_next) -> Message``) run around the ClientApp's
handler, so they apply to every algorithm's client and to every runtime (inline, Ray,
deployment); a client never sees an encoded message and cannot send one unencoded.

* :func:`channel_mod` (outermost): decodes the training message from ``channel.down``
  and, on the way back, encodes through ``channel.up`` every array record the client
  also received, as its update ``sent - received`` (the server wrapper,
  :mod:`fedsim.wrap.server`, adds the reference back); a record with no reference
  (FRAug's generator in round 1, FedoSSL's local centroids, SCAFFOLD's control update)
  travels as it is.  Buffers (BatchNorm statistics) travel as uncompressed updates: a
  sparsified running variance could turn negative.  It also
  drops from the reply's model arrays every key the client did not receive, so the keys
  that stay local (FedBN's BN layers, ...) cannot leave the client.
* :func:`fault_mod`: the scenario's injected faults (crash, NaN, delay) and Byzantine
  attacks (:mod:`fedsim.faults`), acting on the decoded messages exactly where a real
  bug or a real attacker would.

Records that an algorithm declares exact (``AlgorithmSpec.exact_records``, small
statistics such as counts) and algorithms that are themselves compression methods
(``native_channels``) are passed through uncoded.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from flwr.app import Context, Message, MessageType, RecordDict

from fedsim import faults
from fedsim.channels import Channel, make_channel
from fedsim.config import RunConfig
from fedsim.payloads import ARRAYS, CONFIG, ROUND
from fedsim.records import arrays_from_numpy, numpy_from_arrays
from fedsim.registry import get
from fedsim.seeding import derive_rng

Mod = Callable[[Message, Context, Callable[[Message, Context], Message]], Message]
ConfigOf = Callable[[Context], RunConfig]
BuffersOf = Callable[[Context], frozenset[str]]
PARTITION_KEY = "partition-id"


def _stream(record_name: str) -> str:
    """The seed stream of a record's codec (``arrays`` keeps the historic name)."""
    return "" if record_name == ARRAYS else f"/{record_name}"


@dataclass(frozen=True)
class _Link:
    up: Channel
    down: Channel
    exact: frozenset[str]
    native: bool


_LINKS: dict[int, _Link] = {}


def _link(cfg: RunConfig) -> _Link:
    key = id(cfg)  # configs are parsed once per process and cached (fedsim.app)
    link = _LINKS.get(key)
    if link is None:
        spec = get(cfg.strategy.name)
        link = _LINKS[key] = _Link(
            make_channel(cfg.channel.up),
            make_channel(cfg.channel.down),
            frozenset(spec.exact_records),
            spec.native_channels,
        )
    return link


def _round(msg: Message) -> int:
    return int(msg.content.config_records[CONFIG][ROUND])  # type: ignore[arg-type]


def channel_mod(config_of: ConfigOf, buffers_of: BuffersOf) -> Mod:
    """The channel mod for runs whose configuration ``config_of(context)`` returns;
    ``buffers_of(context)`` names the model's buffers (statistics, not weights), whose
    updates travel uncompressed."""

    def mod(msg: Message, context: Context, call_next: Callable[..., Message]) -> Message:
        if msg.metadata.message_type != MessageType.TRAIN:
            return call_next(msg, context)
        cfg = config_of(context)
        link = _link(cfg)
        if link.native:
            return call_next(msg, context)
        pid = int(context.node_config[PARTITION_KEY])
        received: dict[str, dict[str, np.ndarray]] = {}
        content = RecordDict(dict(msg.content.items()))
        keys: set[str] = set()  # the model keys the client received
        for name, record in msg.content.array_records.items():
            if link.down.name == "identity" or name in link.exact:
                if link.up.name != "identity":  # the reference of the update
                    received[name] = numpy_from_arrays(record)
                if name == ARRAYS:
                    keys = set(record.keys())
                continue
            received[name] = link.down.decode(record, None)
            content[name] = arrays_from_numpy(received[name])
            if name == ARRAYS:
                keys = set(received[name])
        msg.content = content
        reply = call_next(msg, context)
        if reply.has_error():
            return reply
        _keep_local(reply, keys)
        if link.up.name != "identity":
            exact = buffers_of(context)
            _encode_up(reply, received, link, cfg.seed, _round(msg), pid, exact)
        return reply

    return mod


def _keep_local(reply: Message, received: set[str]) -> None:
    """Drop from the reply's model arrays every key the client did not receive."""
    if ARRAYS not in reply.content.array_records or not received:
        return
    record = reply.content.array_records[ARRAYS]
    extra = [k for k in record if k not in received]
    if extra:
        reply.content[ARRAYS] = arrays_from_numpy(
            {k: v for k, v in numpy_from_arrays(record).items() if k in received}
        )


def _encode_up(
    reply: Message,
    received: dict[str, dict[str, np.ndarray]],
    link: _Link,
    seed: int,
    server_round: int,
    pid: int,
    buffers: frozenset[str],
) -> None:
    for name, record in list(reply.content.array_records.items()):
        if name in link.exact:
            continue
        ref = received.get(name)
        if ref is None:
            continue  # nothing to take an update against: travels as it is
        arrays = {
            k: v - ref[k] if k in ref and np.issubdtype(v.dtype, np.floating) else v
            for k, v in numpy_from_arrays(record).items()
        }
        rng = derive_rng(seed, f"channel/up{_stream(name)}", server_round, pid)
        reply.content[name] = link.up.encode(arrays, rng, buffers if name == ARRAYS else ())


def fault_mod(config_of: ConfigOf) -> Mod:
    """Injected faults and Byzantine attacks of the scenario's ``faults:`` section."""

    def mod(msg: Message, context: Context, call_next: Callable[..., Message]) -> Message:
        if msg.metadata.message_type != MessageType.TRAIN:
            return call_next(msg, context)
        cfg = config_of(context)
        injected = cfg.scenario.faults
        pid = int(context.node_config[PARTITION_KEY])
        rnd = _round(msg)
        fault = faults.fault_for(injected, cfg.seed, rnd, pid)
        faults.before_fit(fault, injected, rnd, pid)
        received = msg.content.array_records.get(ARRAYS)
        reply = call_next(msg, context)
        if reply.has_error() or ARRAYS not in reply.content.array_records:
            return reply
        if fault == faults.NAN:
            reply.content[ARRAYS] = faults.poison(reply.content.array_records[ARRAYS])
        elif received is not None and faults.attacks(
            injected, cfg.scenario.num_clients, cfg.seed, pid
        ):
            rng = derive_rng(cfg.seed, "attack", rnd, pid)
            reply.content[ARRAYS] = faults.attack(
                injected, received, reply.content.array_records[ARRAYS], rng
            )
        return reply

    return mod


def client_mods(config_of: ConfigOf, buffers_of: BuffersOf) -> list[Any]:
    """The mods every fedsim ClientApp runs, outermost first."""
    return [channel_mod(config_of, buffers_of), fault_mod(config_of)]
