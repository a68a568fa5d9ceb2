"""Run fedsim on Flower's Deployment Engine: certificates, SuperLink, SuperNodes, runs.

``fedsim deploy <command>`` wraps only what is tedious; every command prints the plain
Flower command it runs (``flower-superlink``, ``flower-supernode``, ``flwr run``,
``flwr supernode register``), so the same steps work without fedsim's helpers:

* ``certs``     — a CA and a SuperLink certificate whose SANs name the SuperLink's hosts;
* ``keys``      — an EC P-384 key pair (OpenSSH format) for SuperNode authentication;
* ``superlink`` — ``flower-superlink`` with TLS (default) and optional node authentication;
* ``supernode`` — ``flower-supernode`` for partition ``i`` of a scenario (its
  ``--node-config`` carries ``partition-id``; ``FEDSIM_DATA`` on that host points the
  ClientApp at local data);
* ``register``  — ``flwr supernode register`` of a SuperNode's public key;
* ``run``       — writes the SuperLink connection into ``$FLWR_HOME/config.toml`` and
  submits the project with ``flwr run <project> <connection>``.

Latency.  Flower 1.42's default path waits a lot: the ServerApp's grid pulls replies
every 3 s, the SuperNode polls the SuperLink every 3 s (hard-coded in
``flwr.supernode.start_client_internal``), its SuperExec polls for tasks every 1 s, and
every message starts a fresh ``flwr-clientapp`` process (Python, torch, fedsim, the
data).  fedsim cuts this with what Flower offers plus one documented patch:

* the ServerApp wraps Flower's ``HttpGrid`` in :class:`PollingGrid` (0.1 s pulls);
* ``fedsim deploy supernode --fast`` runs the SuperNode with ``--isolation process``
  and serves its Runtime API with a long-running, in-process ClientApp executor
  (:func:`serve_clientapps`) — the data and model stay loaded between messages;
* ``--fast`` also caps the SuperNode's fleet poll sleep at ``--poll`` seconds by
  replacing the ``time`` module seen by ``flwr.supernode.start_client_internal``.
  This is a patch of Flower internals (there is no setting for it in 1.42); without
  ``--fast`` nothing is patched.

See ``bench/results/deploy_latency.md`` for the per-round overhead before and after.
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import logging
import os
import shlex
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from flwr.app import Message, RecordDict
from flwr.serverapp import Grid
from flwr.supercore.run import Run

log = logging.getLogger(__name__)

SUPERLINK_PORT = 8000  # Flower's default: Fleet, Control and Runtime APIs over HTTP(S)
CLIENTAPPIO_PORT = 9094  # Flower's default SuperNode Runtime (ClientAppIo) port
CONNECTION = "fedsim"  # the name of the SuperLink connection written to config.toml
FLOWER_ENV = {
    # never `uv sync` the project (it would pull a CUDA torch), no update checks, no telemetry
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "FLWR_TELEMETRY_ENABLED": "0",
}
GRID_POLL_S = 0.1  # how often the ServerApp pulls replies (Flower's HttpGrid: 3 s)
FAST_POLL_S = 0.2  # --fast: the SuperNode's fleet poll sleep (Flower: 3 s)


def flower_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This process's environment with fedsim's Flower settings (explicit values win)."""
    env = dict(os.environ)
    for key, value in FLOWER_ENV.items():
        env.setdefault(key, value)
    env.update(extra or {})
    return env


def repo_root() -> Path:
    return Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------ certificates


