"""What the one training loop is extended with, and what it returns.

:class:`TrainHooks` are what a client's round (:class:`fedsim.algorithms.client.LocalRun`) hands the
loop: the loss stage that gives the objective of a batch, the work after each optimiser
step, what the loop computes before the loss stage (:data:`FORWARDS`) and the declarative
proximal term; :class:`TrainStats` what a local run reports.  Both the sequential loop
(:mod:`fedsim.algorithms.training`) and the batched one (:mod:`fedsim.algorithms.vmap_train`) use
them; the
batched one only when there is no loss stage and no after-step (nothing but data).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

#: What the loop computes on a batch before the loss stage: ``logits`` (``model(x)``),
#: ``features`` (``model.features(x)``, then ``model.head`` of them: the same numbers as
#: ``model(x)`` for a :class:`fedsim.models.backbones.Backbone`, with the embedding kept), or
#: ``none`` (the loss stage runs the model itself, e.g. on two views of the batch).
FORWARDS = ("logits", "features", "none")


@dataclass(frozen=True)
class BatchOut:
    """What the loop computed on a batch before the loss stage (``None``: not asked)."""

    logits: torch.Tensor | None = None
    features: torch.Tensor | None = None  # the embedding, with ``forward="features"``
    ce: torch.Tensor | None = None  # CE(logits, y), ``train.label_smoothing`` applied


#: (model, x, y, out) -> the scalar objective of the batch (``out.ce`` when there is none)
LossStage = Callable[[nn.Module, torch.Tensor, torch.Tensor, BatchOut], torch.Tensor]


@dataclass
class TrainHooks:
    """A round's stages as the loop runs them (all optional: plain cross-entropy)."""

    loss: LossStage | None = None  # the objective of a batch; None: the loop's ``out.ce``
    after_step: Callable[[nn.Module], None] | None = None  # after every optimiser step
    forward: str = "logits"  # what the loop computes before ``loss`` (FORWARDS)
    # declarative proximal term (FedProx): + (prox_mu / 2) * sum ||w - w_ref||^2 over the
    # trainable parameters, ``prox_ref`` in ``model.parameters()`` order (requires_grad only)
    prox_mu: float = 0.0
    prox_ref: list[torch.Tensor] | None = None

    def __post_init__(self) -> None:
        if self.forward not in FORWARDS:
            raise ValueError(f"TrainHooks.forward: {self.forward!r} is not one of {FORWARDS}")
        if self.forward == "none" and self.loss is None:
            raise ValueError("TrainHooks.forward='none' needs a loss stage (it runs the model)")


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
