"""ClientApp mods that wrap every client: channels, local keys, faults and attacks.

Flower mods (``mod(msg, context, call_next) -> Message``) run around the ClientApp's
handler, so they apply to every algorithm's client and to every runtime (inline, Ray,
deployment); a client never sees an encoded message and cannot send one unencoded.

* :func:`channel_mod` (outermost): the client's end of the run's links
  (:func:`fedsim.algorithms.channels.build_links`, built once in the clients' environment,
  equal to the server's end in :mod:`fedsim.algorithms.wrap.server`).  It decodes the
  training message from ``channel.down`` and, on the way back, encodes through
  ``channel.up`` every array record the client also received, as its update ``sent -
  received`` (the server adds the reference back); a record with no reference (FRAug's
  generator in round 1, FedoSSL's local centroids, SCAFFOLD's control update) travels as it
  is.  Buffers (BatchNorm statistics) travel as uncompressed updates: a sparsified running
  variance could turn negative.  It also drops from the reply's model arrays every key the
  client did not receive, so the keys that stay local (FedBN's BN layers, ...) cannot leave
  the client.
* :func:`fault_mod`: the scenario's injected faults (crash, NaN, delay) and Byzantine
  attacks (:mod:`fedsim.data.faults`), acting on the decoded messages exactly where a real
  bug or a real attacker would.

Records that an algorithm declares exact (``AlgorithmSpec.exact_records``, small
statistics such as counts) and the messages of algorithms that are themselves compression
methods (``native_channels``) are passed through uncoded.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from flwr.app import Context, Message, MessageType

from fedsim.algorithms.payloads import ARRAYS, CONFIG, ROUND
from fedsim.config import RunConfig
from fedsim.data import faults
from fedsim.records import (
    array_records,
    arrays_from_numpy,
    config_records,
    numpy_from_arrays,
    record_dict,
)
from fedsim.seeding import derive_rng

if TYPE_CHECKING:
    from fedsim.algorithms.client import ClientEnv

Mod = Callable[[Message, Context, Callable[[Message, Context], Message]], Message]
ConfigOf = Callable[[Context], RunConfig]
EnvOf = Callable[[Context], "ClientEnv"]
PARTITION_KEY = "partition-id"


def _round(msg: Message) -> int:
    return int(config_records(msg.content)[CONFIG][ROUND])  # type: ignore[arg-type]


def channel_mod(env_of: EnvOf) -> Mod:
    """The channel mod: ``env_of(context)`` is the environment of the run's clients in this
    process, which holds the run's links and names the model's buffers (statistics, not
    weights), whose updates travel uncompressed."""

    def mod(msg: Message, context: Context, call_next: Callable[..., Message]) -> Message:
        if msg.metadata.message_type != MessageType.TRAIN:
            return call_next(msg, context)
        env = env_of(context)
        links = env.links
        if links.native:
            return call_next(msg, context)
        got, references = links.delivered(array_records(msg.content))
        content = record_dict(msg.content)
        for name, record in got.items():
            content[name] = record
        msg.content = content
        keys = set(got[ARRAYS].keys()) if ARRAYS in got else set()  # the model keys received
        reply = call_next(msg, context)
        if reply.has_error():
            return reply
        _keep_local(reply, keys)
        if not links.up.verbatim:
            pid = int(context.node_config[PARTITION_KEY])
            sent = links.up.send(
                array_records(reply.content),
                _round(msg),
                pid,
                reference=references,
                exact_keys=env.buffer_keys,
            )
            for name, record in sent.items():
                reply.content[name] = record
        return reply

    return mod


def _keep_local(reply: Message, received: set[str]) -> None:
    """Drop from the reply's model arrays every key the client did not receive."""
    if ARRAYS not in array_records(reply.content) or not received:
        return
    record = array_records(reply.content)[ARRAYS]
    extra = [k for k in record if k not in received]
    if extra:
        reply.content[ARRAYS] = arrays_from_numpy(
            {k: v for k, v in numpy_from_arrays(record).items() if k in received}
        )


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
        received = array_records(msg.content).get(ARRAYS)
        reply = call_next(msg, context)
        if reply.has_error() or ARRAYS not in array_records(reply.content):
            return reply
        if fault == faults.NAN:
            reply.content[ARRAYS] = faults.poison(array_records(reply.content)[ARRAYS])
        elif received is not None and faults.attacks(
            injected, cfg.scenario.num_clients, cfg.seed, pid
        ):
            rng = derive_rng(cfg.seed, "attack", rnd, pid)
            reply.content[ARRAYS] = faults.attack(
                injected, received, array_records(reply.content)[ARRAYS], rng
            )
        return reply

    return mod


def client_mods(config_of: ConfigOf, env_of: EnvOf) -> list[Any]:
    """The mods every fedsim ClientApp runs, outermost first."""
    return [channel_mod(env_of), fault_mod(config_of)]
