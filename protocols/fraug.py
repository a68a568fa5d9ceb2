"""FRAug's wire format and options, shared by ``strategies.fraug`` (server) and
``clients.fraug`` (client): the config, the schedule keys of every training message, the
generator payload, the pure schedule maths, what stays on the clients
(:func:`local_keys`) and the amount of local work (:func:`local_train`).  Import-light:
no torch (only inside :func:`local_keys`), no Flower.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fedsim.config import RunConfig, StrategyConfig, TrainConfig

if TYPE_CHECKING:
    from flwr.app import ArrayRecord
    from torch import nn

DISTANCES = ("L1", "L2", "MMD", "MMD_kernel")
NOISES = ("uniform", "gaussian")
LOCAL_BN = ("running_stats", "all")

GENERATOR_RECORD = "fraug.generator"
RHO_KEY = "fraug-rho"
LAMBDA_KEY = "fraug-lambda"


@dataclass
class FRAugConfig(StrategyConfig):
    """FRAug hyper-parameters; defaults are the official code's Digits setting (spec §7)."""

    name: str = "fraug"
    latent_dim: int = 0  # d_z, noise size; 0 = D // 2 (256 for the 512-d CNN_Digits embedding)
    lr_g: float = 0.05  # generator SGD learning rate
    lr_rt: float = 0.05  # RTNet SGD learning rate
    momentum_g: float = 0.5  # generator SGD momentum (state stays on the client)
    momentum_rt: float = 0.5  # RTNet SGD momentum (state stays on the client)
    lam_g: float = 1.0  # weight of -Dist_G (push G away from local statistics)
    lam_rt: float = 1.0  # weight of Dist_RT (keep RTNet outputs near their anchors)
    dist_g: str = "L2"  # L1 | L2 | MMD | MMD_kernel
    dist_rt: str = "MMD_kernel"  # L1 | L2 | MMD | MMD_kernel
    gamma: float = 0.002  # rho_t = exp(gamma (t - T)); 0.01 for PACS/OfficeHome in the code
    ema: float = 0.3  # prototype EMA: mu_c <- (1 - ema) mu_c + ema * batch mean
    noise: str = "uniform"  # uniform (code) | gaussian (paper)
    local_bn: str = "running_stats"  # running_stats (code) | all (FedBN-style, paper)
    use_feature_inter: bool = False  # e_hat <- rho_t e_hat + (1 - rho_t) anchor (PACS: on)
    local_iterations: int = 20  # mini-batch iterations per round when train.local_steps == 0

    def __post_init__(self) -> None:
        validate_fraug(self)


# --------------------------------------------------------------------------- pure maths


def rho_schedule(server_round: int, total_rounds: int, gamma: float) -> float:
    """``rho_t = exp(gamma (t - T))`` with ``t = server_round - 1`` (0-based) and ``T`` rounds.

    >>> round(rho_schedule(1, 300, 0.01), 4)  # 0.05 at the start of a 300-round run
    0.0498
    """
    return math.exp(gamma * ((server_round - 1) - total_rounds))


def lambda_schedule(rho: float) -> float:
    """Weight of the synthetic-embedding loss, ``lambda_t = min(0.5, rho_t)``."""
    return min(0.5, rho)


def validate_fraug(cfg: FRAugConfig) -> None:
    """Reject unknown choices and impossible values, naming the key and what is allowed."""
    from fedsim.errors import ConfigError

    for key, allowed in (
        ("dist_g", DISTANCES),
        ("dist_rt", DISTANCES),
        ("noise", NOISES),
        ("local_bn", LOCAL_BN),
    ):
        value = getattr(cfg, key)
        if value not in allowed:
            raise ConfigError(f"strategy.{key}: unknown '{value}' (allowed: {', '.join(allowed)})")
    for key in ("lr_g", "lr_rt"):
        if getattr(cfg, key) <= 0:
            raise ConfigError(f"strategy.{key}: must be > 0, got {getattr(cfg, key)}")
    if not 0.0 < cfg.ema <= 1.0:
        raise ConfigError(f"strategy.ema: must be in (0, 1], got {cfg.ema}")
    if cfg.latent_dim < 0 or cfg.local_iterations < 0:
        raise ConfigError("strategy.latent_dim and strategy.local_iterations must be >= 0")


def fraug_config(cfg: RunConfig) -> FRAugConfig:
    """The typed strategy config of a FRAug run."""
    s = cfg.strategy
    if not isinstance(s, FRAugConfig):
        raise TypeError(f"strategy: '{s.name}' is not a FRAug configuration")
    return s


def local_keys(model: nn.Module, cfg: FRAugConfig) -> set[str]:
    """What never leaves a FRAug client, chosen by module type: the batch-norm running
    statistics (the code's ``model_share='no_bn_running_stats'``: the affine weights are
    averaged), or every batch-norm tensor with ``local_bn=all`` (FedBN-style, the paper).
    The server sends and averages the rest."""
    from fedsim.models.backbones import bn_running_stat_keys, bn_state_keys

    return bn_state_keys(model) if cfg.local_bn == "all" else bn_running_stat_keys(model)


def local_train(train: TrainConfig, cfg: FRAugConfig) -> TrainConfig:
    """The ``train.*`` of a client's round: ``local_iterations`` mini-batch steps when
    ``train.local_steps`` is 0 (the code counts local work in iterations), ``train``
    itself otherwise (``train.local_steps=N`` wins; ``local_iterations=0``: epochs).

    >>> local_train(TrainConfig(), FRAugConfig(local_iterations=20)).local_steps
    20
    >>> local_train(TrainConfig(local_steps=4), FRAugConfig()).local_steps
    4
    """
    if train.local_steps == 0 and cfg.local_iterations > 0:
        return dataclasses.replace(train, local_steps=cfg.local_iterations)
    return train


# --------------------------------------------------------------------------- payload


@dataclass(frozen=True)
class GeneratorPayload:
    """The shared generator's complete state dict, in both directions."""

    arrays: ArrayRecord

    def to_extra(self) -> dict[str, ArrayRecord]:
        return {GENERATOR_RECORD: self.arrays}

    @classmethod
    def from_extra(cls, extra: dict[str, ArrayRecord]) -> GeneratorPayload | None:
        rec = extra.get(GENERATOR_RECORD)
        return None if rec is None else cls(rec)