def _name(common_name: str) -> Any:
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def make_certs(out_dir: Path, hosts: Sequence[str] = (), days: int = 365) -> dict[str, Path]:
    """A CA and a SuperLink certificate signed by it (PEM files in ``out_dir``).

    The certificate's subject alternative names are ``localhost``, ``127.0.0.1``,
    ``::1`` and every entry of ``hosts`` (IP addresses or DNS names): a SuperNode checks
    that the address it dials is one of them.  Returns the paths by role: ``ca``
    (give it to every SuperNode and to ``flwr``), ``ca_key`` (keep it private),
    ``cert`` and ``key`` (the SuperLink's).
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    out_dir.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=5)
    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(_name("fedsim CA"))
        .issuer_name(_name("fedsim CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    names: list[x509.GeneralName] = []
    for host in ["localhost", "127.0.0.1", "::1", *hosts]:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    key = ec.generate_private_key(ec.SECP384R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(hosts[0] if hosts else "localhost"))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(list(dict.fromkeys(names))), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    paths = {
        "ca": out_dir / "ca.crt",
        "ca_key": out_dir / "ca.key",
        "cert": out_dir / "server.pem",
        "key": out_dir / "server.key",
    }
    paths["ca"].write_bytes(ca_cert.public_bytes(pem))
    paths["cert"].write_bytes(cert.public_bytes(pem))
    for role, k in (("ca_key", ca_key), ("key", key)):
        paths[role].write_bytes(
            k.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        )
        paths[role].chmod(0o600)
    return paths


def make_node_keys(out_dir: Path, name: str) -> tuple[Path, Path]:
    """An EC P-384 key pair in OpenSSH format: ``<name>`` (private) and ``<name>.pub``.

    The public key is what ``flwr supernode register`` uploads to the SuperLink; the
    private key is the SuperNode's ``--auth-supernode-private-key``.
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    out_dir.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP384R1())
    private, public = out_dir / name, out_dir / f"{name}.pub"
    private.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
    )
    private.chmod(0o600)
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )
        + f" {name}\n".encode()
    )
    return private, public


# ------------------------------------------------------------------------ commands


def superlink_command(
    certs: Path | None,
    host: str = "0.0.0.0",
    port: int = SUPERLINK_PORT,
    auth: bool = False,
    database: str | None = None,
) -> list[str]:
    """``flower-superlink`` with TLS from ``certs`` (``None``: ``--insecure``)."""
    cmd = ["flower-superlink", "--host", host, "--port", str(port)]
    if certs is None:
        cmd.append("--insecure")
    else:
        cmd += [
            "--ssl-ca-certfile",
            str(certs / "ca.crt"),
            "--ssl-certfile",
            str(certs / "server.pem"),
            "--ssl-keyfile",
            str(certs / "server.key"),
        ]
    if auth:
        cmd.append("--enable-supernode-auth")
    if database:
        cmd += ["--database", database]
    cmd.append("--disable-runtime-dependency-installation")
    return cmd


def node_config(partition_id: int, num_partitions: int, extra: Sequence[str] = ()) -> str:
    """The SuperNode's ``--node-config``: which partition its ClientApp loads."""
    return " ".join([f"partition-id={partition_id}", f"num-partitions={num_partitions}", *extra])


def supernode_command(
    superlink: str,
    partition_id: int,
    num_partitions: int,
    ca: Path | None,
    key: Path | None = None,
    port: int | None = None,
    isolation: str = "subprocess",
    extra_config: Sequence[str] = (),
) -> list[str]:
    """``flower-supernode`` for one partition (``ca=None``: ``--insecure``)."""
    cmd = ["flower-supernode", "--superlink", superlink]
    cmd += ["--insecure"] if ca is None else ["--root-certificates", str(ca)]
    if key is not None:
        cmd += ["--auth-supernode-private-key", str(key)]
    cmd += [
        "--port",
        str(CLIENTAPPIO_PORT + partition_id if port is None else port),
        "--node-config",
        node_config(partition_id, num_partitions, extra_config),
        "--isolation",
        isolation,
    ]
    return cmd


def flwr_home() -> Path:
    return Path(os.environ.get("FLWR_HOME", Path.home() / ".flwr")).expanduser()


def write_connection(
    address: str, ca: Path | None, name: str = CONNECTION, home: Path | None = None
) -> Path:
    """Add (or replace) ``[superlink.<name>]`` in ``$FLWR_HOME/config.toml``.

    Other connections in the file are kept; ``name`` becomes the default one.
    """
    import tomli
    import tomli_w

    path = (home or flwr_home()) / "config.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    data: dict[str, Any] = tomli.loads(path.read_text()) if path.exists() else {}
    links = data.setdefault("superlink", {})
    entry: dict[str, Any] = {"address": address}
    if ca is None:
        entry["insecure"] = True
    else:
        entry["root-certificates"] = str(ca.resolve())
    links[name] = entry
    links["default"] = name
    path.write_text(tomli_w.dumps(data))
    return path


