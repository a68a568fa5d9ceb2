"""SCAFFOLD: Karimireddy, Kale, Mohri, Reddi, Stich, Suresh, "SCAFFOLD: Stochastic
Controlled Averaging for Federated Learning", ICML 2020, arXiv 1910.06378.

Server: keeps the server control variate ``c`` (zero at the start, one array per trainable
parameter) and sends it with the model (:data:`protocols.scaffold.CONTROL_RECORD`).  With
``S`` the clients aggregated and ``N`` all clients (Algorithm 1, lines 16-17)::

    x <- x + eta_g * mean_i(y_i - x)        c <- c + (|S| / N) * mean_i(dc_i)

Client (``clients.scaffold``): the corrected local steps and option II of the control
update.  Both variates are kept across rounds (``c`` here and in checkpoints, ``c_i`` in
the client's state).  Deviation: buffers (batch-norm statistics) are averaged as FedAvg
does; the paper's models have none.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message
from flwr.serverapp import Grid

from fedsim.algorithms.aggregate import weighted_average
from fedsim.algorithms.payloads import TrainRes
from fedsim.algorithms.strategy import ServerContext, Strategy
from fedsim.records import arrays_from_numpy, numpy_from_arrays
from protocols.scaffold import CONTROL_RECORD, DELTA_RECORD, ScaffoldConfig


class Scaffold(Strategy):
    """FedAvg with server and client control variates."""

    def __init__(self, ctx: ServerContext) -> None:
        super().__init__(ctx)
        assert isinstance(ctx.cfg.strategy, ScaffoldConfig)
        self.server_lr = ctx.cfg.strategy.server_lr
        self.c: dict[str, np.ndarray] = {}  # empty = zero before the first aggregation

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        messages = list(super().configure_train(server_round, arrays, config, grid))
        if self.c:
            control = arrays_from_numpy(self.c)
            for msg in messages:
                msg.content[CONTROL_RECORD] = control
        return messages

    def aggregate_arrays(self, results: list[tuple[int, TrainRes]]) -> dict[str, np.ndarray]:
        equal = [1.0] * len(results)
        mean_y = weighted_average([numpy_from_arrays(r.arrays) for _, r in results], equal)
        x = self.ctx.global_arrays
        out = {
            k: (x[k] + self.server_lr * (y - x[k])).astype(y.dtype)
            if k in x and np.issubdtype(y.dtype, np.floating)
            else y
            for k, y in mean_y.items()
        }
        deltas = [numpy_from_arrays(r.extra[DELTA_RECORD]) for _, r in results]
        share = len(results) / self.ctx.cfg.scenario.num_clients
        for k, dc in weighted_average(deltas, equal).items():
            self.c[k] = self.c.get(k, np.zeros_like(dc)) + share * dc
        return out

    def state_dict(self) -> dict[str, np.ndarray]:
        return {f"c/{k}": v for k, v in self.c.items()}

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        self.c = {k[2:]: np.array(v) for k, v in state.items() if k.startswith("c/")}
