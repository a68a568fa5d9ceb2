"""FedProx (Li et al., MLSys 2020, arXiv 1812.06127): the server sends ``mu`` each round."""

from __future__ import annotations

from dataclasses import dataclass

from fedsim.config import RunConfig, StrategyConfig
from fedsim.errors import ConfigError

MU_KEY = "proximal-mu"  # config key of the proximal coefficient in every training message


@dataclass
class FedProxConfig(StrategyConfig):
    name: str = "fedprox"
    mu: float = 0.01  # proximal coefficient; the client adds (mu/2)||w - w_global||^2

    def validate(self, run: RunConfig) -> None:
        if self.mu < 0:
            raise ConfigError(f"strategy.mu: must be >= 0, got {self.mu}")
