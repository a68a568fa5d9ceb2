"""FedBN (Li et al., ICLR 2021, arXiv 2102.07623): batch-norm layers never travel.

Shared by ``strategies.fedbn`` and ``clients.fedbn``: the config and the rule of what
stays on the clients (:func:`local_keys`).  Import-light: torch only inside the rule.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from fedsim.config import RunConfig, StrategyConfig
from fedsim.errors import ConfigError

if TYPE_CHECKING:
    from torch import nn

#: Backbones without a batch-norm layer: FedBN would silently be FedAvg on them.
NO_BATCH_NORM = ("cnn_cifar", "cnn_mnist", "convnext", "logreg", "mlp", "mlp_2nn")


@dataclass
class FedBNConfig(StrategyConfig):
    name: str = "fedbn"

    def validate(self, run: RunConfig) -> None:
        if run.backbone.name in NO_BATCH_NORM:
            with_bn = sorted({"cnn_digits", "resnet18"})
            raise ConfigError(
                f"strategy: fedbn keeps batch-norm layers local, but backbone "
                f"'{run.backbone.name}' has none (use one of: {', '.join(with_bn)})"
            )


def local_keys(model: nn.Module) -> set[str]:
    """Every batch-norm tensor of ``model`` (affine weights and running statistics, chosen
    by module type): what a FedBN client keeps and the server never sends nor averages."""
    from fedsim.models.backbones import bn_state_keys

    return bn_state_keys(model)
