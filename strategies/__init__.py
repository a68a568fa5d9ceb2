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
from strategies.fedossl import (
    FedoSSLConfig,
    FedoSSLLSConfig,
    FedoSSLNoCalibConfig,
    FedoSSLOrcaConfig,
)
from strategies.fraug import FRAugConfig
from strategies.masha import ExtragradientConfig, Masha2Config, MashaConfig, NaiveEGConfig


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
    "fraug": StrategySpec(
        FRAugConfig,
        "strategies.fraug:FRAug",
        "clients.fraug:FRAugClient",
        "shared generator + local RTNet feature augmentation",
    ),
    "fedossl": StrategySpec(
        FedoSSLConfig,
        "strategies.fedossl:FedoSSL",
        "clients.fedossl:FedoSSLClient",
        "open-world semi-supervised FL: centroid calibration + pseudo-labels (public code)",
    ),
    "fedossl_orca": StrategySpec(
        FedoSSLOrcaConfig,
        "strategies.fedossl:FedoSSL",
        "clients.fedossl:FedoSSLClient",
        "baseline: FedAvg with ORCA's local objective (FedoSSL without L_S, calibration)",
    ),
    "fedossl_ls": StrategySpec(
        FedoSSLLSConfig,
        "strategies.fedossl:FedoSSL",
        "clients.fedossl:FedoSSLClient",
        "ablation: FedoSSL + the paper's suppressed loss L_S (commented out in the code)",
    ),
    "fedossl_no_calib": StrategySpec(
        FedoSSLNoCalibConfig,
        "strategies.fedossl:FedoSSL",
        "clients.fedossl:FedoSSLClient",
        "ablation: FedoSSL + L_S without calibration and pseudo-labels (ORCA + L_S)",
    ),
    "masha1": StrategySpec(
        MashaConfig,
        "strategies.masha:Masha1",
        "clients.masha:MashaClient",
        "MASHA1: compressed VI extragradient, unbiased compressors (RandK)",
    ),
    "masha2": StrategySpec(
        Masha2Config,
        "strategies.masha:Masha2",
        "clients.masha:MashaClient",
        "MASHA2: compressed VI extragradient, contractive compressors (TopK) + error feedback",
    ),
    "eg": StrategySpec(
        ExtragradientConfig,
        "strategies.masha:Extragradient",
        "clients.masha:MashaClient",
        "baseline: distributed extragradient (MASHA1 with tau = 0)",
    ),
    "naive_eg": StrategySpec(
        NaiveEGConfig,
        "strategies.masha:NaiveCompressedEG",
        "clients.masha:MashaClient",
        "baseline: extragradient compressing the operators (no reference point)",
    ),
}
