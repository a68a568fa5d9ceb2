"""The Ray runtime: Flower's Simulation Engine hosting the very same apps.

Flower 1.42's Python entry point (``flwr.simulation.run_simulation``) does not pass a run
config to the apps, so the configuration is bound into the apps by closure
(``fedsim.app.make_*_app``); the apps themselves are unchanged.  Use this runtime to
compare against Flower's own engine or to spread clients over a Ray cluster.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from fedsim.app import make_client_app, make_server_app

log = logging.getLogger(__name__)


def run_ray(
    num_clients: int, run_config: dict[str, Any], client_cpus: float = 1.0, client_gpus: float = 0.0
) -> None:
    """Run the experiment in ``run_config`` on Flower's Ray-based Simulation Engine."""
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    from flwr.simulation import run_simulation

    backend: dict[str, Any] = {
        "client_resources": {"num_cpus": client_cpus, "num_gpus": client_gpus},
        "init_args": {"log_to_driver": False, "include_dashboard": False},
    }
    run_simulation(
        server_app=make_server_app(run_config),
        client_app=make_client_app(run_config),
        num_supernodes=num_clients,
        backend_config=backend,
    )
