"""The batched local-training step behind ``runtime.vectorize`` (see
:mod:`fedsim.algorithms.vectorize`).

Each client's trainable parameters, frozen parameters, buffers and optimizer state are
stacked along a new leading dimension; one ``torch.func.vmap`` of ``functional_call`` runs
every client's forward pass at once and one backward pass of the summed losses gives every
client's gradient, and SGD (momentum,
Nesterov, weight decay) and Adam (:mod:`fedsim.algorithms.stacked_optim`) are applied to the stacked
tensors with the same formulas, in the same order of operations, as ``torch.optim.SGD`` /
``torch.optim.Adam`` (no dampening, no AMSGrad).  Every client
keeps its own index batches (drawn by :func:`fedsim.algorithms.training.batches` from its
own generator, in its order); at step ``t`` the clients that still have a batch are
grouped by that batch's size and each group is one batched call, so ragged client sizes
and step counts are exact (no padding: batch norm sees exactly the client's batch) and a
finished client is simply left out.  Batch norm in training mode updates each client's
running statistics in its own buffer slice.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, vmap

from fedsim.algorithms import optim
from fedsim.algorithms.hooks import TrainHooks, TrainStats, autocast, train_mode
from fedsim.algorithms.optim import Optimizer
from fedsim.algorithms.stacked_optim import StackedOptim


@dataclass
class Job:
    """One client's local training, as submitted by
    :func:`fedsim.algorithms.training.train_local`."""

    model: nn.Module
    optimizer: Optimizer  # fedsim.algorithms.optim's SGD / Adam, or torch.optim's
    names: list[str]  # trainable parameters, in model.parameters() order
    params: dict[str, torch.Tensor]
    frozen: dict[str, torch.Tensor]
    buffers: dict[str, torch.Tensor]
    state: dict[str, dict[str, Any]]  # optimizer state per trainable parameter name
    x: torch.Tensor
    y: torch.Tensor
    batches: list[torch.Tensor]
    device: torch.device
    precision: str
    prox_mu: float
    prox_ref: dict[str, torch.Tensor] | None
    lock: Any = None
    augmenter: Any = None  # fedsim.data.augment.Augmenter (train.augment), or None
    aug_params: list[Any] | None = None  # its draws, one AugParams per batch
    label_smoothing: float = 0.0
    clip_norm: float = 0.0
    done: bool = False
    error: BaseException | None = None
    stats: TrainStats | None = None
    out: dict[str, dict[str, Any]] = field(default_factory=dict)

    def key(self) -> tuple[Any, ...]:
        """Jobs with equal keys are trained in one batched loop."""
        g = self.optimizer.param_groups[0]
        hyper = tuple(sorted((k, str(v)) for k, v in g.items() if k != "params"))
        return (
            id(self.model),
            type(self.optimizer).__name__,
            hyper,
            tuple(self.names),
            tuple(self.frozen),
            tuple(self.buffers),
            self.prox_ref is not None,
            tuple(self.x.shape[1:]),
            self.x.dtype,
            str(self.device),
            self.precision,
            id(self.augmenter),
            self.label_smoothing,
            self.clip_norm,
        )


def blocker(model: nn.Module, optimizer: Optimizer, hooks: TrainHooks) -> str | None:
    """Why this training cannot be vectorised, or None."""
    if hooks.loss is not None or hooks.after_step is not None:
        return "the client's TrainHooks hold closures (loss / after_step)"
    if hooks.forward != "logits":
        return f"the client's TrainHooks ask the loop for forward={hooks.forward}"
    if any(isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0 for m in model.modules()):
        return "the model has dropout (random per client)"
    if len(optimizer.param_groups) != 1:
        return "the optimizer has several parameter groups"
    g = optimizer.param_groups[0]
    if isinstance(g["lr"], torch.Tensor):
        return "a tensor learning rate"
    if optim.kind(optimizer) == "sgd":
        if g["dampening"] or g["maximize"]:
            return "SGD with dampening or maximize"
        return None
    if optim.kind(optimizer) == "adam":
        if g["amsgrad"] or g["maximize"]:
            return "Adam with amsgrad or maximize"
        return None
    return f"optimizer {type(optimizer).__name__}"


def make_job(
    model: nn.Module,
    optimizer: Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    batches: list[torch.Tensor],
    device: torch.device,
    precision: str,
    hooks: TrainHooks,
) -> Job:
    """Snapshot a client's training (call with the model's lock held)."""
    by_id = {id(p): n for n, p in model.named_parameters()}
    trainable = [p for p in model.parameters() if p.requires_grad]
    names = [by_id[id(p)] for p in trainable]
    params = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    frozen = {n: p.detach() for n, p in model.named_parameters() if not p.requires_grad}
    buffers = {n: b.detach().clone() for n, b in model.named_buffers()}
    opt_params = optimizer.param_groups[0]["params"]
    state = {by_id[id(p)]: dict(optimizer.state.get(p, {})) for p in opt_params}
    ref = None
    if hooks.prox_mu:
        if hooks.prox_ref is None:
            raise ValueError("TrainHooks.prox_mu needs prox_ref")
        ref = {n: t.detach() for n, t in zip(names, hooks.prox_ref, strict=True)}
    return Job(
        model,
        optimizer,
        names,
        params,
        frozen,
        buffers,
        state,
        x,
        y,
        batches,
        device,
        precision,
        float(hooks.prox_mu),
        ref,
    )


@torch.no_grad()
def write_back(job: Job) -> TrainStats:
    """Put a trained job's parameters, buffers and optimizer state into its model."""
    named = dict(job.model.named_parameters())
    for n in job.names:
        named[n].copy_(job.out["params"][n])
    for n, b in job.model.named_buffers():
        b.copy_(job.out["buffers"][n])
    for n, st in job.out["state"].items():
        job.optimizer.state[named[n]] = st
    assert job.stats is not None
    return job.stats


