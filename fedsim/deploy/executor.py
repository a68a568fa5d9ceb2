"""The long-running ClientApp executor and the fast SuperNode (``--fast``).

Flower 1.42's default path waits a lot: the SuperNode polls the SuperLink every 3 s
(hard-coded in ``flwr.supernode.start_client_internal``), its SuperExec polls for tasks
every 1 s, and every message starts a fresh ``flwr-clientapp`` process (Python, torch,
fedsim, the data).  ``fedsim deploy supernode --fast`` runs the SuperNode with
``--isolation process`` and serves its Runtime API with :func:`serve_clientapps`, which
keeps the data and model loaded between messages, and caps the fleet poll sleep at
``--poll`` seconds by replacing the ``time`` module seen by
``flwr.supernode.start_client_internal`` (a patch of Flower internals; there is no
setting for it in 1.42).  Without ``--fast`` nothing is patched.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from types import ModuleType
from typing import Any

from flwr.app import Message

log = logging.getLogger(__name__)

FAST_POLL_S = 0.2  # --fast: the SuperNode's fleet poll sleep (Flower: 3 s)


def _run_task(address: str, insecure: bool, root_certificates: bytes | None, token: str) -> None:
    """Execute one ClientApp task in this process (what ``flwr-clientapp`` does)."""
    from flwr.app import Error
    from flwr.common.constant import ErrorCode, SubStatus
    from flwr.supercore.heartbeat import HeartbeatSender, make_task_heartbeat_fn_http
    from flwr.supercore.interceptors import (
        RuntimeTokenHttpInterceptor,
        RuntimeVersionHttpInterceptor,
    )
    from flwr.supercore.retry import make_simple_http_retry_invoker
    from flwr.supercore.runtime import RuntimeHttpClient
    from flwr.supernode.runtime.run_clientapp import (
        pull_task_input,
        push_message,
        push_task_output,
    )

    from fedsim.engine.app import client_app

    client = RuntimeHttpClient.from_server_address(
        server_address=address,
        insecure=insecure,
        root_certificates=root_certificates,
        interceptors=[
            RuntimeVersionHttpInterceptor(component_name="flwr-clientapp"),
            RuntimeTokenHttpInterceptor(token),
        ],
        retry_invoker=make_simple_http_retry_invoker(),
    )
    heartbeat = HeartbeatSender(make_task_heartbeat_fn_http(client))
    heartbeat.start()
    message = reply = context = None
    status, details = SubStatus.FAILED, "ClientApp task failed"
    t0 = time.perf_counter()
    t1 = t2 = t0
    try:
        message, context, run, _ = pull_task_input(client)
        t1 = time.perf_counter()
        if not run.fab_id.startswith("fedsim/"):
            raise RuntimeError(f"this executor only runs fedsim apps, not '{run.fab_id}'")
        reply = client_app(message=message, context=context)
        t2 = time.perf_counter()
        status, details = SubStatus.COMPLETED, ""
    except Exception as e:  # the ClientApp's failure becomes an error reply, as in Flower
        log.exception("ClientApp task failed")
        details = f"{type(e).__name__}: {e}"
        if message is not None:
            reply = Message(
                Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=details),
                reply_to=message,
            )
    finally:
        try:
            if reply is not None and context is not None:
                push_message(client, reply, context)
            push_task_output(client, context, status, details)
        finally:
            heartbeat.stop()
            client.close()
            log.info(
                "%s task: pull %.2f s, ClientApp %.2f s, push %.2f s",
                message.metadata.message_type if message is not None else "?",
                t1 - t0,
                t2 - t1,
                time.perf_counter() - t2,
            )


def serve_clientapps(
    address: str,
    insecure: bool = True,
    root_certificates: bytes | None = None,
    poll: float = 0.1,
    stop: threading.Event | None = None,
) -> None:
    """A long-running ClientApp executor for a SuperNode started with ``--isolation process``.

    It does what Flower's SuperExec does (acquire ClientApp tasks from the SuperNode's
    Runtime API at ``address``) but runs each task in this process instead of starting
    a ``flwr-clientapp`` process, so Python, torch, fedsim, the dataset and the model
    are loaded once.  It runs fedsim's own ``client_app`` (the installed one).
    """
    from flwr.proto.runtime_pb2 import AcquireTaskRequest
    from flwr.supercore.constant import TaskType
    from flwr.supercore.interceptors import RuntimeVersionHttpInterceptor
    from flwr.supercore.retry import make_simple_http_retry_invoker
    from flwr.supercore.runtime import RuntimeHttpClient

    client = RuntimeHttpClient.from_server_address(
        server_address=address,
        insecure=insecure,
        root_certificates=root_certificates,
        interceptors=[RuntimeVersionHttpInterceptor(component_name="SuperExec")],
        retry_invoker=make_simple_http_retry_invoker(),
    )
    stop = stop or threading.Event()
    import fedsim.engine.app  # noqa: F401  # load torch and fedsim before the first task arrives

    while not stop.is_set():
        try:
            res = client.AcquireTask(AcquireTaskRequest(supported_task_types=[TaskType.CLIENT_APP]))
        except Exception as e:  # the SuperNode's API is not up yet, or restarting
            log.debug("AcquireTask failed: %s", e)
            stop.wait(max(poll, 0.5))
            continue
        if res.HasField("task") and res.token:
            _run_task(address, insecure, root_certificates, res.token)
        else:
            stop.wait(poll)


class _CappedTime:
    """The ``time`` module with ``sleep`` capped at ``cap`` seconds."""

    def __init__(self, real: ModuleType, cap: float) -> None:
        self._real = real
        self._cap = cap

    def sleep(self, seconds: float) -> None:
        self._real.sleep(min(seconds, self._cap))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


def run_fast_supernode(flower_args: list[str], runtime_address: str, poll: float) -> None:
    """``flower-supernode --isolation process`` in this process, plus the warm executor.

    Caps the SuperNode's fleet poll sleep (3 s in Flower 1.42) at ``poll`` seconds.
    """
    import flwr.supernode.start_client_internal as sci
    from flwr.supernode.cli.flower_supernode import flower_supernode

    if not hasattr(sci, "time"):
        raise RuntimeError("this Flower version has no fleet poll to shorten; drop --fast")
    sci.time = _CappedTime(time, poll)  # type: ignore[assignment]  # the documented patch
    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(logging.Formatter("%(asctime)s fedsim: %(message)s"))
    log.addHandler(console)
    log.setLevel(logging.INFO)
    worker = threading.Thread(
        target=serve_clientapps, args=(runtime_address,), name="fedsim-clientapps", daemon=True
    )
    worker.start()
    sys.argv = flower_args
    flower_supernode()
