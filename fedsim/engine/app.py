"""The Flower apps: one ``ServerApp`` and one ``ClientApp`` for every runtime.

``server_app`` and ``client_app`` (named in ``pyproject.toml``'s ``[tool.flwr.app]``)
read the experiment from ``context.run_config``:

* ``fedsim-config`` — the whole resolved configuration as JSON (what ``fedsim run``
  passes), or
* ``overrides`` — fedsim overrides as one string (``"rounds=5 strategy=fedprox"``),
  composed with Hydra exactly like ``fedsim run`` (what ``flwr run .`` passes).

``make_server_app`` / ``make_client_app`` bind a run configuration for runtimes that
cannot pass one through ``run_config`` (Flower's Python simulation entry point).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flwr.app import Context, Message
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from fedsim.algorithms.payloads import EvalIns, Identity, TrainIns
from fedsim.config import RunConfig
from fedsim.engine.context import RunContext, context_for_json, context_for_overrides
from fedsim.engine.grid import for_grid

log = logging.getLogger(__name__)

CONFIG_KEY = "fedsim-config"
OVERRIDES_KEY = "overrides"
RUN_DIR_KEY = "run-dir"
PARTITION_KEY = "partition-id"


def context_of(run_config: Mapping[str, Any]) -> RunContext:
    """This process's run context for a Flower run config (:mod:`fedsim.engine.context`)."""
    if CONFIG_KEY in run_config:
        return context_for_json(str(run_config[CONFIG_KEY]))
    return context_for_overrides(str(run_config.get(OVERRIDES_KEY, "")))


def config_from_run_config(run_config: Mapping[str, Any]) -> tuple[RunConfig, str]:
    """The typed config and its JSON from a Flower run config."""
    ctx = context_of(run_config)
    return ctx.cfg, ctx.key


def _merged(context: Context, bound: Mapping[str, Any] | None) -> dict[str, Any]:
    rc = dict(context.run_config)
    if bound:
        rc.update(bound)
    return rc


# ---------------------------------------------------------------------------- client


def _client(msg_context: Context, bound: Mapping[str, Any] | None) -> Any:
    from fedsim.algorithms.client import client_env
    from fedsim.algorithms.registry import get

    ctx = context_of(_merged(msg_context, bound))
    cfg, env = ctx.cfg, client_env(ctx)
    pid = int(msg_context.node_config[PARTITION_KEY])
    return get(cfg.strategy.name).client_class()(env, pid, msg_context.state)


def make_client_app(bound: Mapping[str, Any] | None = None) -> ClientApp:
    """A ClientApp; ``bound`` entries override the context's run config.

    Every message passes through fedsim's mods (:mod:`fedsim.algorithms.wrap.client`: channels,
    local keys, faults and attacks; :mod:`fedsim.algorithms.dp`: Flower's client-side clipping), so
    no algorithm's client can bypass them.
    """
    from fedsim.algorithms.dp import dp_mod
    from fedsim.algorithms.wrap.client import client_mods

    def config_of(context: Context) -> RunConfig:
        return config_from_run_config(_merged(context, bound))[0]

    def env_of(context: Context) -> Any:
        from fedsim.algorithms.client import client_env

        return client_env(context_of(_merged(context, bound)))

    app = ClientApp(mods=[*client_mods(config_of, env_of), dp_mod(config_of)])

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        client = _client(context, bound)
        res = client.fit(TrainIns.from_record(msg.content))
        return Message(res.to_record(), reply_to=msg)

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        client = _client(context, bound)
        res = client.evaluate(EvalIns.from_record(msg.content))
        return Message(res.to_record(), reply_to=msg)

    @app.query()
    def identify(msg: Message, context: Context) -> Message:
        return Message(Identity(int(context.node_config[PARTITION_KEY])).to_record(), reply_to=msg)

    return app


# ---------------------------------------------------------------------------- server


def make_server_app(bound: Mapping[str, Any] | None = None) -> ServerApp:
    """A ServerApp whose ``main`` runs :func:`fedsim.engine.server.run_experiment`."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        from fedsim.engine.server import run_dir_for, run_experiment

        rc = _merged(context, bound)
        cfg, _ = config_from_run_config(rc)
        run_dir = Path(str(rc[RUN_DIR_KEY])) if RUN_DIR_KEY in rc else run_dir_for(cfg)
        # the runtime's grid and run directory (the Deployment Engine's are adapted here)
        with for_grid(grid, run_dir) as (runtime_grid, runtime_dir):
            final = run_experiment(runtime_grid, cfg, runtime_dir)
        log.info("run finished: %s", {k: v for k, v in final.items() if k.startswith("eval/acc")})

    return app


server_app = make_server_app()
client_app = make_client_app()
