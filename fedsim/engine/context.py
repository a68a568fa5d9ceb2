"""One run context per process: the configuration parsed, validated and built once.

Everything a process needs for the run it takes part in hangs off a :class:`RunContext`:
the typed configuration (parsed once from the JSON the Flower apps carry, or handed over
by the runner), whether it was validated, the task's workload (federation and round-0
model, built once), the client environment, and whatever a plug-in builds once per run
(:meth:`RunContext.memo`, e.g. MASHA's problem and its solution).

A process holds one context at a time — the only cache of run state in fedsim: a run
with another configuration replaces it.  In an in-process run the runner, the server and
every simulated client share it, so the data are loaded and the model built once; worker
processes, Ray actors and SuperNodes each build their own from the same JSON, which gives
them identical objects (everything is derived from the seed).
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from fedsim.algorithms.task import Task, Workload, task_of
from fedsim.config import RunConfig
from fedsim.engine.conf import from_json, to_json, validate

if TYPE_CHECKING:
    from torch import nn

T = TypeVar("T")


@dataclass(eq=False)
class RunContext:
    """A run's configuration and what this process built from it (see module docstring)."""

    cfg: RunConfig
    key: str  # the configuration's JSON (fedsim.engine.conf.to_json): what identifies the run
    aliases: set[str] = field(default_factory=set)  # other texts naming it (overrides)
    validated: bool = False
    _workload: Workload | None = None
    _memo: dict[str, Any] = field(default_factory=dict)
    _lock: threading.RLock = field(default_factory=threading.RLock)

    @property
    def task(self) -> Task:
        return task_of(self.cfg)

    def check(self) -> None:
        """Validate the configuration unless this context already did."""
        if not self.validated:
            validate(self.cfg)
            self.validated = True

    def workload(self) -> Workload:
        """The task's federation and round-0 model, built on first use.

        The model is the pristine round-0 one: whoever trains or evaluates takes a
        :meth:`fresh_model` copy, so it is never changed.
        """
        with self._lock:
            if self._workload is None:
                self._workload = self.task.workload(self.cfg)
            return self._workload

    def fresh_model(self) -> nn.Module:
        """A private copy of the round-0 model (the workload must have one)."""
        model = self.workload().model
        if model is None:
            raise TypeError(f"scenario.task={self.cfg.scenario.task} has no network")
        return copy.deepcopy(model)

    def memo(self, name: str, build: Callable[[], T]) -> T:
        """``build()`` once per run and process, under ``name`` (a plug-in's own objects)."""
        with self._lock:
            if name not in self._memo:
                self._memo[name] = build()
            return self._memo[name]


_CURRENT: list[RunContext] = []  # at most one: this process's run
_LOCK = threading.Lock()


def _activate(key: str, parse: Callable[[], RunConfig]) -> RunContext:
    with _LOCK:
        if _CURRENT and key in (_CURRENT[0].key, *_CURRENT[0].aliases):
            return _CURRENT[0]
        cfg = parse()
        full = to_json(cfg) if key.startswith(OVERRIDES_PREFIX) else key
        if _CURRENT and _CURRENT[0].key == full:  # the same run named another way
            _CURRENT[0].aliases.add(key)
            return _CURRENT[0]
        ctx = RunContext(cfg, full, {key} - {full})
        _CURRENT[:] = [ctx]
        return ctx


#: the prefix of a run named by its overrides (``flwr run .``'s run config) instead of JSON
OVERRIDES_PREFIX = "overrides:"


def context_for(cfg: RunConfig) -> RunContext:
    """The context of ``cfg`` (this process's current one when the configuration is the
    same; otherwise a new one replaces it)."""
    return _activate(to_json(cfg), lambda: cfg)


def context_for_json(text: str) -> RunContext:
    """The context of a configuration carried as JSON (the Flower apps' run config);
    parsed only when it is not the current context's."""
    return _activate(text, lambda: from_json(text))


def context_for_overrides(overrides: str) -> RunContext:
    """The context of a run given as command-line overrides (composed and validated once)."""
    composed: list[RunConfig] = []

    def parse() -> RunConfig:
        import shlex

        from fedsim.engine.conf import compose

        composed.append(compose(shlex.split(overrides)))  # compose validates
        return composed[0]

    ctx = _activate(OVERRIDES_PREFIX + overrides, parse)
    if composed and ctx.cfg is composed[0]:
        ctx.validated = True
    return ctx
