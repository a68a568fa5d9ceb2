"""Model construction shared by the server and every client process.

The initial weights are a pure function of ``(backbone config, data shape, seed)`` so the
server and each client process build the same model without exchanging it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from fedsim.config import BackboneConfig
from fedsim.errors import ConfigError
from fedsim.models.backbones import Backbone, build_backbone
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
    cfg: BackboneConfig,
    input_shape: tuple[int, int, int],
    num_classes: int,
    seed: int,
    trainable: Sequence[str] = (),
) -> Backbone:
    """The round-0 model, identical in every process for the same seed.

    ``cfg.checkpoint`` (``backbone.checkpoint``) replaces the seeded weights by a local
    state dict; ``trainable`` (``train.trainable``) freezes every parameter outside those
    module-name prefixes (:func:`freeze`).
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(seed, "init"))
        model = build_backbone(cfg, input_shape, num_classes)
    if cfg.checkpoint:
        load_checkpoint(model, cfg.checkpoint)
    if trainable:
        freeze(model, trainable)
    return model


def load_checkpoint(model: nn.Module, path: str) -> list[str]:
    """Load a local state dict into ``model``; returns the keys kept at their initial value.

    Keys of the model missing from the file (a classifier head that self-supervised
    pretraining never had) keep their seeded values; any key of the file that the model
    lacks, or whose shape differs, is refused with one line naming the first such key.
    """
    file = Path(path).expanduser()
    if not file.is_file():
        raise ConfigError(f"backbone.checkpoint: file '{path}' does not exist")
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ConfigError(
            f"backbone.checkpoint: '{path}' is not a readable torch state dict ({type(e).__name__})"
        ) from None
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]  # fedsim pretrain's file: {"model": ..., "meta": ...}
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise ConfigError(f"backbone.checkpoint: '{path}' is not a state dict of tensors")
    own = model.state_dict()
    for key, tensor in state.items():
        if key not in own:
            raise ConfigError(
                f"backbone.checkpoint: key '{key}' of '{path}' is not in backbone "
                f"'{type(model).__name__}' (check backbone=, backbone.width and the image size)"
            )
        if tuple(tensor.shape) != tuple(own[key].shape):
            raise ConfigError(
                f"backbone.checkpoint: key '{key}' has shape {tuple(tensor.shape)} in '{path}' "
                f"but {tuple(own[key].shape)} in the backbone (check backbone.width, the "
                "image size and the number of classes)"
            )
    kept = sorted(set(own) - set(state))
    model.load_state_dict({**own, **state}, strict=True)
    return kept


def freeze(model: nn.Module, prefixes: Sequence[str]) -> frozenset[str]:
    """Train only parameters under the module-name ``prefixes``; returns the frozen keys.

    A prefix matches a module name or a dotted prefix of it (``layer4`` matches
    ``layer4.0.conv1``).  The frozen keys are the parameters outside the prefixes and the
    buffers of modules whose parameters are all frozen (a frozen BatchNorm keeps its
    running statistics: :func:`fedsim.algorithms.training.train_mode`).  A prefix that matches no
    module is refused.
    """
    names = [n for n, _ in model.named_modules() if n]
    for prefix in prefixes:
        if not any(_under(n, prefix) for n in names):
            tops = sorted({n.split(".")[0] for n in names})
            raise ConfigError(
                f"train.trainable: prefix '{prefix}' matches no module of "
                f"{type(model).__name__} (top-level modules: {', '.join(tops)})"
            )
    for name, p in model.named_parameters():
        p.requires_grad_(any(_under(name, prefix) for prefix in prefixes))
    return frozen_keys(model)


def frozen_keys(model: nn.Module) -> frozenset[str]:
    """State-dict keys of ``model`` that do not train (see :func:`freeze`)."""
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    for mod_name, module in model.named_modules():
        own = list(module.named_parameters(recurse=False))
        if own and not any(p.requires_grad for _, p in own):
            prefix = f"{mod_name}." if mod_name else ""
            frozen.update(prefix + b for b, _ in module.named_buffers(recurse=False))
    return frozenset(frozen)


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")
