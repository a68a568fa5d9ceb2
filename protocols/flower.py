"""Configs of Flower's own strategies (``flwr.serverapp.strategy``), by fedsim name.

The keys are Flower's constructor arguments, with Flower 1.42's names and defaults
(``tests/test_flower_strategies.py`` checks them against Flower's signatures), so
``strategy=fedadam strategy.eta=0.05`` means ``FedAdam(eta=0.05)``.  Flower's sampling
arguments (``fraction_train``, ``min_*_nodes``) are not exposed: the scenario decides
participation.  Their clients are fedsim's FedAvg client.
"""

from __future__ import annotations

from dataclasses import dataclass

from fedsim.config import RunConfig, StrategyConfig
from fedsim.errors import ConfigError


def _positive(key: str, value: float) -> None:
    if value <= 0:
        raise ConfigError(f"strategy.{key}: must be > 0, got {value}")


@dataclass
class FedAdamConfig(StrategyConfig):
    name: str = "fedadam"
    eta: float = 0.1
    eta_l: float = 0.1
    beta_1: float = 0.9
    beta_2: float = 0.99
    tau: float = 0.001

    def validate(self, run: RunConfig) -> None:
        for key in ("eta", "eta_l", "tau"):
            _positive(key, getattr(self, key))
        for key in ("beta_1", "beta_2"):
            if not 0 <= getattr(self, key) < 1:
                raise ConfigError(f"strategy.{key}: must be in [0, 1), got {getattr(self, key)}")


@dataclass
class FedYogiConfig(FedAdamConfig):
    name: str = "fedyogi"
    eta: float = 0.01
    eta_l: float = 0.0316


@dataclass
class FedAdagradConfig(StrategyConfig):
    name: str = "fedadagrad"
    eta: float = 0.1
    eta_l: float = 0.1
    tau: float = 0.001

    def validate(self, run: RunConfig) -> None:
        for key in ("eta", "eta_l", "tau"):
            _positive(key, getattr(self, key))


@dataclass
class FedAvgMConfig(StrategyConfig):
    name: str = "fedavgm"
    server_learning_rate: float = 1.0
    server_momentum: float = 0.0

    def validate(self, run: RunConfig) -> None:
        _positive("server_learning_rate", self.server_learning_rate)
        if not 0 <= self.server_momentum < 1:
            raise ConfigError(
                f"strategy.server_momentum: must be in [0, 1), got {self.server_momentum}"
            )


@dataclass
class FedMedianConfig(StrategyConfig):
    name: str = "fedmedian"


@dataclass
class FedTrimmedAvgConfig(StrategyConfig):
    name: str = "fedtrimmedavg"
    beta: float = 0.2

    def validate(self, run: RunConfig) -> None:
        if not 0 <= self.beta < 0.5:
            raise ConfigError(f"strategy.beta: must be in [0, 0.5), got {self.beta}")


def _robust_clients(run: RunConfig, f: int, need: int, rule: str, why: str) -> None:
    """A Byzantine-robust rule needs ``need`` replies per round for ``f`` attackers."""
    from fedsim.algorithms.dp import clients_per_round

    n = min(clients_per_round(run), run.scenario.num_clients)
    if n < need:
        raise ConfigError(
            f"strategy.num_malicious_nodes: {f} needs at least {need} clients per round "
            f"({rule}; {why}), got {n} (scenario.num_clients={run.scenario.num_clients}, "
            f"participation); lower num_malicious_nodes or sample more clients"
        )


@dataclass
class KrumConfig(StrategyConfig):
    name: str = "krum"
    num_malicious_nodes: int = 0

    def validate(self, run: RunConfig) -> None:
        if self.num_malicious_nodes < 0:
            raise ConfigError(
                f"strategy.num_malicious_nodes: must be >= 0, got {self.num_malicious_nodes}"
            )
        self.check_clients(run)

    def check_clients(self, run: RunConfig) -> None:
        """Krum's guarantee needs n >= 2f + 3 (Blanchard et al., NeurIPS 2017: n > 2f + 2);
        Flower 1.42 does not check it and silently scores on max(1, n - f - 2) neighbours."""
        f = self.num_malicious_nodes
        _robust_clients(run, f, 2 * f + 3, "n >= 2f + 3", "Krum's requirement")


@dataclass
class MultiKrumConfig(KrumConfig):
    name: str = "multikrum"
    num_nodes_to_select: int = 1

    def validate(self, run: RunConfig) -> None:
        super().validate(run)
        if self.num_nodes_to_select < 1:
            raise ConfigError(
                f"strategy.num_nodes_to_select: must be >= 1, got {self.num_nodes_to_select}"
            )


@dataclass
class BulyanConfig(KrumConfig):
    name: str = "bulyan"

    def check_clients(self, run: RunConfig) -> None:
        """Flower 1.42's Bulyan skips every round with fewer than 4f + 3 replies."""
        f = self.num_malicious_nodes
        _robust_clients(run, f, 4 * f + 3, "n >= 4f + 3", "Flower's Bulyan skips the round")


@dataclass
class QFedAvgConfig(StrategyConfig):
    name: str = "qfedavg"
    client_learning_rate: float = 0.0  # Flower requires it; 0 = the clients' train.lr
    q: float = 0.1
    train_loss_key: str = "loss"  # Flower's default is "train_loss"; fedsim clients send "loss"

    def validate(self, run: RunConfig) -> None:
        if self.client_learning_rate < 0:
            raise ConfigError(
                f"strategy.client_learning_rate: must be >= 0, got {self.client_learning_rate}"
            )
        if self.q < 0:
            raise ConfigError(f"strategy.q: must be >= 0, got {self.q}")


#: fedsim name -> Flower class name in ``flwr.serverapp.strategy``.
FLOWER_CLASSES = {
    "fedadam": "FedAdam",
    "fedyogi": "FedYogi",
    "fedadagrad": "FedAdagrad",
    "fedavgm": "FedAvgM",
    "fedmedian": "FedMedian",
    "fedtrimmedavg": "FedTrimmedAvg",
    "krum": "Krum",
    "multikrum": "MultiKrum",
    "bulyan": "Bulyan",
    "qfedavg": "QFedAvg",
}