def run_command(
    overrides: Sequence[str],
    connection: str = CONNECTION,
    app: Path | None = None,
    stream: bool = False,
) -> list[str]:
    """``flwr run <project> <connection> --run-config "overrides='...'"``."""
    text = " ".join(overrides)
    if "'" in text:
        raise ValueError("fedsim overrides travel in a TOML literal string: no single quotes")
    cmd = ["flwr", "run", str(app or repo_root()), connection]
    cmd += ["--run-config", f"overrides='{text}'"]
    if stream:
        cmd.append("--stream")
    return cmd


def register_command(public_key: Path, connection: str = CONNECTION) -> list[str]:
    return ["flwr", "supernode", "register", str(public_key), connection]


# ------------------------------------------------------------------------ fast paths


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


def deployed_experiment(grid: Grid, cfg: Any, run_dir: Path) -> dict[str, float]:
    """What the ServerApp runs under the Deployment Engine.

    The grid is wrapped in :class:`PollingGrid` (``FEDSIM_GRID_POLL_S``, default 0.1;
    ``0`` keeps Flower's 3 s pulls) and the run's log goes to ``<run_dir>/fedsim.log``
    as with ``fedsim run``.
    """
    from fedsim.runner import _attach_log_file
    from fedsim.server import run_experiment

    interval = float(os.environ.get("FEDSIM_GRID_POLL_S", GRID_POLL_S))
    if interval > 0:
        grid = PollingGrid(grid, interval)
    run_dir.mkdir(parents=True, exist_ok=True)
    handler = _attach_log_file(run_dir)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per 0.1 s pull otherwise
    try:
        log.info("deployment run in %s (grid poll %s s)", run_dir, interval or "flower")
        return run_experiment(grid, cfg, run_dir)
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()


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

    from fedsim.app import client_app

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
    import fedsim.app  # noqa: F401  # load torch and fedsim before the first task arrives

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


# ------------------------------------------------------------------------ CLI


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fedsim deploy",
        description="Run fedsim on Flower's Deployment Engine (see README: Deploy across hosts).",
    )
    sub = p.add_subparsers(dest="command", required=True)

    c = sub.add_parser("certs", help="create a CA and the SuperLink's TLS certificate")
    c.add_argument("--dir", type=Path, default=Path("certs"))
    c.add_argument(
        "--host",
        action="append",
        default=[],
        help="an IP or DNS name SuperNodes use to reach the SuperLink (repeatable)",
    )

    k = sub.add_parser("keys", help="create a SuperNode authentication key pair")
    k.add_argument("name", help="key file name, e.g. node0")
    k.add_argument("--dir", type=Path, default=Path("keys"))

    tls = argparse.ArgumentParser(add_help=False)
    tls.add_argument("--insecure", action="store_true", help="no TLS (testing only)")

    sl = sub.add_parser("superlink", parents=[tls], help="start flower-superlink")
    sl.add_argument("--certs", type=Path, default=Path("certs"), help="directory from `certs`")
    sl.add_argument("--host", default="0.0.0.0")
    sl.add_argument("--port", type=int, default=SUPERLINK_PORT)
    sl.add_argument("--auth", action="store_true", help="--enable-supernode-auth")
    sl.add_argument("--database", default=None)

    sn = sub.add_parser("supernode", parents=[tls], help="start flower-supernode for a client")
    sn.add_argument("--superlink", required=True, help="SuperLink address host:port")
    sn.add_argument("--partition-id", type=int, required=True)
    sn.add_argument("--num-partitions", type=int, required=True)
    sn.add_argument("--ca", type=Path, default=Path("certs/ca.crt"))
    sn.add_argument("--key", type=Path, default=None, help="auth private key (from `keys`)")
    sn.add_argument(
        "--port", type=int, default=None, help=f"ClientAppIo port ({CLIENTAPPIO_PORT}+id)"
    )
    sn.add_argument("--node-config", nargs="*", default=[], help="extra key=value entries")
    sn.add_argument("--fast", action="store_true", help="warm in-process ClientApps, fast poll")
    sn.add_argument("--poll", type=float, default=FAST_POLL_S, help="--fast: fleet poll, s")

    cn = sub.add_parser("connect", parents=[tls], help="write the SuperLink connection for flwr")
    cn.add_argument("--superlink", required=True, help="SuperLink address host:port")
    cn.add_argument("--ca", type=Path, default=Path("certs/ca.crt"))
    cn.add_argument("--connection", default=CONNECTION)

    rg = sub.add_parser("register", help="flwr supernode register <public key>")
    rg.add_argument("public_key", type=Path)
    rg.add_argument("--connection", default=CONNECTION)

    r = sub.add_parser("run", parents=[tls], help="submit a run: flwr run <project> <conn>")
    r.add_argument("--superlink", default=None, help="host:port; writes the connection")
    r.add_argument("--ca", type=Path, default=Path("certs/ca.crt"))
    r.add_argument("--connection", default=CONNECTION)
    r.add_argument("--stream", action="store_true", help="follow the run's logs")
    r.add_argument("overrides", nargs="*", help="fedsim overrides, e.g. rounds=5")

    ca = sub.add_parser("clientapps", help="warm ClientApp executor for --isolation process")
    ca.add_argument("--runtime-api-address", default=f"127.0.0.1:{CLIENTAPPIO_PORT}")
    ca.add_argument("--poll", type=float, default=0.1)
    return p


