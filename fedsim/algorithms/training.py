"""The one local-training loop every client shares.

Algorithms plug in through the stages of their round (:class:`fedsim.algorithms.client.LocalRun`),
which reach the loop as :class:`TrainHooks`: the loss stage gives a batch's objective from
what the loop computed (:class:`BatchOut`: logits, the embedding when asked, the
cross-entropy), the after-step runs after each optimiser step; no algorithm pastes a loop
of its own.  Declarative hooks (FedProx's proximal term: ``prox_mu`` and ``prox_ref``) are
also understood by the vectorised loop (``runtime.vectorize``, :mod:`fedsim.algorithms.vectorize`);
a loss stage or an after-step (closures) make a client train alone.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fedsim.algorithms import optim
from fedsim.algorithms.hooks import (
    BatchOut,
    LossStage,
    TrainHooks,
    TrainStats,
    autocast,
    proximal_term,
    train_mode,
)
from fedsim.algorithms.optim import Optimizer
from fedsim.config import TrainConfig
from fedsim.data.augment import Augmenter
from fedsim.data.augment_params import AugParams

__all__ = [
    "BatchOut",
    "LossStage",
    "TrainHooks",
    "TrainStats",
    "autocast",
    "batches",
    "evaluate_model",
    "forward_batch",
    "make_optimizer",
    "proximal_term",
    "train_local",
    "train_mode",
]


def make_optimizer(model: nn.Module, cfg: TrainConfig, lr: float | None = None) -> Optimizer:
    """The client's optimiser over the trainable parameters; ``lr`` is this round's rate
    (:func:`fedsim.algorithms.schedules.lr_at`), ``cfg.lr`` when not given.

    On the CPU, :mod:`fedsim.algorithms.optim`'s SGD / Adam: torch's arithmetic bit for bit, without
    the ``torch._dynamo`` import the first ``torch.optim`` optimiser costs (about 1.3 s);
    elsewhere ``torch.optim``'s own (its multi-tensor kernels round differently).
    """
    params = [p for p in model.parameters() if p.requires_grad]
    rate = cfg.lr if lr is None else lr
    own = optim.native(params)
    if cfg.optimizer == "sgd":
        return optim.sgd(
            params,
            lr=rate,
            momentum=cfg.momentum,
            weight_decay=cfg.weight_decay,
            nesterov=cfg.nesterov,
        )
    if cfg.optimizer == "adam":
        adam = optim.Adam if own else torch.optim.Adam
        return adam(params, lr=rate, weight_decay=cfg.weight_decay)
    raise ValueError(f"unknown optimizer {cfg.optimizer}")  # validated at config load


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
    optimizer: Optimizer,
    gen: torch.Generator,
    device: torch.device,
    precision: str = "fp32",
    hooks: TrainHooks | None = None,
    augmenter: Augmenter | None = None,
    aug_gen: torch.Generator | None = None,
) -> TrainStats:
    """Run local SGD on ``(x, y)`` in place on ``model``; returns mean loss and counts.

    ``augmenter`` (``train.augment``) transforms every batch with draws from ``aug_gen``
    (the client's per-round augmentation stream), batch after batch in the plan's order;
    ``cfg.label_smoothing`` and ``cfg.clip_norm`` apply to the cross-entropy objective.
    Under a vectorised round (:func:`fedsim.algorithms.vectorize.current`) the training is submitted
    to the round's batched loop instead, with the same batches and the same augmentation
    draws, and its result written back into ``model`` and ``optimizer``.
    """
    from fedsim.algorithms import vectorize

    hooks = hooks or TrainHooks()
    plan = batches(len(y), cfg.batch_size, cfg.local_epochs, cfg.local_steps, gen)
    if augmenter is not None and aug_gen is None:
        raise ValueError("train_local: an augmenter needs its generator (aug_gen)")
    aug = _Augment(augmenter, aug_gen) if augmenter is not None else None
    batcher = vectorize.current()
    if batcher is not None and plan:
        stats = _train_batched(
            batcher, model, x, y, optimizer, plan, device, precision, hooks, cfg, aug
        )
        if stats is not None:
            return stats
    return _train_sequential(model, x, y, optimizer, plan, device, precision, hooks, cfg, aug)


class _Augment:
    """An augmenter with the client's generator: one ``sample`` per batch, in order."""

    def __init__(self, augmenter: Augmenter, gen: torch.Generator | None) -> None:
        assert gen is not None
        self.augmenter, self.gen = augmenter, gen

    def draws(self, plan: list[torch.Tensor]) -> list[AugParams]:
        return [self.augmenter.sample(len(idx), self.gen) for idx in plan]

    def __call__(self, xb: torch.Tensor) -> torch.Tensor:
        params = self.augmenter.sample(len(xb), self.gen).to(xb.device)
        return self.augmenter.apply(xb, params)


def _train_batched(
    batcher: Any,
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    optimizer: Optimizer,
    plan: list[torch.Tensor],
    device: torch.device,
    precision: str,
    hooks: TrainHooks,
    cfg: TrainConfig,
    aug: _Augment | None,
) -> TrainStats | None:
    """Submit to the round's batched loop; None: train sequentially (``auto`` fallback)."""
    from fedsim.algorithms import vectorize, vmap_train

    reason = vmap_train.blocker(model, optimizer, hooks)
    lock = vectorize.held_lock()
    if reason is None and lock is None:  # waiting while holding an unknown lock could deadlock
        reason = "the caller of train_local declared no lock (vectorize.released_while_waiting)"
    if reason is not None:
        vectorize.note_fallback(batcher, reason)
        return None
    job = vmap_train.make_job(model, optimizer, x, y, plan, device, precision, hooks)
    job.label_smoothing, job.clip_norm = float(cfg.label_smoothing), float(cfg.clip_norm)
    if aug is not None:  # the same draws, in the same order, as the sequential loop makes
        job.augmenter, job.aug_params = aug.augmenter, aug.draws(plan)
    job.lock = lock
    lock.release()  # the other clients of the round load their state meanwhile
    try:
        batcher.submit(job)
    finally:
        lock.acquire()
    if job.error is not None:
        vectorize.note_fallback(batcher, f"the batched step failed: {job.error}")
        with torch.no_grad():  # back to the state the job started from
            named = dict(model.named_parameters())
            for k, v in job.params.items():
                named[k].copy_(v)
            for k, b in model.named_buffers():
                b.copy_(job.buffers[k])
        return None
    return vmap_train.write_back(job)


def _train_sequential(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    optimizer: Optimizer,
    plan: list[torch.Tensor],
    device: torch.device,
    precision: str,
    hooks: TrainHooks,
    cfg: TrainConfig,
    aug: _Augment | None,
) -> TrainStats:
    train_mode(model)
    non_blocking = device.type == "cuda"
    if device.type == "cuda" and x.device != device:
        # the client's data go to the device once, not batch by batch
        x, y = x.to(device, non_blocking=False), y.to(device, non_blocking=False)
    total, steps, seen = 0.0, 0, 0
    channels_last = uses_channels_last(model)
    for idx in plan:
        xb = x[idx.to(x.device)].to(device, non_blocking=non_blocking)
        yb = y[idx.to(y.device)].to(device, non_blocking=non_blocking)
        if aug is not None:
            xb = aug(xb)
        if channels_last and xb.dim() == 4:
            xb = xb.contiguous(memory_format=torch.channels_last)
        optimizer.zero_grad(set_to_none=True)
        with autocast(device, precision):
            out = forward_batch(model, xb, yb, hooks.forward, cfg.label_smoothing)
            loss = out.ce if hooks.loss is None else hooks.loss(model, xb, yb, out)
            assert loss is not None  # forward "none" comes with a loss stage (TrainHooks)
        if hooks.prox_mu:
            assert hooks.prox_ref is not None, "TrainHooks.prox_mu needs prox_ref"
            loss = loss + proximal_term(model, hooks.prox_ref, hooks.prox_mu)
        loss.backward()
        if cfg.clip_norm > 0:
            trainable = [p for p in model.parameters() if p.requires_grad]
            torch.nn.utils.clip_grad_norm_(trainable, cfg.clip_norm, foreach=True)
        optimizer.step()
        if hooks.after_step is not None:
            hooks.after_step(model)
        total += float(loss.detach()) * len(idx)
        steps += 1
        seen += len(idx)
    return TrainStats(total / max(1, seen), steps, seen)


def forward_batch(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, forward: str, label_smoothing: float
) -> BatchOut:
    """What the loop computes on a batch before the loss stage (``TrainHooks.forward``).

    ``features`` calls ``model.features`` and ``model.head`` itself, the two halves of a
    :class:`fedsim.models.backbones.Backbone`'s ``forward``, so a stage that needs the embedding
    (FRAug) gets the very tensor the logits were computed from, with no forward hook.
    """
    if forward == "none":
        return BatchOut()
    features = None
    if forward == "features":
        features = model.features(x)  # type: ignore[operator]  # a Backbone: its two halves
        logits = model.head(features)  # type: ignore[operator]
    else:
        logits = model(x)
    ce = F.cross_entropy(logits, y, label_smoothing=label_smoothing)
    return BatchOut(logits, features, ce)


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
    if len(y) == 0:
        return 0.0, 0.0
    correct, loss = 0, 0.0
    for logits, yb in eval_batches(model, x, y, device, batch_size, precision):
        loss += float(F.cross_entropy(logits.float(), yb, reduction="sum"))
        correct += int((logits.argmax(1) == yb).sum())
    return correct / len(y), loss / len(y)


def eval_batches(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    device: torch.device,
    batch_size: int = 512,
    precision: str = "fp32",
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """``(logits, labels)`` of ``model`` (eval mode, no grad) batch by batch on ``device``."""
    model.eval()
    for start in range(0, len(y), batch_size):
        xb = x[start : start + batch_size].to(device)
        yb = y[start : start + batch_size].to(device)
        with torch.no_grad(), autocast(device, precision):
            logits = model(xb)
        yield logits, yb
