"""FedProx client (Li et al., MLSys 2020, arXiv 1812.06127): local loss plus
``(mu / 2) * ||w - w_global||^2``, with ``mu`` sent by the server each round."""

from __future__ import annotations

import torch
from torch import nn

from fedsim.client import Client
from fedsim.payloads import TrainIns
from fedsim.training import TrainHooks
from protocols.fedprox import MU_KEY


def proximal_term(model: nn.Module, anchor: list[torch.Tensor], mu: float) -> torch.Tensor:
    """``(mu / 2) * sum ||w - w0||^2`` over the trainable parameters."""
    total = torch.zeros((), device=anchor[0].device if anchor else None)
    for p, p0 in zip((p for p in model.parameters() if p.requires_grad), anchor, strict=True):
        total = total + (p - p0).pow(2).sum()
    return 0.5 * mu * total


class FedProxClient(Client):
    """FedAvg client whose local objective has the proximal term."""

    def hooks(self, ins: TrainIns) -> TrainHooks:
        mu = float(ins.config.get(MU_KEY, 0.0))
        if mu == 0.0:
            return TrainHooks()
        # self.load() has put the global weights in the model before training starts
        anchor = [p.detach().clone() for p in self.model.parameters() if p.requires_grad]
        return TrainHooks(extra_loss=lambda model, x, y, logits: proximal_term(model, anchor, mu))
