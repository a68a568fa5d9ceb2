"""The Ray runtime: Flower's Simulation Engine hosting the very same apps.

Flower 1.42's Python entry point (``flwr.simulation.run_simulation``) does not pass a run
config to the apps, so the configuration is bound into the apps by closure
(``fedsim.engine.app.make_*_app``); the apps themselves are unchanged.  Use this runtime to
compare against Flower's own engine or to spread clients over a Ray cluster.

``runtime.address`` chooses the cluster.  Empty (the default), Flower's engine starts a
private Ray instance on this machine, as ``ray.init()`` does.  ``auto``, ``host:port``
(the GCS address a head prints after ``ray start --head``) or ``ray://host:port`` (Ray
Client) join an existing cluster: fedsim calls ``ray.init(address=...)`` itself before
Flower's engine starts — Flower's Ray backend only initialises Ray when it is not
initialised yet — so the ClientApps run as Ray actors on the cluster's nodes, each
reserving ``runtime.client_cpus`` CPUs and ``runtime.client_gpus`` GPUs, while the
ServerApp runs in this process.  Every node must be able to import fedsim and read the
data at the same paths (the driver passes its ``PYTHONPATH`` to the workers).
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

from fedsim.errors import UserError

log = logging.getLogger(__name__)


def _worker_pythonpath() -> str:
    """This driver's import path, for the workers (fedsim, strategies and clients)."""
    paths = [p for p in sys.path if p]
    if os.environ.get("PYTHONPATH"):
        paths += os.environ["PYTHONPATH"].split(os.pathsep)
    return os.pathsep.join(dict.fromkeys(paths))


def join_cluster(address: str, client_cpus: float, client_gpus: float) -> None:
    """Connect this process to the Ray cluster at ``address``; check that one ClientApp
    fits on some node, since Flower's engine would otherwise wait for ever."""
    import ray

    kwargs: dict[str, Any] = {
        "address": address,
        "runtime_env": {"env_vars": {"PYTHONPATH": _worker_pythonpath()}},
        "logging_level": logging.WARNING,
    }
    if not address.startswith("ray://"):  # Ray Client keeps the workers' logs on the cluster
        kwargs["log_to_driver"] = False
    try:
        ray.init(**kwargs)
    except (ConnectionError, RuntimeError, ValueError, TimeoutError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(
            f"runtime.address: cannot join the Ray cluster at {address}: {first}"
        ) from None
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    fits = [n for n in nodes if n.get("CPU", 0) >= client_cpus and n.get("GPU", 0) >= client_gpus]
    if not fits:
        ray.shutdown()
        have = ", ".join(f"{n.get('CPU', 0):g} CPU/{n.get('GPU', 0):g} GPU" for n in nodes)
        raise UserError(
            f"runtime.client_cpus={client_cpus:g}, runtime.client_gpus={client_gpus:g}: "
            f"no node of the Ray cluster at {address} has that much (nodes: {have or 'none'})"
        )
    total = ray.cluster_resources()
    log.info(
        "joined the Ray cluster at %s: %d nodes, %g CPUs, %g GPUs",
        address,
        len(nodes),
        total.get("CPU", 0),
        total.get("GPU", 0),
    )


def run_ray(
    num_clients: int,
    run_config: dict[str, Any],
    client_cpus: float = 1.0,
    client_gpus: float = 0.0,
    address: str = "",
) -> None:
    """Run the experiment in ``run_config`` on Flower's Ray-based Simulation Engine."""
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    from flwr.simulation import run_simulation

    from fedsim.engine.app import make_client_app, make_server_app

    backend: dict[str, Any] = {
        "client_resources": {"num_cpus": client_cpus, "num_gpus": client_gpus},
        "init_args": {"log_to_driver": False, "include_dashboard": False},
    }
    if address:
        join_cluster(address, client_cpus, client_gpus)
    try:
        run_simulation(
            server_app=make_server_app(run_config),
            client_app=make_client_app(run_config),
            num_supernodes=num_clients,
            backend_config=backend,
        )
    finally:
        if address:
            import ray

            if ray.is_initialized():  # leave the cluster; its nodes keep running
                ray.shutdown()
