"""The grid the ServerApp uses, per Flower runtime.

Flower 1.42's Deployment Engine hands the ServerApp an ``HttpGrid`` that pulls replies
every 3 s.  :func:`for_grid` is the one place that knows about it: on that grid it wraps
the grid in :class:`PollingGrid` (``FEDSIM_GRID_POLL_S``, default 0.1 s; ``0`` keeps
Flower's 3 s pulls), resolves the run directory (a relative one is relative to the
SuperLink's working directory) and logs to ``<run_dir>/fedsim.log`` as ``fedsim run``
does.  On every other grid (the inline and Ray runtimes, tests) it changes nothing.
The runtime is recognised by ``isinstance`` against Flower's own class.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from flwr.app import Message, RecordDict
from flwr.serverapp import Grid
from flwr.supercore.run import Run

from fedsim.tracking.logs import attach_log_file, detach_log_file

log = logging.getLogger(__name__)

GRID_POLL_S = 0.1  # how often the ServerApp pulls replies (Flower's HttpGrid: 3 s)


class PollingGrid(Grid):
    """A Flower ``Grid`` that pulls replies every ``interval`` seconds (HttpGrid: 3 s).

    Everything else is delegated to the wrapped grid.
    """

    def __init__(self, grid: Grid, interval: float = GRID_POLL_S) -> None:
        self.grid = grid
        self.interval = interval

    def set_run(self, run: Run) -> None:
        self.grid.set_run(run)

    @property
    def run(self) -> Run:
        return self.grid.run

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        return self.grid.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self) -> Iterable[int]:
        return self.grid.get_node_ids()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self.grid.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self.grid.pull_messages(message_ids)

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        t0 = time.monotonic()
        waiting = set(self.push_messages(messages))
        sent, t1 = len(waiting), time.monotonic()
        end = t0 + (timeout if timeout is not None else float("inf"))
        out: list[Message] = []
        while waiting:
            got = list(self.pull_messages(waiting))
            out.extend(got)
            waiting -= {m.metadata.reply_to_message_id for m in got}
            if not waiting or time.monotonic() >= end:
                break
            time.sleep(self.interval)
        log.info(
            "%d messages pushed in %.2f s, %d replies after %.2f s",
            sent,
            t1 - t0,
            len(out),
            time.monotonic() - t0,
        )
        return out


def is_deployment(grid: Grid) -> bool:
    """Whether ``grid`` is the Deployment Engine's (Flower's ``HttpGrid``).

    An ``HttpGrid`` exists only once its module is imported, so a process that never
    imported it (every simulation) is answered without the 1.4 s import.
    """
    http = sys.modules.get("flwr.superlink.grid.http_grid")
    return http is not None and isinstance(grid, http.HttpGrid)


def wrap_grid(grid: Grid) -> Grid:
    """``grid`` in :class:`PollingGrid` on the Deployment Engine, else ``grid`` itself."""
    interval = float(os.environ.get("FEDSIM_GRID_POLL_S", GRID_POLL_S))
    if is_deployment(grid) and interval > 0:
        return PollingGrid(grid, interval)
    return grid


@contextmanager
def for_grid(grid: Grid, run_dir: Path) -> Iterator[tuple[Grid, Path]]:
    """The grid and run directory the ServerApp runs the experiment with.

    Under the Deployment Engine: the wrapped grid (:func:`wrap_grid`), the resolved run
    directory, and the run's log in ``<run_dir>/fedsim.log`` while the block runs.
    Elsewhere: ``grid`` and ``run_dir`` unchanged (``fedsim run`` attaches the log).
    """
    if not is_deployment(grid):
        yield grid, run_dir
        return
    run_dir = run_dir.resolve()
    wrapped = wrap_grid(grid)
    run_dir.mkdir(parents=True, exist_ok=True)
    handler = attach_log_file(run_dir)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per 0.1 s pull otherwise
    try:
        poll = wrapped.interval if isinstance(wrapped, PollingGrid) else "flower"
        log.info("deployment run in %s (grid poll %s s)", run_dir, poll)
        yield wrapped, run_dir
    finally:
        detach_log_file(handler)