def train_jobs(jobs: list[Job]) -> None:
    """Train every job (grouped by :meth:`Job.key`), filling ``job.out`` and ``job.stats``."""
    groups: dict[tuple[Any, ...], list[Job]] = {}
    for job in jobs:
        groups.setdefault(job.key(), []).append(job)
    for group in groups.values():
        lock = group[0].lock
        if lock is None:
            _train_group(group)
        else:
            with lock:  # functional_call swaps tensors into the shared module
                _train_group(group)


def _stack(dicts: list[dict[str, torch.Tensor]], dev: torch.device) -> dict[str, torch.Tensor]:
    return {k: torch.stack([d[k] for d in dicts]).to(dev) for k in dicts[0]}


def _pick(d: dict[str, torch.Tensor], sel: torch.Tensor, full: bool) -> dict[str, torch.Tensor]:
    return d if full else {k: v.index_select(0, sel) for k, v in d.items()}


def _train_group(jobs: list[Job]) -> None:
    j0 = jobs[0]
    model, dev, names = j0.model, j0.device, j0.names
    n = len(jobs)
    params = _stack([j.params for j in jobs], dev)
    frozen = _stack([j.frozen for j in jobs], dev) if j0.frozen else {}
    buffers = _stack([j.buffers for j in jobs], dev) if j0.buffers else {}
    ref = _stack([j.prox_ref for j in jobs if j.prox_ref is not None], dev) if j0.prox_ref else None
    dtype = next(iter(params.values())).dtype if params else torch.float32
    mu = torch.tensor([j.prox_mu for j in jobs], dtype=dtype, device=dev)
    # every client's data once on the device; a batch is a gather of global indices
    sizes = [len(j.y) for j in jobs]
    offsets = torch.tensor([0, *sizes[:-1]]).cumsum(0)
    data_x = torch.cat([j.x for j in jobs]).to(dev)
    data_y = torch.cat([j.y for j in jobs]).to(dev)
    steps = max(len(j.batches) for j in jobs)
    width = max((len(b) for j in jobs for b in j.batches), default=0)
    index = torch.zeros((n, steps, width), dtype=torch.long)
    bsize = torch.zeros((n, steps), dtype=torch.long)
    for i, j in enumerate(jobs):
        for t, b in enumerate(j.batches):
            index[i, t, : len(b)] = b + offsets[i]
            bsize[i, t] = len(b)
    index = index.to(dev)

    opt = StackedOptim(jobs, params, dev)

    def forward_one(
        p: dict[str, torch.Tensor],
        fz: dict[str, torch.Tensor],
        bf: dict[str, torch.Tensor],
        xb: torch.Tensor,
    ) -> torch.Tensor:
        return functional_call(model, ({**p, **fz}, bf), (xb,))

    forward = vmap(forward_one)

    def step_fn(
        p: dict[str, torch.Tensor],
        fz: dict[str, torch.Tensor],
        bf: dict[str, torch.Tensor],
        xb: torch.Tensor,
        yb: torch.Tensor,
        m: torch.Tensor,
        r: dict[str, torch.Tensor] | None,
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Every selected client's gradient and loss: one batched forward, one backward.

        The clients' losses are summed before the backward pass; client ``i``'s loss
        depends on row ``i`` of the stacked parameters only, so the gradient of the sum
        with respect to that row is client ``i``'s own gradient (cheaper than a
        ``vmap`` of ``grad``, which replays autograd once per batched call)."""
        leaves = {k: v.detach().requires_grad_(True) for k, v in p.items()}
        with torch.enable_grad():
            with autocast(dev, j0.precision):
                logits = forward(leaves, fz, bf, xb)
                per = F.cross_entropy(
                    logits.flatten(0, 1),
                    yb.flatten(),
                    reduction="none",
                    label_smoothing=j0.label_smoothing,
                )
            losses = _wide(per.view(yb.shape)).mean(1)
            if r is not None:
                total = torch.zeros(len(yb), device=dev, dtype=losses.dtype)
                for k in names:
                    total = total + (leaves[k] - r[k]).pow(2).reshape(len(yb), -1).sum(1)
                losses = losses + 0.5 * m * total
            grads = torch.autograd.grad(losses.sum(), [leaves[k] for k in names])
        return dict(zip(names, grads, strict=True)), losses.detach()

    record: list[tuple[torch.Tensor, torch.Tensor, int]] = []  # (members, losses, batch size)
    was_training = model.training
    train_mode(model)
    try:
        for t in range(steps):
            col = bsize[:, t]
            for size in torch.unique(col[col > 0]).tolist():
                sel = torch.nonzero(col == size).flatten()
                full = len(sel) == n
                sel_d = sel.to(dev)

                gidx = index[sel_d, t, :size]
                xb, yb = data_x[gidx], data_y[gidx]
                if j0.augmenter is not None:  # every client's own draws, in one batched call
                    draws = [jobs[i].aug_params[t] for i in sel.tolist()]
                    flat = j0.augmenter.apply(xb.flatten(0, 1), type(draws[0]).cat(draws).to(dev))
                    xb = flat.view_as(xb)
                p_sel, b_sel = _pick(params, sel_d, full), _pick(buffers, sel_d, full)
                grads, loss = step_fn(
                    p_sel,
                    _pick(frozen, sel_d, full),
                    b_sel,
                    xb,
                    yb,
                    mu[sel_d],
                    _pick(ref, sel_d, full) if ref is not None else None,
                )
                if j0.clip_norm > 0:
                    grads = _clip_rows(grads, j0.clip_norm)
                new_p = opt.step(p_sel, grads, sel_d, full)
                for k in names:
                    if full:
                        params[k] = new_p[k]
                    else:
                        params[k].index_copy_(0, sel_d, new_p[k])
                if not full:
                    for k, v in b_sel.items():
                        buffers[k].index_copy_(0, sel_d, v)
                record.append((sel, loss.detach(), size))
    finally:
        model.train(was_training)
    # per-client loss sums, in the sequential loop's order (step by step)
    totals = [0.0] * n
    counts = [0] * n
    seen = [0] * n
    for sel, vals, size in record:
        for i, v in zip(sel.tolist(), vals.float().cpu().tolist(), strict=True):
            totals[i] += v * size
            counts[i] += 1
            seen[i] += size
    for i, j in enumerate(jobs):
        j.out["params"] = {k: params[k][i] for k in names}
        j.out["buffers"] = {k: buffers[k][i] for k in buffers}
        st = opt.state_of(i, j)
        j.out["state"] = st
        j.stats = TrainStats(totals[i] / max(1, seen[i]), counts[i], seen[i])


def _wide(t: torch.Tensor) -> torch.Tensor:
    """``t`` in float32 when it is half precision (autocast), else as it is (float64 stays)."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def _clip_rows(grads: dict[str, torch.Tensor], max_norm: float) -> dict[str, torch.Tensor]:
    """``clip_grad_norm_`` for every client (row) at once: each row's global L2 norm."""
    sq = sum(_wide(g).pow(2).reshape(len(g), -1).sum(1) for g in grads.values())
    coef = (max_norm / (torch.as_tensor(sq).sqrt() + 1e-6)).clamp(max=1.0)
    return {k: g * coef.view((-1,) + (1,) * (g.dim() - 1)).to(g.dtype) for k, g in grads.items()}
