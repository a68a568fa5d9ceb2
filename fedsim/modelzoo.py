"""Model construction shared by the server and every client process.

The initial weights are a pure function of ``(backbone config, data shape, seed)`` so the
server and each client process build the same model without exchanging it.
"""

from __future__ import annotations

import torch

from fedsim.backbones import Backbone, build_backbone
from fedsim.config import BackboneConfig
from fedsim.errors import ConfigError
from fedsim.seeding import derive_seed


def resolve_device(spec: str) -> torch.device:
    """``auto`` picks CUDA when present; ``cuda`` without a GPU is a user error."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(
            f"device: '{spec}' requested but no CUDA device is available (allowed here: auto, cpu)"
        )
    if spec != "cpu" and not spec.startswith("cuda"):
        raise ConfigError(f"device: unknown '{spec}' (allowed: auto, cpu, cuda, cuda:N)")
    return torch.device(spec)


def initial_model(
    cfg: BackboneConfig, input_shape: tuple[int, int, int], num_classes: int, seed: int
) -> Backbone:
    """The round-0 model, identical in every process for the same seed."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(seed, "init"))
        return build_backbone(cfg, input_shape, num_classes)
