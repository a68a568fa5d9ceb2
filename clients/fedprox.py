"""FedProx client (Li et al., MLSys 2020, arXiv 1812.06127): local loss plus
``(mu / 2) * ||w - w_global||^2``, with ``mu`` sent by the server each round.

The proximal term is declared by the round's setup (``prox_mu`` / ``prox_ref`` of the
:class:`fedsim.algorithms.client.LocalRun`), not a loss stage, so the shared loop adds it in both
the
sequential and the vectorised form.
"""

from __future__ import annotations

from fedsim.algorithms.client import Client, LocalRun
from fedsim.algorithms.training import proximal_term
from protocols.fedprox import MU_KEY

__all__ = ["FedProxClient", "FedProxRun", "proximal_term"]


class FedProxRun(LocalRun[Client]):
    """FedAvg's round with the proximal term anchored at this round's global model."""

    def setup(self) -> None:
        mu = float(self.ins.config.get(MU_KEY, 0.0))
        if mu == 0.0:
            return
        # the global weights are loaded: they are the anchor
        model = self.client.model
        self.prox_mu = mu
        self.prox_ref = [p.detach().clone() for p in model.parameters() if p.requires_grad]


class FedProxClient(Client):
    """FedAvg client whose local objective has the proximal term."""

    Run = FedProxRun
