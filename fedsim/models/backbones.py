"""Vision backbones with a ``features`` / ``head`` split, selected by name.

The models themselves (the papers they follow and their deviations) are in
:mod:`fedsim.models.architectures` and, for the classic small FL models (``cnn_mnist``,
``cnn_cifar``; ``mlp_2nn`` is ``mlp`` under the FedAvg paper's name), :mod:`fedsim.models.classic`;
this module names them (:data:`BACKBONES`), builds one from a
:class:`~fedsim.config.BackboneConfig` (:func:`build_backbone`) and finds the batch-norm
tensors FedBN and FRAug keep local (:func:`bn_state_keys`, by module type).  Every model
class, and the contract and heads of :mod:`fedsim.models.base`, is re-exported here.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from fedsim.config import BackboneConfig
from fedsim.errors import ConfigError
from fedsim.models.architectures import MLP, CNNDigits, ConvNeXt, LogReg, ResNet18
from fedsim.models.base import Backbone, InputShape, NormedLinear, replace_head
from fedsim.models.classic import CNNCifar, CNNMnist

__all__ = [
    "BACKBONES",
    "MLP",
    "Backbone",
    "BackboneFactory",
    "CNNCifar",
    "CNNDigits",
    "CNNMnist",
    "ConvNeXt",
    "LogReg",
    "NormedLinear",
    "ResNet18",
    "bn_running_stat_keys",
    "bn_state_keys",
    "build_backbone",
    "replace_head",
]


# --------------------------------------------------------------------------- registry

BackboneFactory = Callable[[InputShape, int, float], Backbone]
"""``(input_shape, num_classes, width) -> Backbone``."""

BACKBONES: dict[str, BackboneFactory] = {
    "cnn_cifar": CNNCifar,
    "cnn_digits": CNNDigits,
    "cnn_mnist": CNNMnist,
    "convnext": ConvNeXt,
    "logreg": LogReg,
    "mlp": MLP,
    "mlp_2nn": MLP,  # the 2NN of McMahan et al. is exactly ``mlp``: 199,210 parameters on MNIST
    "resnet18": ResNet18,
}


def build_backbone(
    cfg: BackboneConfig, input_shape: tuple[int, int, int], num_classes: int
) -> Backbone:
    """Build the backbone named by ``cfg.name`` for images of ``input_shape``.

    Parameters
    ----------
    cfg : BackboneConfig
        ``name`` (a key of :data:`BACKBONES`), ``width`` (> 0) and ``channels_last``.
    input_shape : tuple of int
        ``(C, H, W)`` of one image, all positive.
    num_classes : int
        Number of output logits, at least 1.

    Returns
    -------
    Backbone
        A freshly initialised model on the CPU, in channels-last memory format if
        ``cfg.channels_last`` (inputs should then be converted likewise to benefit).

    Raises
    ------
    ConfigError
        For an unknown name, a non-positive or non-finite width, a malformed input shape,
        fewer than one class or an input the model cannot take (``cnn_cifar`` below 16 px).
    """
    if cfg.name not in BACKBONES:
        raise ConfigError(
            f"backbone.name: unknown {cfg.name!r} (allowed: {', '.join(sorted(BACKBONES))})"
        )
    width = float(cfg.width)
    if not (math.isfinite(width) and width > 0):
        raise ConfigError(f"backbone.width: invalid {cfg.width!r} (allowed: a finite number > 0)")
    shape = tuple(input_shape)
    if len(shape) != 3 or any(int(s) != s or s < 1 for s in shape):
        raise ConfigError(
            f"backbone {cfg.name}: input shape {shape!r} is not (C, H, W) with positive sizes"
        )
    if num_classes < 1:
        raise ConfigError(f"backbone {cfg.name}: num_classes {num_classes} must be at least 1")
    c, h, w = (int(s) for s in shape)
    try:
        model = BACKBONES[cfg.name]((c, h, w), int(num_classes), width)
    except ValueError as err:  # a model's own limit on its input (e.g. cnn_cifar's 16 px)
        raise ConfigError(f"backbone {cfg.name}: {err}") from err
    if cfg.channels_last:
        # Module.to takes memory_format at runtime; torch's overload stubs do not declare it.
        model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    return model


# --------------------------------------------------------------------------- batch norm


def bn_state_keys(model: nn.Module) -> set[str]:
    """Return the ``state_dict`` keys of every batch-norm layer of ``model``.

    Layers are chosen by module type (subclasses of ``nn.modules.batchnorm._BatchNorm``:
    ``BatchNorm1d/2d/3d``, ``SyncBatchNorm``, lazy variants), never by name, so a Linear
    called ``bn_fake`` is not picked and a BatchNorm called ``norm`` is.  The keys are the
    affine ``weight`` / ``bias`` (if ``affine``) and ``running_mean`` / ``running_var`` /
    ``num_batches_tracked`` (if ``track_running_stats``); FedBN keeps all of them local.

    Parameters
    ----------
    model : nn.Module
        Any module; keys are relative to ``model.state_dict()``.

    Returns
    -------
    set of str
        Empty if the model has no batch norm (e.g. ConvNeXt, MLP, logistic regression).
    """
    keys: set[str] = set()
    for name, module in model.named_modules(remove_duplicate=False):
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            prefix = f"{name}." if name else ""
            keys.update(prefix + key for key in module.state_dict(keep_vars=True))
    return keys


_RUNNING_STATS = ("running_mean", "running_var", "num_batches_tracked")


def bn_running_stat_keys(model: nn.Module) -> set[str]:
    """Return only the running-statistics keys of :func:`bn_state_keys`.

    These are ``running_mean``, ``running_var`` and ``num_batches_tracked``; the affine
    parameters are left out (FRAug's code shares them and keeps only the statistics local).
    """
    return {key for key in bn_state_keys(model) if key.rsplit(".", 1)[-1] in _RUNNING_STATS}
