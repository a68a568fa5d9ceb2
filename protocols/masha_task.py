"""What a MASHA-family strategy solves: the tasks that pose a variational inequality.

The strategies of :mod:`strategies.masha` (MASHA1/MASHA2, EG, naive EG) solve a
monotone variational inequality given by a :class:`VIProblem`: per-client operators
``F_m`` on a flat vector ``z``, a proximal step, metrics.  Where the problem comes from
depends on the run's task (:mod:`fedsim.algorithms.task`):

* a :class:`VITask` — the ``bilinear`` saddle point of the spec (:data:`BILINEAR`), or a
  plug-in task — poses the problem itself and has no data or network;
* on ``classification`` the strategies play adversarial training of the backbone as a
  min-max game (:class:`~protocols.masha_problems.AdversarialVI`) on the task's data.

Every process builds the same problem from the run's seed; nothing is exchanged.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import numpy as np

from fedsim.algorithms.task import Task, Workload, task_of
from fedsim.engine.context import RunContext, context_for
from fedsim.errors import ConfigError
from protocols.masha_problems import AdversarialVI, BilinearVI, Layout, make_bilinear

if TYPE_CHECKING:
    import torch

    from fedsim.config import RunConfig


class VIProblem(Protocol):
    """What a VI strategy and its devices need of a problem."""

    layout: Layout

    def z0(self) -> np.ndarray: ...

    def prox(self, z: np.ndarray) -> np.ndarray: ...

    def lipschitz(self) -> tuple[float, np.ndarray] | None:
        """``(L, L_m per client)`` when known (MASHA derives its step from them)."""

    def metrics(self, z: np.ndarray, z0: np.ndarray) -> dict[str, float]: ...

    def full(self, pid: int, z: np.ndarray) -> np.ndarray:
        """Client ``pid``'s full operator ``F_m(z)``."""

    def pair(
        self, pid: int, z1: np.ndarray, z2: np.ndarray, gen: torch.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        """Client ``pid``'s (stochastic) operator at two points, same mini-batch."""


class VITask(Task):
    """A task that poses a variational inequality; only strategies whose config says
    ``solves_problems`` (the MASHA family) can run it."""

    trains_network: ClassVar[bool] = False

    @abstractmethod
    def problem(self, run: RunContext) -> VIProblem:
        """The run's problem; build it once per process with ``run.memo`` (every device
        asks for it at every message)."""

    def workload(self, cfg: RunConfig) -> Workload:
        return Workload()  # no dataset, no network: the strategy builds the problem

    def check_strategy(self, cfg: RunConfig) -> str | None:
        from fedsim.algorithms.registry import algorithms

        specs = algorithms()
        if specs[cfg.strategy.name].config.solves_problems:
            return None
        allowed = ", ".join(n for n, s in specs.items() if s.config.solves_problems)
        return f"it solves no variational inequality (allowed: {allowed or 'none registered'})"


class Bilinear(VITask):
    """The distributed bilinear saddle point of the spec (section 7), ``scenario.problem``."""

    summary_metrics: ClassVar[tuple[str, ...]] = ("masha/rel_dist",)
    headline_metrics: ClassVar[tuple[tuple[str, str], ...]] = (("masha/rel_dist", ".3g"),)

    def validate(self, cfg: RunConfig) -> None:
        pr = cfg.scenario.problem
        checks = (
            (pr.dim >= 1, f"problem.dim: must be >= 1, got {pr.dim}"),
            (pr.lam >= 0, f"problem.lam: must be >= 0, got {pr.lam}"),
            (
                pr.similarity >= 0,
                f"problem.similarity: must be >= 0 or inf (independent A_m), got {pr.similarity}",
            ),
            (
                pr.condition == 0 or (pr.condition > 1 and pr.lam > 0),
                f"problem.condition: must be 0 (use problem.scale) or > 1 with problem.lam > 0, "
                f"got {pr.condition} (lam {pr.lam})",
            ),
        )
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)

    def problem(self, run: RunContext) -> BilinearVI:
        s = run.cfg.scenario
        return run.memo(  # with its solution, computed once
            "masha.bilinear",
            lambda: BilinearVI(make_bilinear(s.problem, s.num_clients, run.cfg.seed)),
        )


BILINEAR = Bilinear()


def server_problem(cfg: RunConfig) -> VIProblem:
    """The problem of a run as the server needs it (solution, test set, metrics)."""
    task, run = task_of(cfg), context_for(cfg)
    if isinstance(task, VITask):
        return task.problem(run)
    if run.workload().model is None:
        return _adversarial(cfg, None, None)  # refused there, with the reason
    return _adversarial(cfg, run.fresh_model(), run.workload().fed)


def client_problem(cfg: RunConfig, env: Any) -> VIProblem:
    """The problem as a device needs it (its operator); ``env`` is a ClientEnv."""
    task = task_of(cfg)
    if isinstance(task, VITask):
        return task.problem(env.run)
    return _adversarial(cfg, env.model, env.fed, env.init_state)


def _adversarial(cfg: RunConfig, model: Any, fed: Any, init: Any = None) -> AdversarialVI:
    """Adversarial training of the task's backbone on its data (a min-max game)."""
    if model is None or fed is None:
        raise ConfigError(
            f"scenario.task: '{cfg.scenario.task}' has neither data nor network and poses "
            f"no variational inequality; strategy '{cfg.strategy.name}' cannot run it"
        )
    if init is None:
        init = {k: v.clone() for k, v in model.state_dict().items()}
    s = cfg.strategy
    return AdversarialVI(
        model,
        init,
        fed.data.input_shape,
        float(getattr(s, "epsilon", 0.3)),
        int(getattr(s, "batch_size", 32)),
        fed,
    )
