"""The plain Flower commands that ``fedsim deploy`` runs, and the SuperLink connection.

``flower-superlink``, ``flower-supernode``, ``flwr run`` and ``flwr supernode register``
are built here as argument lists, so that they can be printed and run without fedsim.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

SUPERLINK_PORT = 8000  # Flower's default: Fleet, Control and Runtime APIs over HTTP(S)
CLIENTAPPIO_PORT = 9094  # Flower's default SuperNode Runtime (ClientAppIo) port
CONNECTION = "fedsim"  # the name of the SuperLink connection written to config.toml
FLOWER_ENV = {
    # never `uv sync` the project (it would pull a CUDA torch), no update checks, no telemetry
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "FLWR_TELEMETRY_ENABLED": "0",
}


def flower_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This process's environment with fedsim's Flower settings (explicit values win)."""
    env = dict(os.environ)
    for key, value in FLOWER_ENV.items():
        env.setdefault(key, value)
    env.update(extra or {})
    return env


def repo_root() -> Path:
    """The fedsim project (what ``flwr run`` submits)."""
    return Path(__file__).resolve().parents[2]


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
