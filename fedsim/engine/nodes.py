"""Which node hosts which partition: discovery at start-up and after a SuperNode restarts.

Kept apart from the round loop (:mod:`fedsim.engine.server`) because it is the one part of
the server that waits on the network's schedule rather than the run's: in a deployment
SuperNodes connect and reconnect on their own, and both the set-up
(:func:`fedsim.engine.experiment.setup`) and every round need the current map.
"""

from __future__ import annotations

import logging
import time

from flwr.app import Message, MessageType, RecordDict
from flwr.serverapp import Grid

from fedsim.algorithms.payloads import Identity
from fedsim.errors import RunFailed

log = logging.getLogger(__name__)

NODE_WAIT_POLL_S = 0.5  # how often discovery re-reads the connected nodes while waiting


def discover_nodes(
    grid: Grid,
    num_clients: int,
    timeout: float,
    min_clients: int = 1,
    known: dict[int, int] | None = None,
) -> dict[int, int]:
    """Map partition ids to node ids: ask every node which partition it hosts.

    In a deployment SuperNodes connect on their own schedule, so discovery first waits
    (at most ``timeout`` seconds) until ``num_clients`` nodes are connected, then asks
    those present; fewer than ``min_clients`` answers is an error.  With ``known`` (the
    current map) nobody waits and only nodes not in it are asked: a SuperNode that
    restarted has a new node id, and its answer replaces its partition's old node id.
    """
    shortcut = getattr(grid, "node_map", None)
    if callable(shortcut):  # the inline grid knows it without a round trip
        return dict(shortcut())
    nodes = list(grid.get_node_ids())
    deadline = time.monotonic() + timeout
    while known is None and len(nodes) < num_clients and time.monotonic() < deadline:
        time.sleep(NODE_WAIT_POLL_S)
        nodes = list(grid.get_node_ids())
    out: dict[int, int] = dict(known or {})
    new = [n for n in nodes if n not in set(out.values())]
    msgs = [Message(RecordDict(), dst_node_id=n, message_type=MessageType.QUERY) for n in new]
    replies = grid.send_and_receive(msgs, timeout=timeout) if msgs else []
    for r in replies:
        if not r.has_error():
            out[Identity.from_record(r.content).partition_id] = r.metadata.src_node_id
    if known is not None:
        if replies:
            log.info("rediscovered nodes: partition -> node %s", out)
        return out
    missing = num_clients - len(out)
    if missing:
        log.warning("%d of %d clients did not answer the start-up query", missing, num_clients)
    if len(out) < min_clients:
        raise RunFailed(
            f"only {len(out)} of {num_clients} clients answered within {timeout:g} s "
            f"(scenario.participation.min_clients={min_clients}); on a busy machine or a "
            "slow cluster raise runtime.wait_nodes"
        )
    return out


def rediscover_nodes(grid: Grid, node_of: dict[int, int], timeout: float) -> None:
    """Update ``node_of`` in place when nodes unknown to it have connected (restarts).

    Partitions whose node left keep their old node id: messages to it fail or time out
    and are counted in ``sys/failed_clients`` until the partition's SuperNode is back.
    """
    if callable(getattr(grid, "node_map", None)):
        return
    if set(grid.get_node_ids()) - set(node_of.values()):
        node_of.update(discover_nodes(grid, len(node_of), timeout, known=node_of))
