"""FRAug: Chen, Frikha, Krompass, Gu, Tresp, "FRAug: Tackling Federated Learning with
Non-IID Features via Representation Augmentation", ICCV 2023, arXiv 2205.14900.

Implementation spec: ``shared/specs/fraug.md`` (from the official code,
github.com/HaokunChen245/FRAug, commit 94f595a).

What runs where
---------------
Server (this module, :class:`FRAug`):

* averages the model (sample-size weighted) except the batch-norm *running statistics*,
  which stay on the clients (the code's ``model_share='no_bn_running_stats'``); with
  ``strategy.local_bn=all`` every batch-norm tensor stays local, as in FedBN;
* averages the shared generator ``G`` (noise + one-hot label -> client-agnostic embedding)
  with the same weights and broadcasts all of it (``model_share_G='all'``); the generator
  travels as an extra ``ArrayRecord`` (:class:`GeneratorPayload`);
* sends the round's augmentation schedule ``rho_t = exp(gamma (t - T))`` and
  ``lambda_t = min(0.5, rho_t)`` (:func:`rho_schedule`, :func:`lambda_schedule`).

Client (``clients.fraug``): the three alternating updates of every local iteration —
model (CE on real and synthetic embeddings, the latter train only the head), generator,
RTNet — and everything that never leaves the client: the RTNet, the EMA class
prototypes, the generator/RTNet optimizer states (and the BN running statistics).

Deviations and paper-vs-code choices (spec §10), all config switches
--------------------------------------------------------------------
* ``noise``: ``uniform`` U[0, 1) (official code, default) or ``gaussian`` N(0, I) (paper).
* ``local_bn``: ``running_stats`` (code, default: BN affine weights are averaged) or
  ``all`` (FedBN-style, as the paper describes).
* ``local_iterations``: the code counts local work in mini-batch *iterations* (its
  ``local_epochs`` is a number of batches); the default ``20`` is its Digits setting and
  applies when ``train.local_steps`` is 0.  ``train.local_steps=N`` overrides it;
  ``local_iterations=0`` means real epochs (``train.local_epochs``), as in FedBN.
* The code aggregates at the start of each round (round 0 averages identical initial
  generators); here the clients build the identical seeded generator in round 1 and the
  server averages and broadcasts it from round 2 on — the same sequence of models.
* The code reports the best validation accuracy over rounds; fedsim logs every
  evaluated round and reports the last one.
* Only the ``entropy`` RTNet criterion is implemented (the code's default); the
  ``nonsatCE`` alternative is not.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message
from flwr.serverapp import Grid

from fedsim.aggregate import is_finite_update, weighted_average
from fedsim.config import StrategyConfig
from fedsim.payloads import Scalar, TrainRes
from fedsim.records import arrays_from_numpy, numpy_from_arrays
from fedsim.strategy import ServerContext, Strategy

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


def bn_module_keys(local_keys: Iterable[str], all_keys: Iterable[str]) -> frozenset[str]:
    """Every key of the batch-norm modules whose running statistics are in ``local_keys``.

    The server knows the BN layers only through their running-statistics keys (chosen by
    module type on the client side); their affine ``weight`` / ``bias`` share the prefix.
    """
    prefixes = {k.rsplit(".", 1)[0] for k in local_keys if k.endswith(".running_mean")}
    return frozenset(local_keys) | {
        k for k in all_keys if "." in k and k.rsplit(".", 1)[0] in prefixes
    }


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


# --------------------------------------------------------------------------- strategy


class FRAug(Strategy):
    """FedAvg of the model (BN statistics local) and of the shared generator."""

    # the averaged arrays lack the clients' BN statistics: evaluation is per client
    has_global_model = False

    def __init__(self, ctx: ServerContext) -> None:
        assert isinstance(ctx.cfg.strategy, FRAugConfig)
        super().__init__(ctx)
        self.fraug = ctx.cfg.strategy
        self.generator: dict[str, np.ndarray] = {}  # empty until the first aggregation

    def shared(self, arrays: ArrayRecord) -> ArrayRecord:
        if self.fraug.local_bn == "all":
            local = bn_module_keys(self.ctx.local_keys, arrays.keys())
            return ArrayRecord({k: v for k, v in arrays.items() if k not in local})
        return super().shared(arrays)

    def train_config(self, server_round: int) -> dict[str, Scalar]:
        rho = rho_schedule(server_round, self.ctx.cfg.rounds, self.fraug.gamma)
        return {RHO_KEY: rho, LAMBDA_KEY: lambda_schedule(rho)}

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        messages = list(super().configure_train(server_round, arrays, config, grid))
        if self.generator:
            extra = GeneratorPayload(arrays_from_numpy(self.generator)).to_extra()
            for msg in messages:
                for name, record in extra.items():
                    msg.content[name] = record
        return messages

    def aggregate_arrays(self, results: list[tuple[int, TrainRes]]) -> dict[str, np.ndarray]:
        gens = [
            (numpy_from_arrays(p.arrays), res.num_examples)
            for _, res in results
            if (p := GeneratorPayload.from_extra(res.extra)) is not None
        ]
        gens = [(g, n) for g, n in gens if is_finite_update(g)]
        if gens:
            self.generator = weighted_average([g for g, _ in gens], [n for _, n in gens])
        return super().aggregate_arrays(results)

    def round_metrics(self, server_round: int, arrays: ArrayRecord) -> dict[str, float]:
        rho = rho_schedule(server_round, self.ctx.cfg.rounds, self.fraug.gamma)
        return {"fraug/rho": rho, "fraug/lambda": lambda_schedule(rho)}

    def state_dict(self) -> dict[str, np.ndarray]:
        return {f"generator/{k}": v for k, v in self.generator.items()}

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        self.generator = {
            k.removeprefix("generator/"): v for k, v in state.items() if k.startswith("generator/")
        }


__all__ = [
    "FRAug",
    "FRAugConfig",
    "GeneratorPayload",
    "bn_module_keys",
    "lambda_schedule",
    "rho_schedule",
]
