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

Modules, by concern:

* :mod:`fedsim.deploy.certs` — the CA, the SuperLink certificate, SuperNode keys;
* :mod:`fedsim.deploy.commands` — the Flower command lines and the connection file;
* :mod:`fedsim.deploy.executor` — the warm ClientApp executor and ``--fast`` SuperNode;
* :mod:`fedsim.deploy.cli` — the ``fedsim deploy`` argument parser.

Latency.  Flower 1.42's default path waits a lot (3 s grid pulls, 3 s fleet polls, a
fresh ``flwr-clientapp`` process per message).  The ServerApp wraps Flower's ``HttpGrid``
in :class:`fedsim.engine.grid.PollingGrid` (0.1 s pulls); ``fedsim deploy supernode --fast``
adds the warm executor and a shorter fleet poll (see :mod:`fedsim.deploy.executor`).
See ``bench/results/deploy_latency.md`` for the per-round overhead before and after.
"""

from fedsim.deploy.certs import make_certs, make_node_keys
from fedsim.deploy.cli import cmd_deploy
from fedsim.deploy.commands import (
    CLIENTAPPIO_PORT,
    CONNECTION,
    FLOWER_ENV,
    SUPERLINK_PORT,
    flower_env,
    flwr_home,
    node_config,
    register_command,
    repo_root,
    run_command,
    superlink_command,
    supernode_command,
    write_connection,
)
from fedsim.deploy.executor import FAST_POLL_S, run_fast_supernode, serve_clientapps
from fedsim.engine.grid import GRID_POLL_S, PollingGrid

__all__ = [
    "CLIENTAPPIO_PORT",
    "CONNECTION",
    "FAST_POLL_S",
    "FLOWER_ENV",
    "GRID_POLL_S",
    "SUPERLINK_PORT",
    "PollingGrid",
    "cmd_deploy",
    "flower_env",
    "flwr_home",
    "make_certs",
    "make_node_keys",
    "node_config",
    "register_command",
    "repo_root",
    "run_command",
    "run_fast_supernode",
    "serve_clientapps",
    "superlink_command",
    "supernode_command",
    "write_connection",
]
