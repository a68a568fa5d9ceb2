"""The one local-training loop every client shares.

Algorithms plug in through :class:`TrainHooks` (an extra loss term, work after each
optimiser step) instead of pasting a loop of their own.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from fedsim.config import TrainConfig

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


@dataclass
class TrainStats:
    loss: float
    steps: int
    examples: int


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
        )
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    raise ValueError(f"unknown optimizer {cfg.optimizer}")  # validated at config load


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager[None]:
    """bf16 autocast on CUDA when asked; a no-op elsewhere."""
    if precision == "bf16" and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def uses_channels_last(model: nn.Module) -> bool:
    """True when the model's conv weights are in channels-last memory format
    (``backbone.channels_last``); its inputs must then be converted too."""
    return any(
        p.dim() == 4
        and not p.is_contiguous()
        and p.is_contiguous(memory_format=torch.channels_last)
        for p in model.parameters()
    )


def batches(
    n: int, batch_size: int, epochs: int, steps: int, gen: torch.Generator
) -> list[torch.Tensor]:
    """Index batches: ``epochs`` shuffled passes, or exactly ``steps`` batches if steps > 0.

    A trailing batch of one sample is dropped (BatchNorm cannot train on it).
    """
    out: list[torch.Tensor] = []
    while True:
        perm = torch.randperm(n, generator=gen)
        for start in range(0, n, batch_size):
            b = perm[start : start + batch_size]
            if len(b) < 2 and n > 1:
                continue
            out.append(b)
            if steps > 0 and len(out) == steps:
                return out
        epochs -= 1
        if steps <= 0 and epochs <= 0:
            return out


def train_local(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    cfg: TrainConfig,
    optimizer: torch.optim.Optimizer,
    gen: torch.Generator,
    device: torch.device,
    precision: str = "fp32",
    hooks: TrainHooks | None = None,
) -> TrainStats:
    """Run local SGD on ``(x, y)`` in place on ``model``; returns mean loss and counts."""
    hooks = hooks or TrainHooks()
    model.train()
    non_blocking = device.type == "cuda"
    if non_blocking and not x.is_pinned():
        x, y = x.pin_memory(), y.pin_memory()
    total, steps, seen = 0.0, 0, 0
    channels_last = uses_channels_last(model)
    for idx in batches(len(y), cfg.batch_size, cfg.local_epochs, cfg.local_steps, gen):
        xb = x[idx].to(device, non_blocking=non_blocking)
        yb = y[idx].to(device, non_blocking=non_blocking)
        if channels_last and xb.dim() == 4:
            xb = xb.contiguous(memory_format=torch.channels_last)
        optimizer.zero_grad(set_to_none=True)
        with autocast(device, precision):
            if hooks.loss is not None:
                loss = hooks.loss(model, xb, yb)
            else:
                logits = model(xb)
                loss = F.cross_entropy(logits, yb)
                if hooks.extra_loss is not None:
                    loss = loss + hooks.extra_loss(model, xb, yb, logits)
        loss.backward()
        optimizer.step()
        if hooks.after_step is not None:
            hooks.after_step(model)
        total += float(loss.detach()) * len(idx)
        steps += 1
        seen += len(idx)
    return TrainStats(total / max(1, seen), steps, seen)


@torch.no_grad()
def evaluate_model(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    device: torch.device,
    batch_size: int = 512,
    precision: str = "fp32",
) -> tuple[float, float]:
    """Accuracy and mean cross-entropy of ``model`` on ``(x, y)`` (eval mode)."""
    model.eval()
    if len(y) == 0:
        return 0.0, 0.0
    correct, loss = 0, 0.0
    for start in range(0, len(y), batch_size):
        xb = x[start : start + batch_size].to(device)
        yb = y[start : start + batch_size].to(device)
        with autocast(device, precision):
            logits = model(xb)
        loss += float(F.cross_entropy(logits.float(), yb, reduction="sum"))
        correct += int((logits.argmax(1) == yb).sum())
    return correct / len(y), loss / len(y)
