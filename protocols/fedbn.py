"""FedBN (Li et al., ICLR 2021, arXiv 2102.07623): batch-norm layers never travel."""

from __future__ import annotations

from dataclasses import dataclass

from fedsim.config import RunConfig, StrategyConfig
from fedsim.errors import ConfigError

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
