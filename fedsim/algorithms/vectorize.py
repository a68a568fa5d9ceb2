"""Vectorised clients: the clients of a round train together, many per batched step.

``runtime.vectorize`` (``auto`` | ``on`` | ``off``, default ``off``) is honoured by the
inline runtime.  The per-message ClientApp path stays intact (every mod and wrapper around
a client still runs): the grid handles the round's TRAIN messages in one greenlet each
(cooperative, in the grid's own thread) around a :class:`RoundBatcher`.  Inside a
client's ``fit``, :func:`fedsim.algorithms.training.train_local` then does not train: it
snapshots the model, optimizer state and index batches into a job, submits the job and
waits (releasing the client environment's lock, see :func:`released_while_waiting`).
When every client has either submitted or finished without submitting (a crash, a fault,
a client that trains no model), the grid trains all submitted jobs in one
``torch.func.vmap`` loop (:mod:`fedsim.algorithms.vmap_train`) and each waiting call writes its
result back into its model and returns, so ``fit`` goes on exactly as after sequential
training.  (Greenlets instead of threads: the same interleaving without thread
hand-offs, which cost more than the batched step saved on small models.)

What cannot be vectorised (a client round with a loss stage or an after-step, such as
FRAug's, FedoSSL's or SCAFFOLD's :class:`fedsim.algorithms.client.LocalRun`, an optimizer other than
plain SGD/Adam, random layers such as dropout): ``auto`` trains those
clients one by one and says so once in the log; ``on`` refuses, at configuration load
where this is known (:func:`check_config`) and with :class:`VectorizeError` otherwise.

This module does not import torch (configuration checks run before torch is loaded).
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import threading
from collections.abc import Callable, Iterator
from functools import partial
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


# per thread, and per greenlet when the round's clients run as greenlets (each has its
# own context)
_BATCHER: contextvars.ContextVar[RoundBatcher | None] = contextvars.ContextVar(
    "fedsim_batcher", default=None
)
_LOCK: contextvars.ContextVar[Any] = contextvars.ContextVar("fedsim_train_lock", default=None)
_LOG_LOCK = threading.Lock()


def current() -> RoundBatcher | None:
    """The batcher bound to this thread or greenlet (None: train sequentially)."""
    return _BATCHER.get()


def held_lock() -> Any:
    """The lock the calling client holds around training (see below), or None."""
    return _LOCK.get()


@contextlib.contextmanager
def released_while_waiting(lock: Any) -> Iterator[None]:
    """Declare that the caller holds ``lock`` around training: a vectorised
    ``train_local`` releases it while it waits for the round's batched step and
    re-acquires it before writing the result back."""
    token = _LOCK.set(lock)
    try:
        yield
    finally:
        _LOCK.reset(token)


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
    r"""One round's clients as greenlets of the dispatching thread, and their batched step.

    :meth:`run` starts one greenlet per call (each call handles one TRAIN message under
    :meth:`bind`).  A client that reaches :func:`fedsim.algorithms.training.train_local`
    :meth:`submit`\ s its job, which hands control back; once every greenlet has either
    submitted or returned, the waiting jobs are trained together and their greenlets go
    on, in the order they submitted.  Cooperative switching costs no thread hand-offs and
    fixes the order of everything.  ``logged`` (shared by the batchers of one run) holds
    the fallback reasons already reported.
    """

    def __init__(self, mode: str, logged: set[str] | None = None) -> None:
        self.mode = mode
        self.logged = set() if logged is None else logged  # fallbacks already reported
        self._pending: list[Any] = []
        self._parent: Any = None  # the greenlet running run()

    def run(self, calls: list[Callable[[], Any]], train: Callable[[list[Any]], None]) -> list[Any]:
        """The results of ``calls``, each run in its own greenlet; ``train`` trains every
        full set of submitted jobs.  A call's exception is raised here, after the others
        finished (the first one in call order); an interrupt (``KeyboardInterrupt``,
        :class:`fedsim.errors.Interrupted`) is raised at once, and the clients still
        waiting are unwound (their ``finally`` blocks run) before it propagates."""
        import greenlet

        self._parent = greenlet.getcurrent()
        results: list[Any] = [None] * len(calls)
        errors: list[Exception | None] = [None] * len(calls)
        lets: list[Any] = []

        def body(i: int) -> None:
            try:
                results[i] = calls[i]()
            except Exception as e:  # re-raised below, in this greenlet
                errors[i] = e

        try:
            for i in range(len(calls)):
                lets.append(greenlet.greenlet(partial(body, i)))
                lets[-1].switch()  # runs until it submits or returns
            while self._pending:
                jobs, self._pending = self._pending, []
                try:
                    train(jobs)
                except Exception as e:  # every waiting client learns why
                    for job in jobs:
                        job.error = e
                for job in jobs:
                    job.done = True
                for job in jobs:
                    job.waiter.switch()  # back into train_local; it may submit again
        finally:
            self._parent = None
            self._pending = []
            for let in lets:  # only after an interrupt: clients still inside submit
                if not let.dead:
                    let.throw(greenlet.GreenletExit)
        first = next((err for err in errors if err is not None), None)
        if first is not None:
            raise first
        return results

    @contextlib.contextmanager
    def bind(self) -> Iterator[None]:
        """Make this batcher :func:`current` for the calling greenlet."""
        token = _BATCHER.set(self)
        try:
            yield
        finally:
            _BATCHER.reset(token)

    def submit(self, job: Any) -> None:
        """Queue ``job`` and wait until it is trained (``job.error`` set on failure)."""
        if self._parent is None:
            raise RuntimeError("RoundBatcher.submit outside RoundBatcher.run")
        import greenlet

        job.waiter = greenlet.getcurrent()
        self._pending.append(job)
        self._parent.switch()
