"""The inline runtime: Flower's ``Grid`` contract served in this process, without Ray.

``InlineGrid`` implements ``flwr.serverapp.Grid``: the ServerApp pushes messages, the grid
calls the ClientApp directly with that node's persistent ``Context``, and the replies are
pulled back.  Nothing is polled, no process is started per message, the dataset and the
model objects are built once per process (``clients.base.ClientEnv``), and a client's
``Context`` (its ``state``) lives as long as the run — the same semantics as Flower's
engines at a fraction of the orchestration cost.

Contexts are created lazily, so 100,000 registered clients cost nothing until sampled.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Iterable
from typing import Any

from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.serverapp import Grid, ServerApp
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

log = logging.getLogger(__name__)

NODE_BASE = 1000  # node id = NODE_BASE + partition id (Flower reserves 1 for the SuperLink)
CLIENT_ERROR = 1  # Error.code for an exception raised by the ClientApp


class InlineGrid(Grid):
    """A Grid whose nodes are virtual clients executed in this process."""

    def __init__(
        self, client_app: ClientApp, num_clients: int, run_config: dict[str, Any], run_id: int = 1
    ) -> None:
        self.client_app = client_app
        self.num_clients = num_clients
        self.run_config = run_config
        self._run = Run.create_empty(run_id)
        self._contexts: dict[int, Context] = {}
        self._replies: dict[str, Message] = {}
        self._ids = itertools.count(1)
        self.client_seconds = 0.0  # time spent inside the ClientApp (for overhead accounting)
        # What Flower's SuperLink does before it starts a ServerApp process: messages the
        # ServerApp creates take their run and source node from this identity.
        TaskIdentity.task_id = 1
        TaskIdentity.run_id = run_id
        TaskIdentity.node_id = SUPERLINK_NODE_ID

    # ------------------------------------------------------------- Grid contract
    def set_run(self, run: Run) -> None:
        self._run = run

    @property
    def run(self) -> Run:
        return self._run

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return range(NODE_BASE, NODE_BASE + self.num_clients)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids: list[str] = []
        for msg in messages:
            msg_id = str(next(self._ids))
            msg.metadata.__dict__["_message_id"] = msg_id
            self._replies[msg_id] = self._execute(msg)
            ids.append(msg_id)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [self._replies.pop(i) for i in message_ids if i in self._replies]

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        return list(self.pull_messages(list(self.push_messages(messages))))

    # ------------------------------------------------------------- fedsim extras
    def node_map(self) -> dict[int, int]:
        """Partition id -> node id, known without a start-up query."""
        return {pid: NODE_BASE + pid for pid in range(self.num_clients)}

    def context(self, node_id: int) -> Context:
        ctx = self._contexts.get(node_id)
        if ctx is None:
            pid = node_id - NODE_BASE
            if not 0 <= pid < self.num_clients:
                raise KeyError(f"unknown node {node_id}")
            ctx = Context(
                run_id=self._run.run_id,
                node_id=node_id,
                node_config={"partition-id": pid, "num-partitions": self.num_clients},
                state=RecordDict(),
                run_config=self.run_config,
            )
            self._contexts[node_id] = ctx
        return ctx

    def _execute(self, msg: Message) -> Message:
        t0 = time.perf_counter()
        try:
            reply = self.client_app(msg, self.context(msg.metadata.dst_node_id))
        except Exception as e:  # a failing client must not kill the run
            log.warning(
                "client on node %d raised %s: %s", msg.metadata.dst_node_id, type(e).__name__, e
            )
            reply = Message(
                Error(code=CLIENT_ERROR, reason=f"{type(e).__name__}: {e}"), reply_to=msg
            )
        finally:
            self.client_seconds += time.perf_counter() - t0
        reply.metadata.__dict__["_message_id"] = f"r{msg.metadata.message_id}"
        return reply


def run_inline(
    server_app: ServerApp, client_app: ClientApp, num_clients: int, run_config: dict[str, Any]
) -> InlineGrid:
    """Run a ServerApp against ``num_clients`` inline ClientApps; returns the grid."""
    grid = InlineGrid(client_app, num_clients, run_config)
    server_ctx = Context(
        run_id=grid.run.run_id, node_id=0, node_config={}, state=RecordDict(), run_config=run_config
    )
    server_app(grid, server_ctx)
    return grid
