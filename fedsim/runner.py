"""Start an experiment on the configured runtime, after checking everything that can fail.

Pre-flight (config validation, data loading, partitioning, model construction) happens
before the run directory is touched, so a bad input leaves nothing behind; an existing
complete run is never overwritten unless ``overwrite=true``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from fedsim import checkpoint as ckpt_io
from fedsim.app import CONFIG_KEY, RUN_DIR_KEY, make_client_app, make_server_app
from fedsim.checkpoint import CHECKPOINT_FILE
from fedsim.conf import to_json, to_plain, validate
from fedsim.config import RunConfig
from fedsim.errors import ConfigError, UserError
from fedsim.federation import load_federation
from fedsim.logs import attach_log_file, detach_log_file
from fedsim.modelzoo import initial_model, resolve_device
from fedsim.paths import run_dir_for
from fedsim.tracking import STATUS_FILE, read_status

log = logging.getLogger(__name__)


def preflight(cfg: RunConfig) -> Path:
    """Validate, load the federation and build the model once; return the run directory."""
    validate(cfg)
    resolve_device(cfg.device)
    if cfg.scenario.problem.kind == "classification":  # synthetic problems have no data
        try:
            fed = load_federation(cfg.scenario, cfg.seed)
        except UserError as e:  # say which scenario file the bad value came from
            where = cfg.scenario.file or f"scenario '{cfg.scenario.name}'"
            raise type(e)(f"{where}: scenario.{e}") from None
        initial_model(cfg.backbone, fed.data.input_shape, fed.data.num_classes, cfg.seed)
    run_dir = run_dir_for(cfg)
    _check_creatable(run_dir)
    if cfg.resume:  # refuse a bad resume before anything in the run directory changes
        path = run_dir / CHECKPOINT_FILE
        ckpt_io.check_compatible(ckpt_io.load(path), to_plain(cfg), path)
        return run_dir
    state = read_status(run_dir)
    if state is not None and not cfg.overwrite:
        if state != "complete":
            log.warning("replacing the %s run in %s", state, run_dir)
            return run_dir
        raise UserError(
            f"output_dir: {run_dir} already holds a {state} run; "
            "pass overwrite=true to replace it, or choose another output_dir/experiment"
        )
    return run_dir


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
    """Run one experiment; returns the final record written to ``run.json``."""
    run_dir = preflight(cfg)
    if run_dir.exists() and not cfg.resume:  # allowed: overwrite=true, or an unfinished run
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    handler = attach_log_file(run_dir)
    import torch

    log.info("process %d, %d torch thread(s)", os.getpid(), torch.get_num_threads())
    run_config = {CONFIG_KEY: to_json(cfg), RUN_DIR_KEY: str(run_dir)}
    logging.getLogger("flwr").setLevel(logging.WARNING)
    try:
        if cfg.runtime.name == "inline":
            from fedsim.runtime.inline import run_inline

            run_inline(
                make_server_app(),
                make_client_app(),
                cfg.scenario.num_clients,
                run_config,
                workers=cfg.runtime.workers,
                threads=cfg.runtime.threads,
            )
        elif cfg.runtime.name == "ray":
            from fedsim.runtime.ray import run_ray

            run_ray(
                cfg.scenario.num_clients,
                run_config,
                cfg.runtime.client_cpus,
                cfg.runtime.client_gpus,
                cfg.runtime.address,
            )
        else:
            raise ConfigError(f"runtime.name: unknown '{cfg.runtime.name}' (allowed: inline, ray)")
    finally:
        detach_log_file(handler)
    record = json.loads((run_dir / STATUS_FILE).read_text())
    if record.get("status") != "complete":
        raise UserError(
            f"run did not complete (status: {record.get('status')}); see {run_dir / 'fedsim.log'}"
        )
    record["run_dir"] = str(run_dir)
    return record
