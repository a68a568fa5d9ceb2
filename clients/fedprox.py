"""FedProx client (Li et al., MLSys 2020, arXiv 1812.06127): local loss plus
``(mu / 2) * ||w - w_global||^2``, with ``mu`` sent by the server each round.

The proximal term is declared (``TrainHooks.prox_mu`` / ``prox_ref``), not a closure, so
the shared loop adds it in both the sequential and the vectorised form.
"""

from __future__ import annotations

from fedsim.client import Client
from fedsim.payloads import TrainIns
from fedsim.training import TrainHooks, proximal_term
from fedsim.vectorize import declarative
from protocols.fedprox import MU_KEY

__all__ = ["FedProxClient", "proximal_term"]


class FedProxClient(Client):
    """FedAvg client whose local objective has the proximal term."""

    @declarative
    def hooks(self, ins: TrainIns) -> TrainHooks:
        mu = float(ins.config.get(MU_KEY, 0.0))
        if mu == 0.0:
            return TrainHooks()
        # self.load() has put the global weights in the model before training starts
        anchor = [p.detach().clone() for p in self.model.parameters() if p.requires_grad]
        return TrainHooks(prox_mu=mu, prox_ref=anchor)
