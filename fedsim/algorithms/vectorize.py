"""Vectorised clients: the clients of a round train together, many per batched step.

``runtime.vectorize`` (``auto`` | ``on`` | ``off``, default ``off``) is honoured by the
inline runtime.  The per-message ClientApp path stays intact (every mod and wrapper around
a client still runs): the grid hands the round's TRAIN messages to one thread each and
binds a :class:`RoundBatcher` to those threads.  Inside a client's ``fit``,
:func:`fedsim.algorithms.training.train_local` then does not train: it snapshots the model,
optimizer state and index batches into a job, submits the job and waits (releasing the
client environment's lock, see :func:`released_while_waiting`).  When every dispatched
thread has either submitted or finished without submitting (a crash, a fault, a client
that trains no model), the grid's thread trains all submitted jobs in one
``torch.func.vmap`` loop (:mod:`fedsim.algorithms.vmap_train`) and each waiting call writes its
result back into its model and returns, so ``fit`` goes on exactly as after sequential
training.

What cannot be vectorised (a client round with a loss stage or an after-step, such as
FRAug's, FedoSSL's or SCAFFOLD's :class:`fedsim.algorithms.client.LocalRun`, an optimizer other than
plain SGD/Adam, random layers such as dropout): ``auto`` trains those
clients one by one and says so once in the log; ``on`` refuses, at configuration load
where this is known (:func:`check_config`) and with :class:`VectorizeError` otherwise.

This module does not import torch (configuration checks run before torch is loaded).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any

from fedsim.errors import ConfigError

log = logging.getLogger(__name__)

MODES = ("auto", "on", "off")


class VectorizeError(ConfigError):
    """``runtime.vectorize=on`` and a client cannot be vectorised."""


def client_blocker(client_class: Any) -> str | None:
    """Why clients of this class cannot be vectorised, or None (known at load time).

    ``client_class`` is a :class:`fedsim.algorithms.client.Client` subclass; its round's stages
    (``client_class.Run``, a :class:`fedsim.algorithms.client.LocalRun`) are vectorisable when they
    define neither a loss stage nor an after-step (a proximal term is declarative)."""
    run = client_class.Run
    stages = run.closure_stages()
    if stages:
        return (
            f"{client_class.__name__}.Run ({run.__name__}) is not declared vectorisable "
            f"(its local objective is a closure hook: {' / '.join(stages)})"
        )
    return None


def _trains_network(cfg: Any) -> bool:
    from fedsim.algorithms.task import task_of

    return task_of(cfg).trains_network


def check_config(cfg: Any) -> None:
    """Validate ``runtime.vectorize``; with ``on``, refuse what is known not to vectorise."""
    mode = cfg.runtime.vectorize
    if mode not in MODES:
        raise ConfigError(f"runtime.vectorize: must be one of auto, on, off, got '{mode}'")
    if mode != "on":
        return
    why = None
    if cfg.runtime.name != "inline":
        why = f"only runtime=inline vectorises clients, not runtime={cfg.runtime.name}"
    elif not _trains_network(cfg):
        why = f"scenario.task={cfg.scenario.task} trains no network"
    else:
        from fedsim.algorithms.registry import get

        reason = client_blocker(get(cfg.strategy.name).client_class())
        if reason is not None:
            why = f"strategy={cfg.strategy.name}: {reason}"
    if why is not None:
        raise ConfigError(f"runtime.vectorize=on: {why}; use runtime.vectorize=auto or off")


_TLS = threading.local()
_LOG_LOCK = threading.Lock()


def current() -> RoundBatcher | None:
    """The batcher bound to this thread (None: train sequentially)."""
    return getattr(_TLS, "batcher", None)


def held_lock() -> Any:
    """The lock the calling client holds around training (see below), or None."""
    return getattr(_TLS, "lock", None)


@contextlib.contextmanager
def released_while_waiting(lock: Any) -> Iterator[None]:
    """Declare that the caller holds ``lock`` around training: a vectorised
    ``train_local`` releases it while it waits for the round's batched step and
    re-acquires it before writing the result back."""
    prev = getattr(_TLS, "lock", None)
    _TLS.lock = lock
    try:
        yield
    finally:
        _TLS.lock = prev


def note_fallback(batcher: RoundBatcher, reason: str) -> None:
    """``auto``: say once per run and reason that clients train one by one; ``on``: refuse."""
    if batcher.mode == "on":
        raise VectorizeError(f"runtime.vectorize=on: {reason}; use runtime.vectorize=auto or off")
    with _LOG_LOCK:
        if reason in batcher.logged:
            return
        batcher.logged.add(reason)
    log.info("runtime.vectorize=auto: training clients one by one (%s)", reason)


class RoundBatcher:
    """Rendezvous of the threads that handle one round's TRAIN messages.

    ``expected`` threads are dispatched; each calls :meth:`bind` (in its thread) and
    :meth:`finished` when its message is handled.  :meth:`submit` blocks until the job
    has been trained by :meth:`serve`, which the dispatching thread runs.  ``logged`` (shared
    by the batchers of one run) holds the fallback reasons already reported.
    """

    def __init__(self, mode: str, expected: int, logged: set[str] | None = None) -> None:
        self.mode = mode
        self.expected = expected
        self.logged = set() if logged is None else logged  # fallbacks already reported
        self._cond = threading.Condition()
        self._pending: list[Any] = []
        self._finished = 0

    @contextlib.contextmanager
    def bind(self) -> Iterator[None]:
        _TLS.batcher = self
        try:
            yield
        finally:
            _TLS.batcher = None
            with self._cond:
                self._finished += 1
                self._cond.notify_all()

    def submit(self, job: Any) -> None:
        """Queue ``job`` and wait until it is trained (``job.error`` set on failure)."""
        with self._cond:
            self._pending.append(job)
            self._cond.notify_all()
            self._cond.wait_for(lambda: job.done)

    def _ready(self) -> bool:
        waiting = len(self._pending)
        return self._finished == self.expected or (
            waiting > 0 and waiting + self._finished == self.expected
        )

    def serve(self, train: Callable[[list[Any]], None]) -> None:
        """Run ``train`` on each full set of waiting jobs until every thread finished."""
        while True:
            with self._cond:
                self._cond.wait_for(self._ready)
                if self._finished == self.expected:
                    return
                jobs, self._pending = self._pending, []
            try:
                train(jobs)
            except Exception as e:  # every waiting client learns why
                for job in jobs:
                    job.error = e
            with self._cond:
                for job in jobs:
                    job.done = True
                self._cond.notify_all()
