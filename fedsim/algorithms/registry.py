"""The algorithm registry: strategies are found by name, through Python entry points.

An algorithm is an :class:`AlgorithmSpec` — its config dataclass, its server half and its
client half (named by import path, so that listing the registry stays cheap) — published
under the entry-point group ``fedsim.strategies``.  fedsim's own algorithms are published
by fedsim's ``pyproject.toml``; a researcher's installed package adds ``strategy=mine``
the same way, without editing fedsim::

    [project.entry-points."fedsim.strategies"]
    mine = "my_package.algo:SPEC"

The core never imports ``strategies`` or ``clients``: it only loads what the entry points
name.  Compressors are found the same way, under :data:`CHANNEL_GROUP`
(:func:`fedsim.algorithms.channels.channel_classes`); :func:`plugins` loads either group.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from importlib.metadata import entry_points
from typing import Any

from fedsim.config import StrategyConfig
from fedsim.errors import ConfigError

log = logging.getLogger(__name__)

GROUP = "fedsim.strategies"
CHANNEL_GROUP = "fedsim.channels"  # compressors: fedsim.algorithms.channels.Channel subclasses
DEFAULT_CLIENT = "fedsim.algorithms.client:Client"


@dataclass(frozen=True)
class AlgorithmSpec:
    """How a strategy name maps to code.

    ``server`` is ``"module:Class"`` of a class taking a
    :class:`~fedsim.algorithms.strategy.ServerContext` (a
    :class:`fedsim.algorithms.strategy.Strategy`, or any
    factory returning a ``flwr.serverapp.strategy.Strategy``); ``client`` is
    ``"module:Class"`` of a :class:`fedsim.algorithms.client.Client` subclass.
    ``native_channels``: the algorithm *is* a compression method and applies
    ``channel.up`` / ``channel.down`` itself (MASHA); the channel wrappers then pass its
    messages through unchanged (bytes are still counted).
    """

    config: type[StrategyConfig]
    server: str
    client: str = DEFAULT_CLIENT
    summary: str = ""
    native_channels: bool = False
    exact_records: tuple[str, ...] = ()  # array records the channels never compress

    def server_class(self) -> Any:
        return load_object(self.server)

    def client_class(self) -> Any:
        return load_object(self.client)


def load_object(path: str) -> Any:
    """The object named ``"module:attribute"``."""
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


def plugins(group: str, accept: Callable[[Any], bool], what: str) -> dict[str, Any]:
    """The objects the entry points of ``group`` name, by entry-point name, sorted.

    An entry point that fails to import, or whose object ``accept`` refuses, is left out
    with a warning naming it and ``what`` it should have been: a broken plug-in must not
    break the others.
    """
    found: dict[str, Any] = {}
    for ep in entry_points(group=group):
        try:
            obj = ep.load()
        except Exception as e:
            log.warning("plug-in %s (%s) failed to load: %s", ep.name, ep.value, e)
            continue
        if not accept(obj):
            log.warning("plug-in %s (%s) is not %s", ep.name, ep.value, what)
            continue
        found[ep.name] = obj
    return dict(sorted(found.items()))


@lru_cache(maxsize=1)
def algorithms() -> dict[str, AlgorithmSpec]:
    """Every registered algorithm by name (entry points of :data:`GROUP`), sorted."""
    return plugins(GROUP, lambda obj: isinstance(obj, AlgorithmSpec), "an AlgorithmSpec")


def get(name: str) -> AlgorithmSpec:
    """The algorithm called ``name``; an unknown name is a one-line config error."""
    specs = algorithms()
    if name not in specs:
        raise ConfigError(f"strategy: unknown '{name}' (allowed: {', '.join(specs)})")
    return specs[name]
