"""A plug-in task for fedsim: distributed strongly convex quadratic minimisation.

Client ``m`` holds ``f_m(z) = 1/2 z^T A_m z - b_m^T z`` with ``A_m`` symmetric positive
definite; the federation minimises their mean, whose gradient ``F_m(z) = A_m z - b_m`` is a
strongly monotone operator, so the variational-inequality strategies (``eg``, ``masha1``,
``masha2``) solve it.  The solution is ``z* = (mean A_m)^-1 mean b_m``; the task logs
``quadratic/rel_dist = ||z - z*||^2 / ||z0 - z*||^2``.  It reads ``scenario.problem.dim``
(the dimension) and ``scenario.problem.lam`` (the smallest eigenvalue added to each A_m).

Published by this package's ``pyproject.toml`` under the entry-point group
``fedsim.tasks``; fedsim itself is not edited.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from fedsim.errors import ConfigError
from protocols.masha_problems import Layout
from protocols.masha_task import VITask


class QuadraticProblem:
    """The operators, the solution and the metric of one seeded problem."""

    def __init__(self, dim: int, mu: float, num_clients: int, seed: int) -> None:
        rng = np.random.default_rng([seed, 7])
        q = rng.standard_normal((num_clients, dim, dim)) / np.sqrt(dim)
        self.A = q @ q.transpose(0, 2, 1) + mu * np.eye(dim)
        self.b = rng.standard_normal((num_clients, dim))
        self.layout = Layout({"z": (dim,)})
        self.z_star = np.linalg.solve(self.A.mean(0), self.b.mean(0))

    def z0(self) -> np.ndarray:
        return np.zeros(self.layout.dim)

    def prox(self, z: np.ndarray) -> np.ndarray:
        return z  # unconstrained

    def lipschitz(self) -> tuple[float, np.ndarray]:
        per_client = np.array([np.linalg.eigvalsh(a)[-1] for a in self.A])
        return float(np.linalg.eigvalsh(self.A.mean(0))[-1]), per_client

    def metrics(self, z: np.ndarray, z0: np.ndarray) -> dict[str, float]:
        gap = float(np.sum((z - self.z_star) ** 2) / np.sum((z0 - self.z_star) ** 2))
        return {"quadratic/rel_dist": gap}

    def full(self, pid: int, z: np.ndarray) -> np.ndarray:
        return self.A[pid] @ z - self.b[pid]

    def pair(self, pid: int, z1: np.ndarray, z2: np.ndarray, gen: Any) -> tuple[Any, Any]:
        return self.full(pid, z1), self.full(pid, z2)


class Quadratic(VITask):
    """``scenario.task=quadratic``."""

    summary_metrics: ClassVar[tuple[str, ...]] = ("quadratic/rel_dist",)
    headline_metrics: ClassVar[tuple[tuple[str, str], ...]] = (("quadratic/rel_dist", ".3g"),)

    def validate(self, cfg: Any) -> None:
        if cfg.scenario.problem.dim < 1:
            raise ConfigError(f"problem.dim: must be >= 1, got {cfg.scenario.problem.dim}")
        if cfg.scenario.problem.lam <= 0:
            raise ConfigError(f"problem.lam: must be > 0, got {cfg.scenario.problem.lam}")

    def problem(self, run: Any) -> QuadraticProblem:
        """Built once per process and run (``run.memo``): every device asks at every message."""
        p, n, seed = run.cfg.scenario.problem, run.cfg.scenario.num_clients, run.cfg.seed
        return run.memo("quadratic", lambda: QuadraticProblem(p.dim, p.lam, n, seed))


TASK = Quadratic()
