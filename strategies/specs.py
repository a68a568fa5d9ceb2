"""The :class:`~fedsim.algorithms.registry.AlgorithmSpec` of every algorithm fedsim ships.

``pyproject.toml`` publishes each one under the entry-point group ``fedsim.strategies``
(``fedavg = "strategies.specs:FEDAVG"``, ...).  Classes are named by import path, so
loading the registry imports only the config dataclasses.
"""

from __future__ import annotations

from fedsim.algorithms.registry import AlgorithmSpec
from protocols.fedavg import FedAvgConfig
from protocols.fedbn import FedBNConfig
from protocols.fedossl import (
    FedoSSLConfig,
    FedoSSLLSConfig,
    FedoSSLNoCalibConfig,
    FedoSSLOrcaConfig,
)
from protocols.fedprox import FedProxConfig
from protocols.flower import (
    BulyanConfig,
    FedAdagradConfig,
    FedAdamConfig,
    FedAvgMConfig,
    FedMedianConfig,
    FedTrimmedAvgConfig,
    FedYogiConfig,
    KrumConfig,
    MultiKrumConfig,
    QFedAvgConfig,
)
from protocols.fraug import FRAugConfig
from protocols.masha import ExtragradientConfig, Masha2Config, MashaConfig, NaiveEGConfig
from protocols.scaffold import ScaffoldConfig

FEDAVG = AlgorithmSpec(FedAvgConfig, "strategies.fedavg:FedAvg", summary="federated averaging")
FEDPROX = AlgorithmSpec(
    FedProxConfig,
    "strategies.fedprox:FedProx",
    "clients.fedprox:FedProxClient",
    "FedAvg + client proximal term (strategy.mu)",
)
FEDBN = AlgorithmSpec(
    FedBNConfig,
    "strategies.fedbn:FedBN",
    "clients.fedbn:FedBNClient",
    "FedAvg with client-local batch norm",
)
SCAFFOLD = AlgorithmSpec(
    ScaffoldConfig,
    "strategies.scaffold:Scaffold",
    "clients.scaffold:ScaffoldClient",
    "SCAFFOLD: server and client control variates (strategy.server_lr)",
)
FRAUG = AlgorithmSpec(
    FRAugConfig,
    "strategies.fraug:FRAug",
    "clients.fraug:FRAugClient",
    "FRAug: shared generator + local RTNet feature augmentation",
)
_FEDOSSL = ("strategies.fedossl:FedoSSL", "clients.fedossl:FedoSSLClient")
_OPEN_WORLD = ("fedossl.local", "fedossl.global")  # centroid statistics travel exactly
FEDOSSL = AlgorithmSpec(
    FedoSSLConfig,
    *_FEDOSSL,
    "FedoSSL: open-world semi-supervised FL (centroid calibration + pseudo-labels; public code)",
    exact_records=_OPEN_WORLD,
)
FEDOSSL_ORCA = AlgorithmSpec(
    FedoSSLOrcaConfig,
    *_FEDOSSL,
    "baseline: FedAvg with ORCA's local objective (FedoSSL without L_S, calibration)",
    exact_records=_OPEN_WORLD,
)
FEDOSSL_LS = AlgorithmSpec(
    FedoSSLLSConfig,
    *_FEDOSSL,
    "ablation: FedoSSL + the paper's suppressed loss L_S (commented out in the code)",
    exact_records=_OPEN_WORLD,
)
FEDOSSL_NO_CALIB = AlgorithmSpec(
    FedoSSLNoCalibConfig,
    *_FEDOSSL,
    "ablation: FedoSSL + L_S without calibration and pseudo-labels (ORCA + L_S)",
    exact_records=_OPEN_WORLD,
)
_MASHA_CLIENT = "clients.masha:MashaClient"
MASHA1 = AlgorithmSpec(
    MashaConfig,
    "strategies.masha:Masha1",
    _MASHA_CLIENT,
    "MASHA1: compressed VI extragradient, unbiased compressors (RandK)",
    native_channels=True,
)
MASHA2 = AlgorithmSpec(
    Masha2Config,
    "strategies.masha:Masha2",
    _MASHA_CLIENT,
    "MASHA2: compressed VI extragradient, contractive compressors (TopK) + error feedback",
    native_channels=True,
)
EG = AlgorithmSpec(
    ExtragradientConfig,
    "strategies.masha:Extragradient",
    _MASHA_CLIENT,
    "baseline: distributed extragradient (MASHA1 with tau = 0)",
    native_channels=True,
)
NAIVE_EG = AlgorithmSpec(
    NaiveEGConfig,
    "strategies.masha:NaiveCompressedEG",
    _MASHA_CLIENT,
    "baseline: extragradient compressing the operators (no reference point)",
    native_channels=True,
)


def _flower(config: type, what: str) -> AlgorithmSpec:
    return AlgorithmSpec(config, "strategies.flower:build", summary=f"Flower's {what}")


FEDADAM = _flower(
    FedAdamConfig, "FedAdam (adaptive server optimiser; eta, eta_l, beta_1, beta_2, tau)"
)
FEDYOGI = _flower(
    FedYogiConfig, "FedYogi (adaptive server optimiser; eta, eta_l, beta_1, beta_2, tau)"
)
FEDADAGRAD = _flower(FedAdagradConfig, "FedAdagrad (adaptive server optimiser; eta, eta_l, tau)")
FEDAVGM = _flower(FedAvgMConfig, "FedAvgM (server momentum; server_learning_rate, server_momentum)")
FEDMEDIAN = _flower(FedMedianConfig, "FedMedian (coordinate-wise median)")
FEDTRIMMEDAVG = _flower(FedTrimmedAvgConfig, "FedTrimmedAvg (trimmed mean; beta)")
KRUM = _flower(KrumConfig, "Krum (Byzantine-robust selection; num_malicious_nodes)")
MULTIKRUM = _flower(MultiKrumConfig, "Multi-Krum (num_malicious_nodes, num_nodes_to_select)")
BULYAN = _flower(BulyanConfig, "Bulyan (Byzantine-robust; num_malicious_nodes)")
QFEDAVG = _flower(QFedAvgConfig, "q-FedAvg (fair aggregation; q, client_learning_rate)")
