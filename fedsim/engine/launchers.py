"""Hydra launchers for ``fedsim run -m``: what a job needs to know about its neighbours.

Hydra's default launcher runs a sweep's jobs one after another in this process;
``hydra/launcher=joblib`` (the ``hydra-joblib-launcher`` plugin) runs ``n_jobs`` of them
at once, each in a process of its own, and the cluster launchers (``hydra/launcher=ray``,
``hydra/launcher=submitit_slurm``; ``pip install 'fedsim[cluster]'``) run them on other
machines.  Every job writes its own run directory (``fedsim.engine.server.run_dir_for``), skips
a complete one and resumes the same way, so the result does not depend on the launcher.

Parallel jobs on one machine must not each start one torch thread per core: with
``runtime.threads=0`` (torch's default) a joblib job sets ``cores // n_jobs`` threads
(at least one).  The configuration recorded in ``run.json`` is left as given, so a run
resumes and compares the same whichever launcher ran it.
"""

from __future__ import annotations

import logging
import os
from typing import Any

log = logging.getLogger(__name__)


def cores() -> int:
    """CPU cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def parallel_jobs(launcher: Any, available: int) -> int:
    """How many jobs the launcher runs at once (1 for a sequential launcher).

    ``launcher`` is Hydra's ``hydra.launcher`` config; joblib's ``n_jobs`` counts as in
    joblib: ``-1`` is every core, ``-2`` every core but one, ``None`` one.
    """
    target = str(getattr(launcher, "_target_", "") or "")
    if "joblib" not in target.lower():
        return 1
    n = getattr(launcher, "n_jobs", -1)
    if n is None or n == 0:
        return 1
    n = int(n)
    return max(1, n if n > 0 else available + 1 + n)


def job_threads(launcher: Any, available: int | None = None) -> int | None:
    """Torch threads for one job of a parallel launcher; None for a sequential one."""
    available = cores() if available is None else available
    jobs = parallel_jobs(launcher, available)
    return max(1, available // jobs) if jobs > 1 else None


def limit_job_threads(cfg: Any) -> None:
    """In a job of a parallel Hydra launcher, cap torch's threads (``runtime.threads=0``
    only; an explicit value is kept)."""
    if cfg.runtime.threads:
        return
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return
    threads = job_threads(HydraConfig.get().launcher)
    if threads is None:
        return
    import torch

    torch.set_num_threads(threads)
    os.environ["OMP_NUM_THREADS"] = str(threads)  # for any process this job starts
    log.info("parallel sweep job: %d torch thread(s) of %d cores", threads, cores())
