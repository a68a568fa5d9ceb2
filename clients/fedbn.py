"""FedBN client (Li et al., ICLR 2021, arXiv 2102.07623): batch-norm layers, chosen by
module type, stay in the client's persistent state and never go on the wire."""

from __future__ import annotations

from torch import nn

from fedsim.backbones import bn_state_keys
from fedsim.client import Client


class FedBNClient(Client):
    """FedAvg client that keeps every batch-norm tensor local."""

    @staticmethod
    def local_keys(model: nn.Module) -> set[str]:
        return bn_state_keys(model)
