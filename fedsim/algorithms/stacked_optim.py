"""SGD and Adam on stacked tensors: the optimiser of the batched local-training step.

:mod:`fedsim.algorithms.vmap_train` computes every client's gradient in one
``torch.func.vmap`` call; this module applies the update to the stacked parameters (one
row per client) with the same formulas, in the same order of operations, as
``torch.optim.SGD`` / ``torch.optim.Adam`` (defaults: no dampening, no AMSGrad), and hands
each client's state back in the shape ``torch.optim`` keeps it.  It is separate from the
batched step because its exactness is a question of optimiser arithmetic alone: how
gradients are grouped and gathered is none of its business.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from fedsim.algorithms import optim

if TYPE_CHECKING:  # the jobs are built and trained in vmap_train, which imports this module
    from fedsim.algorithms.vmap_train import Job


class StackedOptim:
    """``torch.optim.SGD`` / ``Adam`` (or :mod:`fedsim.algorithms.optim`'s, the same arithmetic) on
    stacked tensors (one row per client)."""

    def __init__(self, jobs: list[Job], params: dict[str, torch.Tensor], dev: torch.device):
        g = jobs[0].optimizer.param_groups[0]
        self.names = jobs[0].names
        self.adam = optim.kind(jobs[0].optimizer) == "adam"
        self.lr, self.wd = float(g["lr"]), float(g["weight_decay"])
        self.momentum = 0.0 if self.adam else float(g["momentum"])
        self.nesterov = bool(g.get("nesterov", False))
        self.dev = dev

        def stacked(name: str) -> dict[str, torch.Tensor]:  # absent state starts at zeros
            return {
                k: torch.stack(
                    [
                        j.state[k][name].to(dev) if name in j.state[k] else torch.zeros_like(v[0])
                        for j in jobs
                    ]
                )
                for k, v in params.items()
            }

        if self.adam:
            self.beta1, self.beta2 = (float(b) for b in g["betas"])
            self.eps = float(g["eps"])
            self.exp_avg, self.exp_avg_sq = stacked("exp_avg"), stacked("exp_avg_sq")
            first = self.names[0] if self.names else ""
            self.count = torch.tensor(
                [float(j.state.get(first, {}).get("step", 0.0)) for j in jobs], dtype=torch.float64
            )
        elif self.momentum:
            self.buf = stacked("momentum_buffer")
            self.has_buf = torch.tensor(
                [
                    all(j.state[k].get("momentum_buffer") is not None for k in self.names)
                    for j in jobs
                ],
                device=dev,
            )

    @staticmethod
    def _rows(d: dict[str, torch.Tensor], k: str, sel: torch.Tensor, full: bool) -> torch.Tensor:
        return d[k] if full else d[k].index_select(0, sel)

    @staticmethod
    def _put(
        d: dict[str, torch.Tensor], k: str, sel: torch.Tensor, full: bool, v: torch.Tensor
    ) -> None:
        if full:
            d[k] = v
        else:
            d[k].index_copy_(0, sel, v)

    def step(
        self,
        p: dict[str, torch.Tensor],
        grads: dict[str, torch.Tensor],
        sel: torch.Tensor,
        full: bool,
    ) -> dict[str, torch.Tensor]:
        """One optimiser step of the selected clients: their new parameters."""
        new: dict[str, torch.Tensor] = {}
        if self.adam:
            cpu_sel = sel.cpu()
            self.count[cpu_sel] += 1
            stp = self.count[cpu_sel]
            step_size = (self.lr / (1 - self.beta1**stp)).float().to(self.dev)
            bc2_sqrt = ((1 - self.beta2**stp) ** 0.5).float().to(self.dev)
        for k in self.names:
            gk = grads[k] if not self.wd else grads[k] + self.wd * p[k]
            shape = (-1,) + (1,) * (gk.dim() - 1)
            if self.adam:
                m = torch.lerp(self._rows(self.exp_avg, k, sel, full), gk, 1 - self.beta1)
                v = (
                    self._rows(self.exp_avg_sq, k, sel, full) * self.beta2
                    + (1 - self.beta2) * gk * gk
                )
                denom = v.sqrt() / bc2_sqrt.view(shape) + self.eps
                new[k] = p[k] + (-step_size).view(shape) * (m / denom)
                self._put(self.exp_avg, k, sel, full, m)
                self._put(self.exp_avg_sq, k, sel, full, v)
                continue
            if self.momentum:
                hb = self.has_buf if full else self.has_buf.index_select(0, sel)
                b = self._rows(self.buf, k, sel, full)
                buf = torch.where(hb.view(shape), b * self.momentum + gk, gk)
                self._put(self.buf, k, sel, full, buf)
                gk = gk + self.momentum * buf if self.nesterov else buf
            new[k] = p[k] - self.lr * gk
        if self.momentum:
            self.has_buf[sel] = True
        return new

    def state_of(self, i: int, job: Job) -> dict[str, dict[str, Any]]:
        """Client ``i``'s optimizer state after training, as torch.optim keeps it."""
        if self.adam and float(self.count[i]) > 0:
            return {
                k: {
                    "step": torch.tensor(float(self.count[i])),
                    "exp_avg": self.exp_avg[k][i].clone(),
                    "exp_avg_sq": self.exp_avg_sq[k][i].clone(),
                }
                for k in self.names
            }
        if self.momentum and bool(self.has_buf[i]):
            return {k: {"momentum_buffer": self.buf[k][i].clone()} for k in self.names}
        return {k: dict(job.state[k]) for k in self.names if job.state[k]}
