"""FedAvg (McMahan et al., AISTATS 2017, arXiv 1602.05629): nothing but the arrays travels."""

from __future__ import annotations

from dataclasses import dataclass

from fedsim.config import StrategyConfig


@dataclass
class FedAvgConfig(StrategyConfig):
    name: str = "fedavg"
