"""Server-side strategies, one module per algorithm, and their registry.

A strategy is registered by name with its config dataclass, its server class and its
client class; ``fedsim run strategy=<name>`` looks it up here.  Classes are named by
import path so that importing the registry stays cheap.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

from fedsim.config import FedAvgConfig, FedBNConfig, FedProxConfig, StrategyConfig


@dataclass(frozen=True)
class StrategySpec:
    """How a strategy name maps to code."""

    config: type[StrategyConfig]
    server: str  # "module:Class" of the server strategy
    client: str  # "module:Class" of the client
    summary: str

    def server_class(self) -> Any:
        return _load(self.server)

    def client_class(self) -> Any:
        return _load(self.client)


def _load(path: str) -> Any:
    module, name = path.split(":")
    return getattr(importlib.import_module(module), name)


REGISTRY: dict[str, StrategySpec] = {
    "fedavg": StrategySpec(
        FedAvgConfig, "strategies.fedavg:FedAvg", "clients.base:Client", "federated averaging"
    ),
    "fedprox": StrategySpec(
        FedProxConfig,
        "strategies.fedprox:FedProx",
        "clients.fedprox:FedProxClient",
        "FedAvg + client proximal term",
    ),
    "fedbn": StrategySpec(
        FedBNConfig,
        "strategies.fedbn:FedBN",
        "clients.fedbn:FedBNClient",
        "FedAvg with client-local batch norm",
    ),
}
