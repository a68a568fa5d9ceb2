"""The inline runtime: Flower's ``Grid`` contract served in this process, without Ray.

``InlineGrid`` implements ``flwr.serverapp.Grid``: the ServerApp pushes messages, the grid
calls the ClientApp directly with that node's persistent ``Context``, and the replies are
pulled back.  Nothing is polled, no process is started per message, the dataset and the
model objects are built once per process (``fedsim.algorithms.client.ClientEnv``), and a client's
``Context`` (its ``state``) lives as long as the run — the same semantics as Flower's
engines at a fraction of the orchestration cost.

With ``runtime.workers=N`` the ClientApps run in N worker processes instead (spawned
once per run): client ``i`` always lives in worker ``i % N``, which keeps its Context,
so results do not depend on N (given the same ``runtime.threads``).  Contexts are created
lazily, so 100,000 registered clients cost nothing until sampled.
"""

from __future__ import annotations

import itertools
import logging
import multiprocessing as mp
import signal
import time
from collections.abc import Callable, Iterable
from functools import partial
from typing import Any

from flwr.app import Context, Error, Message, MessageType, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.serverapp import Grid, ServerApp
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

log = logging.getLogger(__name__)

NODE_BASE = 1000  # node id = NODE_BASE + partition id (Flower reserves 1 for the SuperLink)
CLIENT_ERROR = 1  # Error.code for an exception raised by the ClientApp
TIMEOUT_ERROR = 2  # Error.code for a reply that missed the round deadline


def _vectorize_mode(run_config: dict[str, Any]) -> tuple[str, int]:
    """``runtime.vectorize`` and ``runtime.threads`` of the run (off, 0 when not given)."""
    from fedsim.engine.app import CONFIG_KEY, OVERRIDES_KEY, config_from_run_config

    if CONFIG_KEY not in run_config and OVERRIDES_KEY not in run_config:
        return "off", 0
    cfg, _ = config_from_run_config(run_config)
    return str(cfg.runtime.vectorize), int(cfg.runtime.threads)


def _set_threads(threads: int) -> None:
    """``torch.set_num_threads`` in the calling thread (OpenMP's setting is per thread)."""
    if threads > 0:
        import torch

        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)


def _is_train(msg: Message) -> bool:
    return msg.metadata.message_type.split(".")[0] == MessageType.TRAIN


