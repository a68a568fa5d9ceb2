"""SCAFFOLD client (Karimireddy et al., ICML 2020, arXiv 1910.06378; server side in
``strategies.scaffold``).

Local steps follow ``y <- y - lr (g_i(y) - c_i + c)``: the round's loss stage adds the
linear term ``sum_p <p, c - c_i>`` to the loop's cross-entropy, whose gradient is exactly
the correction.  After ``K`` steps (option II): ``c_i+ = c_i - c + (x - y) / (K lr)``; the
client keeps ``c_i+`` in ``context.state`` (:data:`protocols.scaffold.STATE_KEY`) and
sends ``c_i+ - c_i``.  Plain SGD only (checked at load).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from fedsim.algorithms.client import Client, LocalResult, LocalRun
from fedsim.algorithms.training import BatchOut, TrainStats
from fedsim.records import array_records, arrays_from_numpy, numpy_from_arrays
from protocols.scaffold import CONTROL_RECORD, DELTA_RECORD, STATE_KEY


def _trainable(model: nn.Module) -> dict[str, nn.Parameter]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


class ScaffoldRun(LocalRun[Client]):
    """A round with control variates: ``c`` from the server, ``c_i`` from the state."""

    def setup(self) -> None:
        """``c``, ``c_i`` (zero until first sent / kept) and ``x``, the global model."""
        params = _trainable(self.client.model)
        zeros = {n: np.zeros(tuple(p.shape), dtype=np.float32) for n, p in params.items()}
        sent = self.ins.extra.get(CONTROL_RECORD)
        self.c = numpy_from_arrays(sent) if sent is not None else zeros
        mine = array_records(self.client.state).get(STATE_KEY)
        self.ci = numpy_from_arrays(mine) if mine is not None else zeros
        self.x = {n: p.detach().clone() for n, p in params.items()}
        device = self.client.env.device
        self.corr = {n: torch.from_numpy(self.c[n] - self.ci[n]).to(device) for n in params}

    def loss(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, out: BatchOut
    ) -> torch.Tensor:
        """``CE + sum_p <p, c - c_i>``."""
        assert out.ce is not None
        correction = sum((p * self.corr[n]).sum() for n, p in _trainable(model).items())
        return out.ce + correction

    def finish(self, stats: TrainStats) -> LocalResult:
        """Option II: keep ``c_i+``, send ``c_i+ - c_i``."""
        scale = 1.0 / (max(1, stats.steps) * self.client.lr(self.ins.server_round))
        c_plus = {
            n: self.ci[n] - self.c[n] + scale * (self.x[n] - p.detach()).cpu().numpy()
            for n, p in _trainable(self.client.model).items()
        }
        self.client.state[STATE_KEY] = arrays_from_numpy(c_plus)
        delta = {n: (c_plus[n] - self.ci[n]).astype(np.float32) for n in c_plus}
        return LocalResult(records={DELTA_RECORD: arrays_from_numpy(delta)})


class ScaffoldClient(Client):
    """FedAvg client with drift correction by control variates."""

    Run = ScaffoldRun