def _exec(cmd: list[str], dry_run: bool) -> int:
    print("fedsim: " + shlex.join(cmd), file=sys.stderr, flush=True)
    if dry_run:
        return 0
    os.environ.update(flower_env())
    os.execvp(cmd[0], cmd)
    return 0  # not reached


def _need(path: Path, what: str) -> Path:
    from fedsim.errors import UserError

    if not path.exists():
        raise UserError(f"{what}: {path} not found (fedsim deploy certs / keys create it)")
    return path.resolve()


def cmd_deploy(args: list[str]) -> int:
    """``fedsim deploy <command>``; ``FEDSIM_DRY_RUN=1`` prints Flower commands only."""
    dry = os.environ.get("FEDSIM_DRY_RUN", "") == "1"
    a = _parser().parse_args(args)
    if a.command == "certs":
        paths = make_certs(a.dir, a.host)
        for role, path in paths.items():
            print(f"fedsim: {role:7s} {path}")
        return 0
    if a.command == "keys":
        private, public = make_node_keys(a.dir, a.name)
        print(f"fedsim: private key {private} (stays on the SuperNode)")
        print(f"fedsim: public key  {public} (register it: fedsim deploy register {public})")
        return 0
    if a.command == "superlink":
        certs = None if a.insecure else _need(a.certs, "--certs").resolve()
        return _exec(superlink_command(certs, a.host, a.port, a.auth, a.database), dry)
    if a.command == "supernode":
        ca = None if a.insecure else _need(a.ca, "--ca")
        key = _need(a.key, "--key") if a.key else None
        port = CLIENTAPPIO_PORT + a.partition_id if a.port is None else a.port
        isolation = "process" if a.fast else "subprocess"
        cmd = supernode_command(
            a.superlink, a.partition_id, a.num_partitions, ca, key, port, isolation, a.node_config
        )
        if not a.fast:
            return _exec(cmd, dry)
        print("fedsim: " + shlex.join(cmd) + "  (+ warm ClientApps, fast poll)", file=sys.stderr)
        if not dry:
            os.environ.update(flower_env())
            run_fast_supernode(cmd, f"127.0.0.1:{port}", a.poll)
        return 0
    if a.command == "connect":
        ca = None if a.insecure else _need(a.ca, "--ca")
        path = write_connection(a.superlink, ca, a.connection)
        print(f"fedsim: connection '{a.connection}' -> {a.superlink} in {path}")
        return 0
    if a.command == "register":
        return _exec(register_command(_need(a.public_key, "public key"), a.connection), dry)
    if a.command == "run":
        if a.superlink:
            ca = None if a.insecure else _need(a.ca, "--ca")
            path = write_connection(a.superlink, ca, a.connection)
            print(
                f"fedsim: connection '{a.connection}' -> {a.superlink} in {path}", file=sys.stderr
            )
        return _exec(run_command(a.overrides, a.connection, stream=a.stream), dry)
    if a.command == "clientapps":
        os.environ.update(flower_env())
        serve_clientapps(a.runtime_api_address, poll=a.poll)
        return 0
    return 2


def start(
    cmd: list[str], log_file: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """Start ``cmd`` in its own process group, output to ``log_file`` (tests, bench)."""
    with open(log_file, "ab") as out:
        return subprocess.Popen(
            cmd,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=flower_env(env),
            start_new_session=True,
        )