class _Clients:
    """Contexts of the clients one process hosts, and the call into the ClientApp."""

    def __init__(
        self, client_app: ClientApp, num_clients: int, run_config: dict[str, Any], run_id: int
    ) -> None:
        self.client_app = client_app
        self.num_clients = num_clients
        self.run_config = run_config
        self.run_id = run_id
        self.contexts: dict[int, Context] = {}
        self.client_seconds = 0.0
        self.vectorize, self.threads = _vectorize_mode(run_config)
        self._fallbacks_logged: set[str] = set()

    def context(self, node_id: int) -> Context:
        ctx = self.contexts.get(node_id)
        if ctx is None:
            pid = node_id - NODE_BASE
            if not 0 <= pid < self.num_clients:
                raise KeyError(f"unknown node {node_id}")
            ctx = Context(
                run_id=self.run_id,
                node_id=node_id,
                node_config={"partition-id": pid, "num-partitions": self.num_clients},
                state=RecordDict(),
                run_config=self.run_config,
            )
            self.contexts[node_id] = ctx
        return ctx

    def execute(
        self, msg: Message, timeout: float | None, reraise: tuple[type[Exception], ...] = ()
    ) -> Message:
        t0 = time.perf_counter()
        node = msg.metadata.dst_node_id
        try:
            reply = self.client_app(msg, self.context(node))
        except reraise:
            raise
        except Exception as e:  # a failing client must not kill the run
            log.warning("client on node %d raised %s: %s", node, type(e).__name__, e)
            reason = f"{type(e).__name__}: {e}"
            reply = Message(Error(code=CLIENT_ERROR, reason=reason), reply_to=msg)
        elapsed = time.perf_counter() - t0
        self.client_seconds += elapsed
        if timeout is not None and elapsed > timeout and not reply.has_error():
            # in-process clients cannot be pre-empted: a late reply is discarded, as a
            # SuperLink discards replies that arrive after the round's deadline
            reason = (
                f"timed out: replied after {elapsed:.1f} s (deadline runtime.timeout={timeout:g} s)"
            )
            reply = Message(Error(code=TIMEOUT_ERROR, reason=reason), reply_to=msg)
        reply.metadata.__dict__["_message_id"] = f"r{msg.metadata.message_id}"
        return reply

    def execute_many(self, messages: list[Message], timeout: float | None) -> list[Message]:
        """Replies to ``messages``, in order.  With ``runtime.vectorize`` on or auto, a
        round's TRAIN messages run in one greenlet each around a shared
        :class:`fedsim.algorithms.vectorize.RoundBatcher`, which trains their clients together."""
        train = [i for i, m in enumerate(messages) if _is_train(m)]
        if self.vectorize == "off" or len(train) < 2:
            return [self.execute(m, timeout) for m in messages]
        from fedsim.algorithms.vectorize import RoundBatcher, VectorizeError
        from fedsim.algorithms.vmap_train import train_jobs

        replies: list[Message | None] = [None] * len(messages)
        batcher = RoundBatcher(self.vectorize, self._fallbacks_logged)

        def handle(i: int) -> Message:
            with batcher.bind():
                return self.execute(messages[i], timeout, reraise=(VectorizeError,))

        t0 = time.perf_counter()
        seconds = self.client_seconds
        _set_threads(self.threads)
        got = batcher.run([partial(handle, i) for i in train], train_jobs)
        for i, reply in zip(train, got, strict=True):
            replies[i] = reply  # a VectorizeError (vectorize=on) ends the run
        # the clients interleave: count the round's wall time once
        self.client_seconds = seconds + time.perf_counter() - t0
        for i, m in enumerate(messages):
            if replies[i] is None:
                replies[i] = self.execute(m, timeout)
        return [r for r in replies if r is not None]

    def close(self) -> None:
        """Nothing to release: the clients run in this thread."""

    def states(self) -> dict[int, RecordDict]:
        return {
            ctx.node_id - NODE_BASE: ctx.state for ctx in self.contexts.values() if len(ctx.state)
        }

    def restore(self, states: dict[int, RecordDict]) -> None:
        for pid, state in states.items():
            self.context(NODE_BASE + pid).state = state


