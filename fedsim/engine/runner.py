"""Start an experiment on the configured runtime, after checking everything that can fail.

Pre-flight (config validation, data loading, partitioning, model construction, the
algorithm's server half) happens before the run directory is touched, so a bad input
leaves nothing behind.  Then the run directory is locked, and an existing run is replaced
only by a new run that completed its first round (``overwrite=true``); an interrupted run
is never restarted silently.  See docs/reliability.md.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

from fedsim.config import RunConfig
from fedsim.config.paths import run_dir_for
from fedsim.engine import checkpoint as ckpt_io
from fedsim.engine.app import CONFIG_KEY, RUN_DIR_KEY, make_client_app, make_server_app
from fedsim.engine.checkpoint import CHECKPOINT_FILE
from fedsim.engine.conf import to_json, to_plain
from fedsim.engine.context import context_for
from fedsim.errors import ConfigError, RunFailed, UserError
from fedsim.models.modelzoo import resolve_device
from fedsim.runlock import acquire, begin_staging, clean_leftovers, end_staging
from fedsim.tracking.callbacks import STATUS_FILE
from fedsim.tracking.logs import attach_log_file, detach_log_file
from fedsim.tracking.runstate import Target, check_target, describe_os_error, record_fault

log = logging.getLogger(__name__)


def preflight(cfg: RunConfig) -> Path:
    """Every check a run can make, before its run directory is touched; returns it.

    Validates the configuration, loads the federation, builds the model and the server
    half of the algorithm (whose :meth:`~fedsim.algorithms.strategy.Strategy.check_initial` sees the
    initial arrays), checks the output directory can be made, a resume's checkpoint, and
    what the directory holds (:func:`fedsim.tracking.runstate.check_target`).
    """
    ctx = context_for(cfg)
    ctx.check()  # validated once per process and run
    resolve_device(cfg.device)
    _check_machine(cfg)
    work = ctx.workload()  # the task's data and model (none for a synthetic problem)
    _check_strategy(cfg, work.model, work.domains)
    run_dir = run_dir_for(cfg)
    _check_creatable(run_dir)
    if cfg.resume:  # refuse a bad resume before anything in the run directory changes
        path = run_dir / CHECKPOINT_FILE
        ckpt_io.check_compatible(ckpt_io.load(path), to_plain(cfg), path)
    check_target(run_dir, cfg.resume, cfg.overwrite)
    return run_dir


def _check_machine(cfg: RunConfig) -> None:
    """A private Ray instance lives on this machine: a ClientApp that needs more CPUs or
    GPUs than it has would never be scheduled (Ray waits for ever)."""
    rt = cfg.runtime
    if rt.name != "ray" or rt.address:
        return
    cpus = os.cpu_count() or 1
    if rt.client_cpus > cpus:
        raise ConfigError(
            f"runtime.client_cpus: {rt.client_cpus:g} CPUs per ClientApp, but this machine has "
            f"{cpus}; lower it, or join a larger cluster with runtime.address"
        )
    if rt.client_gpus > 0:
        import torch

        gpus = torch.cuda.device_count()
        if rt.client_gpus > gpus:
            raise ConfigError(
                f"runtime.client_gpus: {rt.client_gpus:g} GPUs per ClientApp, but this machine "
                f"has {gpus}; lower it, or join a cluster with runtime.address"
            )


def _check_strategy(cfg: RunConfig, model: Any, domains: list[str]) -> None:
    """Build the server half as the ServerApp will, and let it check the initial arrays."""
    from fedsim.engine.experiment import build_strategy
    from fedsim.records import arrays_from_state

    node_of = {pid: pid for pid in range(cfg.scenario.num_clients)}
    strategy = build_strategy(cfg, node_of, model, domains)
    arrays = strategy.initial_arrays()
    if arrays is None and model is not None:
        arrays = arrays_from_state(model.state_dict())
    if arrays is not None:
        strategy.check_initial(arrays)


def _check_creatable(run_dir: Path) -> None:
    """Refuse a run directory that cannot be created, without creating anything.

    The nearest existing ancestor must be a directory in which a directory can be made
    (tried with a temporary one, removed at once: permissions alone do not tell, e.g.
    for ``/proc`` or a read-only mount).
    """
    if run_dir.is_dir():
        return
    base = run_dir
    while not base.exists() and base != base.parent:
        base = base.parent
    where = f"output_dir: cannot create {run_dir}"
    if not base.is_dir():
        raise UserError(f"{where}: {base} is not a directory; choose another output_dir")
    try:
        Path(tempfile.mkdtemp(prefix=".fedsim-check-", dir=base)).rmdir()
    except OSError as e:
        reason = e.strerror or type(e).__name__
        raise UserError(
            f"{where}: no directory can be made in {base} ({reason}); choose a writable output_dir"
        ) from None


def execute(cfg: RunConfig) -> dict[str, Any]:
    """Run one experiment; returns the final record written to ``run.json``.

    The run directory is locked for the whole run (:mod:`fedsim.runlock`); a run that
    replaces a directory is built beside it and swapped in after its first round.
    """
    run_dir = preflight(cfg)
    lock = acquire(run_dir)
    try:
        try:
            clean_leftovers(run_dir)  # first: it may put back a directory a kill left aside
        except OSError as e:
            raise UserError(f"output_dir: cannot tidy {run_dir} ({describe_os_error(e)})") from None
        target = check_target(run_dir, cfg.resume, cfg.overwrite, own=lock.info)
        try:
            where = begin_staging(run_dir) if target is Target.REPLACE else run_dir
            where.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserError(
                f"output_dir: cannot create {run_dir} ({describe_os_error(e)})"
            ) from None
        _launch_in(cfg, where, run_dir, staged=target is Target.REPLACE)
        try:
            record = json.loads((run_dir / STATUS_FILE).read_text())
        except (OSError, ValueError) as e:
            raise RunFailed(f"run.json of {run_dir} cannot be read after the run ({e})") from None
    finally:
        lock.release()
    if record.get("status") != "complete":
        reason = f": {record['reason']}" if record.get("reason") else ""
        raise RunFailed(
            f"run did not complete (status: {record.get('status')}{reason}); "
            f"see {run_dir / 'fedsim.log'}"
        )
    record["run_dir"] = str(run_dir)
    return record


def _launch_in(cfg: RunConfig, where: Path, run_dir: Path, staged: bool) -> None:
    """Run on the configured runtime, writing to ``where``; an I/O fault becomes a
    RunFailed after the directory's status says ``failed``."""
    handler = attach_log_file(where)
    import torch

    log.info("process %d, %d torch thread(s)", os.getpid(), torch.get_num_threads())
    run_config = {CONFIG_KEY: to_json(cfg), RUN_DIR_KEY: str(where)}
    logging.getLogger("flwr").setLevel(logging.WARNING)
    failure: RunFailed | None = None
    try:
        _launch(cfg, run_config)
    except OSError as e:
        promoted = not staged or where.is_symlink()
        failure = (
            record_fault(run_dir, e)
            if promoted
            else RunFailed(
                f"run failed before its first round completed: {describe_os_error(e)} "
                f"(the previous run in {run_dir} is unchanged)"
            )
        )
    finally:
        detach_log_file(handler)
        if staged and not end_staging(where):
            log.warning("the new run ended before its first round; %s is unchanged", run_dir)
    if failure is not None:
        raise failure


def _launch(cfg: RunConfig, run_config: dict[str, Any]) -> None:
    if cfg.runtime.name == "inline":
        from fedsim.engine.runtime.inline import run_inline

        run_inline(
            make_server_app(),
            make_client_app(),
            cfg.scenario.num_clients,
            run_config,
            workers=cfg.runtime.workers,
            threads=cfg.runtime.threads,
        )
    elif cfg.runtime.name == "ray":
        from fedsim.engine.runtime.ray import run_ray

        run_ray(
            cfg.scenario.num_clients,
            run_config,
            cfg.runtime.client_cpus,
            cfg.runtime.client_gpus,
            cfg.runtime.address,
        )
    else:
        raise ConfigError(f"runtime.name: unknown '{cfg.runtime.name}' (allowed: inline, ray)")
