"""``fedsim deploy <command>``: argument parsing and dispatch."""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

from fedsim.deploy.certs import make_certs, make_node_keys
from fedsim.deploy.commands import (
    CLIENTAPPIO_PORT,
    CONNECTION,
    SUPERLINK_PORT,
    flower_env,
    register_command,
    run_command,
    superlink_command,
    supernode_command,
    write_connection,
)
from fedsim.deploy.executor import FAST_POLL_S, run_fast_supernode, serve_clientapps


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
        if dry:  # a dry run writes nothing
            print(f"fedsim: would write connection '{a.connection}' -> {a.superlink}")
            return 0
        path = write_connection(a.superlink, ca, a.connection)
        print(f"fedsim: connection '{a.connection}' -> {a.superlink} in {path}")
        return 0
    if a.command == "register":
        return _exec(register_command(_need(a.public_key, "public key"), a.connection), dry)
    if a.command == "run":
        from fedsim.engine.conf import compose

        compose(list(a.overrides))  # a bad override fails here, before anything is written
        if a.superlink:
            ca = None if a.insecure else _need(a.ca, "--ca")
            if dry:  # a dry run writes nothing
                print(f"fedsim: would write connection '{a.connection}' -> {a.superlink}")
            else:
                path = write_connection(a.superlink, ca, a.connection)
                print(
                    f"fedsim: connection '{a.connection}' -> {a.superlink} in {path}",
                    file=sys.stderr,
                )
        return _exec(run_command(a.overrides, a.connection, stream=a.stream), dry)
    if a.command == "clientapps":
        os.environ.update(flower_env())
        serve_clientapps(a.runtime_api_address, poll=a.poll)
        return 0
    return 2