def _worker_main(
    conn: Any, num_clients: int, run_config: dict[str, Any], run_id: int, threads: int
) -> None:
    """A worker process: hosts the ClientApps of its clients until told to stop.

    Ctrl-C and ``kill -TERM`` reach a whole process group: workers ignore both, so that
    the server finishes the round, checkpoints and stops them by message.  A worker
    whose server is gone (its pipe closed) ends quietly.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    import torch

    from fedsim.engine.app import make_client_app

    if threads > 0:
        torch.set_num_threads(threads)
    clients = _Clients(make_client_app(), num_clients, run_config, run_id)
    while True:
        try:
            cmd, payload = conn.recv()
        except (EOFError, OSError):
            return
        if cmd == "run":
            messages, timeout = payload
            conn.send(clients.execute_many(messages, timeout))
        elif cmd == "states":
            conn.send(clients.states())
        elif cmd == "restore":
            clients.restore(payload)
            conn.send(None)
        else:  # "stop"
            clients.close()
            conn.send(clients.client_seconds)
            return


class InlineGrid(Grid):
    """A Grid whose nodes are virtual clients executed in this process (or in workers)."""

    def __init__(
        self,
        client_app: ClientApp,
        num_clients: int,
        run_config: dict[str, Any],
        run_id: int = 1,
        workers: int = 0,
        threads: int = 0,
    ) -> None:
        self.num_clients = num_clients
        self._run = Run.create_empty(run_id)
        self._local = _Clients(client_app, num_clients, run_config, run_id)
        self._replies: dict[str, Message] = {}
        self._ids = itertools.count(1)
        self._pipes: list[Any] = []
        self._procs: list[Any] = []
        # What Flower's SuperLink does before it starts a ServerApp process: messages the
        # ServerApp creates take their run and source node from this identity.
        TaskIdentity.task_id = 1
        TaskIdentity.run_id = run_id
        TaskIdentity.node_id = SUPERLINK_NODE_ID
        if workers > 0:
            ctx = mp.get_context("spawn")  # fork after torch's threads start is unsafe
            for _ in range(workers):
                parent, child = ctx.Pipe()
                proc = ctx.Process(
                    target=_worker_main,
                    args=(child, num_clients, run_config, run_id, threads or 1),
                    daemon=True,
                )
                proc.start()
                self._pipes.append(parent)
                self._procs.append(proc)

    @property
    def client_seconds(self) -> float:
        """Time spent inside ClientApps of this process (for overhead accounting)."""
        return self._local.client_seconds

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

    def push_messages(
        self, messages: Iterable[Message], timeout: float | None = None
    ) -> Iterable[str]:
        batch = list(messages)
        ids: list[str] = []
        for msg in batch:
            msg_id = str(next(self._ids))
            msg.metadata.__dict__["_message_id"] = msg_id
            ids.append(msg_id)
        if not self._pipes:
            for msg_id, reply in zip(ids, self._local.execute_many(batch, timeout), strict=True):
                self._replies[msg_id] = reply
            return ids
        per_worker: list[list[tuple[str, Message]]] = [[] for _ in self._pipes]
        for msg, msg_id in zip(batch, ids, strict=True):
            worker = (msg.metadata.dst_node_id - NODE_BASE) % len(self._pipes)
            per_worker[worker].append((msg_id, msg))
        busy = []
        for pipe, items in zip(self._pipes, per_worker, strict=True):
            if items:
                pipe.send(("run", ([m for _, m in items], timeout)))
                busy.append((pipe, items))
        for pipe, items in busy:
            for (msg_id, _), reply in zip(items, pipe.recv(), strict=True):
                self._replies[msg_id] = reply
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [self._replies.pop(i) for i in message_ids if i in self._replies]

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        return list(self.pull_messages(list(self.push_messages(messages, timeout))))

    # ------------------------------------------------------------- fedsim extras
    def node_map(self) -> dict[int, int]:
        """Partition id -> node id, known without a start-up query."""
        return {pid: NODE_BASE + pid for pid in range(self.num_clients)}

    def context(self, node_id: int) -> Context:
        """The Context of a client hosted in this process (in-process mode)."""
        return self._local.context(node_id)

    def client_states(self) -> dict[int, RecordDict]:
        """Persistent state of every client that has run so far (for checkpoints)."""
        states = self._local.states()
        for pipe in self._pipes:
            pipe.send(("states", None))
            states.update(pipe.recv())
        return states

    def restore_client_states(self, states: dict[int, RecordDict]) -> None:
        """Put checkpointed client states back (before the first message of a resume)."""
        if not self._pipes:
            self._local.restore(states)
            return
        for w, pipe in enumerate(self._pipes):
            pipe.send(("restore", {p: s for p, s in states.items() if p % len(self._pipes) == w}))
            pipe.recv()

    def close(self) -> None:
        """Stop the worker processes (by message, then by PID if they do not exit)."""
        self._local.close()
        for pipe in self._pipes:
            try:
                pipe.send(("stop", None))
                self._local.client_seconds += float(pipe.recv())
            except (OSError, EOFError):
                pass
        for proc in self._procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.kill()
                proc.join()
        self._pipes, self._procs = [], []


def run_inline(
    server_app: ServerApp,
    client_app: ClientApp,
    num_clients: int,
    run_config: dict[str, Any],
    workers: int = 0,
    threads: int = 0,
    on_grid: Callable[[InlineGrid], None] | None = None,
) -> InlineGrid:
    """Run a ServerApp against ``num_clients`` inline ClientApps; returns the grid."""
    grid = InlineGrid(client_app, num_clients, run_config, workers=workers, threads=threads)
    if on_grid is not None:
        on_grid(grid)
    server_ctx = Context(
        run_id=grid.run.run_id, node_id=0, node_config={}, state=RecordDict(), run_config=run_config
    )
    try:
        server_app(grid, server_ctx)
    finally:
        grid.close()
    return grid
