"""SCAFFOLD (Karimireddy et al., ICML 2020, arXiv 1910.06378): control variates on the wire.

Server -> client: the model and the server control variate ``c`` (record
:data:`CONTROL_RECORD`, keyed like the trainable parameters).  Client -> server: the
model ``y_i`` and the change of its own control variate ``dc_i = c_i+ - c_i``
(record :data:`DELTA_RECORD`).
"""

from __future__ import annotations

from dataclasses import dataclass

from fedsim.config import RunConfig, StrategyConfig
from fedsim.errors import ConfigError

CONTROL_RECORD = "scaffold.control"  # the server control variate c
DELTA_RECORD = "scaffold.delta_c"  # a client's c_i+ - c_i
STATE_KEY = "scaffold.c_i"  # the client control variate, in the client's context.state


@dataclass
class ScaffoldConfig(StrategyConfig):
    name: str = "scaffold"
    server_lr: float = 1.0  # global step size eta_g: x <- x + eta_g * mean(y_i - x)

    def validate(self, run: RunConfig) -> None:
        if self.server_lr <= 0:
            raise ConfigError(f"strategy.server_lr: must be > 0, got {self.server_lr}")
        if run.train.optimizer != "sgd" or run.train.momentum != 0:
            raise ConfigError(
                "train.optimizer: scaffold's control variates assume plain SGD "
                "(train.optimizer=sgd train.momentum=0)"
            )
