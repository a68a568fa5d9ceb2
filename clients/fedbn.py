"""FedBN client (Li et al., ICLR 2021, arXiv 2102.07623): batch-norm layers, chosen by
module type, stay in the client's persistent state and never go on the wire
(:func:`protocols.fedbn.local_keys`, the rule the server applies too).  The round itself
is FedAvg's :class:`fedsim.algorithms.client.LocalRun`."""

from __future__ import annotations

from torch import nn

from fedsim.algorithms.client import Client
from fedsim.config import RunConfig
from protocols import fedbn


class FedBNClient(Client):
    """FedAvg client that keeps every batch-norm tensor local."""

    @staticmethod
    def local_keys(model: nn.Module, cfg: RunConfig) -> set[str]:
        return fedbn.local_keys(model)
