"""What the one training loop is extended with, and what it returns.

:class:`TrainHooks` are an algorithm's additions to the local objective (an extra loss
term, a replaced loss, work after each step); :class:`TrainStats` what a local run
reports.  Both the sequential loop (:mod:`fedsim.training`) and the batched one
(:mod:`fedsim.vmap_train`) use them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

ExtraLoss = Callable[[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
#: (model, x, y) -> scalar that replaces ``CE(model(x), y)`` (semi-supervised objectives
#: whose ``y`` marks hidden labels, e.g. FedoSSL); ``extra_loss`` is then not called.
BatchLoss = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class TrainHooks:
    """Optional additions to the local objective and loop."""

    extra_loss: ExtraLoss | None = None  # (model, x, y, logits) -> scalar added to the CE loss
    after_step: Callable[[nn.Module], None] | None = None
    loss: BatchLoss | None = None  # replaces the cross-entropy objective when set
    # declarative proximal term (FedProx): + (prox_mu / 2) * sum ||w - w_ref||^2 over the
    # trainable parameters, ``prox_ref`` in ``model.parameters()`` order (requires_grad only)
    prox_mu: float = 0.0
    prox_ref: list[torch.Tensor] | None = None


def proximal_term(model: nn.Module, ref: list[torch.Tensor], mu: float) -> torch.Tensor:
    """``(mu / 2) * sum ||w - w_ref||^2`` over the trainable parameters (Li et al., MLSys
    2020, arXiv 1812.06127)."""
    total = torch.zeros((), device=ref[0].device if ref else None)
    for p, p0 in zip((p for p in model.parameters() if p.requires_grad), ref, strict=True):
        total = total + (p - p0).pow(2).sum()
    return 0.5 * mu * total


@dataclass
class TrainStats:
    loss: float
    steps: int
    examples: int


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager[None]:
    """bf16 autocast on CUDA when asked; a no-op elsewhere."""
    if precision == "bf16" and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def train_mode(model: nn.Module) -> None:
    """``model.train()``, except modules whose parameters are all frozen
    (``train.trainable``): they stay in eval mode, so a frozen BatchNorm keeps its running
    statistics and normalises with them, as a frozen pretrained block should."""
    model.train()
    for module in model.modules():
        own = list(module.parameters(recurse=False))
        if own and not any(p.requires_grad for p in own):
            module.eval()
