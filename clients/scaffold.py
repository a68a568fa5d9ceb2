"""SCAFFOLD client (Karimireddy et al., ICML 2020, arXiv 1910.06378; server side in
``strategies.scaffold``).

Local steps follow ``y <- y - lr (g_i(y) - c_i + c)``: the shared training loop adds the
linear term ``sum_p <p, c - c_i>`` to the loss, whose gradient is exactly the correction.
After ``K`` steps (option II): ``c_i+ = c_i - c + (x - y) / (K lr)``; the client keeps
``c_i+`` in ``context.state`` (:data:`protocols.scaffold.STATE_KEY`) and sends
``c_i+ - c_i``.  Plain SGD only (checked at load).
"""

from __future__ import annotations

import numpy as np
import torch
from flwr.app import ArrayRecord

from fedsim.client import Client
from fedsim.payloads import TrainIns
from fedsim.records import arrays_from_numpy, numpy_from_arrays
from fedsim.training import TrainHooks, TrainStats
from protocols.scaffold import CONTROL_RECORD, DELTA_RECORD, STATE_KEY


class ScaffoldClient(Client):
    """FedAvg client with drift correction by control variates."""

    def _trainable(self) -> dict[str, torch.nn.Parameter]:
        return {n: p for n, p in self.model.named_parameters() if p.requires_grad}

    def hooks(self, ins: TrainIns) -> TrainHooks:
        params = self._trainable()
        zeros = {n: np.zeros(tuple(p.shape), dtype=np.float32) for n, p in params.items()}
        sent = ins.extra.get(CONTROL_RECORD)
        self._c = numpy_from_arrays(sent) if sent is not None else zeros
        mine = self.state.array_records.get(STATE_KEY)
        self._ci = numpy_from_arrays(mine) if mine is not None else zeros
        self._x = {n: p.detach().clone() for n, p in params.items()}  # the global model
        device = self.env.device
        corr = {n: torch.from_numpy(self._c[n] - self._ci[n]).to(device) for n in params}

        def correction(
            model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, logits: torch.Tensor
        ) -> torch.Tensor:
            return sum((p * corr[n]).sum() for n, p in self._trainable().items())  # type: ignore[return-value]

        return TrainHooks(extra_loss=correction)

    def after_fit(self, ins: TrainIns, stats: TrainStats) -> dict[str, ArrayRecord]:
        scale = 1.0 / (max(1, stats.steps) * self.lr(ins.server_round))  # the round's rate
        c_plus = {
            n: self._ci[n] - self._c[n] + scale * (self._x[n] - p.detach()).cpu().numpy()
            for n, p in self._trainable().items()
        }
        self.state[STATE_KEY] = arrays_from_numpy(c_plus)
        delta = {n: (c_plus[n] - self._ci[n]).astype(np.float32) for n in c_plus}
        return {DELTA_RECORD: arrays_from_numpy(delta)}
