"""A complete fedsim plug-in: coordinate-wise median aggregation, registered by entry point."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedsim.algorithms.registry import AlgorithmSpec
from fedsim.algorithms.strategy import Strategy
from fedsim.config import RunConfig, StrategyConfig
from fedsim.errors import ConfigError
from fedsim.records import numpy_from_arrays


@dataclass
class MedianConfig(StrategyConfig):
    name: str = "coordmedian"
    trim: float = 0.0  # unused knob, to show validation

    def validate(self, run: RunConfig) -> None:
        if not 0 <= self.trim < 0.5:
            raise ConfigError(f"strategy.trim: must be in [0, 0.5), got {self.trim}")


class Median(Strategy):
    def aggregate_arrays(self, results):  # type: ignore[no-untyped-def]
        updates = [numpy_from_arrays(res.arrays) for _, res in results]
        return {
            k: np.median([u[k] for u in updates], axis=0).astype(updates[0][k].dtype)
            for k in updates[0]
        }


SPEC = AlgorithmSpec(MedianConfig, "fedsim_median_plugin:Median", summary="coordinate median")
