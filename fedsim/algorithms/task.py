"""Tasks: what a federation learns, found by name through entry points like strategies.

A task owns what differs between workloads, so that the engine never asks which one it
runs: its checks of the scenario (and of the strategy it needs), the data and the model a
process builds (:class:`Workload`), the metrics a run is summarised by and what the CLI
prints at the end.  ``scenario.task`` names it.  fedsim publishes two:

* ``classification`` (:mod:`fedsim.algorithms.classification`) — the scenario's dataset, partitioned
  over the clients, and the backbone;
* ``bilinear`` (``protocols.masha_problems``) — MASHA's distributed bilinear saddle point:
  no dataset and no network; the strategies that solve variational inequalities build
  their problem from ``scenario.problem``.

A researcher's package adds a task the same way it adds a strategy::

    [project.entry-points."fedsim.tasks"]
    mine = "my_package.task:TASK"

where ``TASK`` is an instance of a :class:`Task` subclass (``tests/plugin_example``
publishes one).
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any, ClassVar

from fedsim.errors import ConfigError, UserError

if TYPE_CHECKING:
    from torch import nn

    from fedsim.config import RunConfig
    from fedsim.data.federation import Federation

log = logging.getLogger(__name__)

GROUP = "fedsim.tasks"


@dataclass(frozen=True)
class Workload:
    """What one process builds for a run: the federation and the round-0 model.

    Both are ``None`` for a task without data or network (a synthetic problem, whose
    strategy builds what it solves).
    """

    fed: Federation | None = None
    model: nn.Module | None = None

    @property
    def domains(self) -> list[str]:
        return list(self.fed.data.domains) if self.fed is not None else []


class Task(ABC):
    """A workload kind.  Subclasses are stateless: one instance serves every run."""

    #: whether clients train a network on the scenario's images (what vectorised
    #: training, ``fedsim pretrain`` and the tuning data check need)
    trains_network: ClassVar[bool] = True
    #: metrics of the last round kept in the run's summary beside ``eval/*`` and
    #: ``comm/bytes_*`` (``run.json``'s ``final``, TensorBoard's hparams)
    summary_metrics: ClassVar[tuple[str, ...]] = ()
    #: metrics the CLI prints after a run (name, format), in this order, when logged
    headline_metrics: ClassVar[tuple[tuple[str, str], ...]] = (
        ("eval/acc", ".4f"),
        ("eval/global_acc", ".4f"),
    )

    @abstractmethod
    def validate(self, cfg: RunConfig) -> None:
        """Checks that need no data (raise :class:`~fedsim.errors.ConfigError` with the
        key path inside the scenario, e.g. ``problem.dim: must be >= 1, got 0``)."""

    def check_strategy(self, cfg: RunConfig) -> str | None:
        """Why ``cfg.strategy`` cannot run this task (one line), or None."""
        return None

    @abstractmethod
    def workload(self, cfg: RunConfig) -> Workload:
        """The federation and the round-0 model of ``cfg`` (the same in every process)."""

    def headline(self, final: Mapping[str, float]) -> str:
        """The CLI's one-line result, e.g. ``eval/acc=0.9120 eval/global_acc=0.9050``."""
        return " ".join(
            f"{key}={final[key]:{fmt}}" for key, fmt in self.headline_metrics if key in final
        )


@lru_cache(maxsize=1)
def tasks() -> dict[str, Task]:
    """Every registered task by name (entry points of :data:`GROUP`), sorted."""
    found: dict[str, Task] = {}
    for ep in entry_points(group=GROUP):
        try:
            task = ep.load()
        except Exception as e:  # a broken plug-in must not break the others
            log.warning("task plug-in %s (%s) failed to load: %s", ep.name, ep.value, e)
            continue
        if not isinstance(task, Task):
            log.warning(
                "task plug-in %s (%s) is not a fedsim.algorithms.task.Task", ep.name, ep.value
            )
            continue
        found[ep.name] = task
    return dict(sorted(found.items()))


def get_task(name: str) -> Task:
    """The task called ``name``; an unknown name is a one-line config error."""
    found = tasks()
    if name not in found:
        raise ConfigError(f"task: unknown '{name}' (allowed: {', '.join(found)})")
    return found[name]


def task_of(cfg: RunConfig) -> Task:
    """The task of a run (``scenario.task``)."""
    return get_task(cfg.scenario.task)


def load_workload(cfg: RunConfig) -> Workload:
    """The workload of a run's task (:meth:`Task.workload`)."""
    return task_of(cfg).workload(cfg)


def scenario_error(e: UserError, cfg: RunConfig) -> UserError:
    """``e`` (a bad value found while loading a scenario's data) naming the scenario."""
    where = cfg.scenario.file or f"scenario '{cfg.scenario.name}'"
    return type(e)(f"{where}: scenario.{e}")


def describe(final: Mapping[str, Any], cfg: RunConfig) -> str:
    """The CLI's result line for a run's final metrics."""
    return task_of(cfg).headline({k: v for k, v in final.items() if isinstance(v, int | float)})
