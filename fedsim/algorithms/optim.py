"""The client's SGD and Adam on CPU, without the start-up of ``torch.optim``.

Creating the first ``torch.optim`` optimiser imports ``torch._dynamo`` (every
``Optimizer`` method is wrapped in ``torch._disable_dynamo``, which imports it on first
call): about 1.3 s on a 2-core CPU, more than a one-round default run spends training
(``bench/results/startup.md``).  :class:`SGD` and :class:`Adam` here do the arithmetic of
``torch.optim.SGD`` and ``torch.optim.Adam`` as torch 2.13 runs it for CPU tensors (its
single-tensor path: ``_single_tensor_sgd``, ``_single_tensor_adam``), the same tensor
operations in the same order, so the weights after any number of steps are bit-identical
(``tests/test_optim.py`` compares them for every option ``train.*`` allows).  They keep
torch's ``param_groups`` (same keys), ``state`` (``momentum_buffer``; ``step``,
``exp_avg``, ``exp_avg_sq``) and ``state_dict()`` layout, so persisted optimiser state
(``train.persist_optimizer``) and the batched loop (:mod:`fedsim.algorithms.vmap_train`) read
either kind.

Only what fedsim's configuration can ask for is implemented: one parameter group; SGD
with momentum, Nesterov and weight decay (no dampening, no ``maximize``); Adam with
weight decay (default betas and eps, no AMSGrad).  On other devices torch chooses its
multi-tensor (``foreach``) kernels, whose rounding is not re-derived here:
:func:`fedsim.algorithms.training.make_optimizer` keeps ``torch.optim`` there (see :func:`native`).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from copy import deepcopy
from typing import Any

import torch

__all__ = ["SGD", "Adam", "LocalOptimizer", "Optimizer", "kind", "native", "sgd"]


class LocalOptimizer:
    """What :class:`SGD` and :class:`Adam` share: parameters, state, (de)serialisation.

    Parameters
    ----------
    params
        The tensors to optimise (one group), in the order ``state_dict`` numbers them.
    defaults
        The group's hyper-parameters, under ``torch.optim``'s keys and in its order.
    """

    def __init__(self, params: Iterable[torch.Tensor], defaults: dict[str, Any]) -> None:
        tensors = list(params)
        if not tensors:  # as torch.optim says it
            raise ValueError("optimizer got an empty parameter list")
        self.defaults = defaults
        self.param_groups: list[dict[str, Any]] = [{"params": tensors, **defaults}]
        self.state: defaultdict[torch.Tensor, dict[str, Any]] = defaultdict(dict)

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Forget the gradients (``None``), or zero them in place."""
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if set_to_none:
                    p.grad = None
                    continue
                if p.grad.grad_fn is not None:
                    p.grad.detach_()
                else:
                    p.grad.requires_grad_(False)
                p.grad.zero_()

    def step(self) -> None:
        """One update of every parameter that has a gradient (autograd off)."""
        with torch.no_grad():
            for group in self.param_groups:
                self._update(group, [p for p in group["params"] if p.grad is not None])

    def _update(self, group: dict[str, Any], params: list[torch.Tensor]) -> None:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        """``{"state": {index: {name: tensor}}, "param_groups": [...]}`` as torch.optim
        writes it: parameters numbered in group order, state tensors not copied."""
        index = {id(p): i for i, p in enumerate(self.param_groups[0]["params"])}
        groups = [
            {**{k: v for k, v in g.items() if k != "params"}, "params": list(index.values())}
            for g in self.param_groups
        ]
        state = {index[id(p)]: st for p, st in self.state.items()}
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Take a :meth:`state_dict` (this class's or ``torch.optim``'s): the saved
        hyper-parameters and state, state tensors moved to each parameter's device and
        floating dtype (``step`` left as saved), as ``torch.optim`` loads them."""
        saved_groups = deepcopy(state_dict["param_groups"])
        if len(saved_groups) != len(self.param_groups):
            raise ValueError("loaded state dict has a different number of parameter groups")
        for g, ng in zip(self.param_groups, saved_groups, strict=True):
            if len(g["params"]) != len(ng["params"]):
                raise ValueError(
                    "loaded state dict contains a parameter group "
                    "that doesn't match the size of optimizer's group"
                )
        by_index = {
            i: p
            for g, ng in zip(self.param_groups, saved_groups, strict=True)
            for i, p in zip(ng["params"], g["params"], strict=True)
        }
        state: defaultdict[Any, dict[str, Any]] = defaultdict(dict)
        for i, st in state_dict["state"].items():
            if i not in by_index:
                state[i] = st
                continue
            p = by_index[i]
            state[p] = {k: _cast(p, k, v) for k, v in st.items()}
        for g, ng in zip(self.param_groups, saved_groups, strict=True):
            ng["params"] = g["params"]
        self.param_groups = saved_groups
        self.state = state  # keys: the parameters (an unknown index stays as saved)


def _cast(param: torch.Tensor, key: str, value: Any) -> Any:
    """A saved state entry on ``param``'s device (and dtype when floating); ``step``
    stays where it is (torch keeps it on the CPU in float32)."""
    if not isinstance(value, torch.Tensor) or key == "step":
        return value
    if param.is_floating_point():
        return value.to(dtype=param.dtype, device=param.device)
    return value.to(device=param.device)


class SGD(LocalOptimizer):
    """``torch.optim.SGD(params, lr, momentum, weight_decay=..., nesterov=...)`` on CPU.

    Per parameter, with ``g`` its gradient: ``g += weight_decay * w``; with momentum,
    ``b = g`` at the first step and ``b = momentum * b + g`` after, then ``g = b`` (or
    ``g + momentum * b`` with Nesterov); ``w -= lr * g``.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor],
        lr: float,
        momentum: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
    ) -> None:
        if lr < 0.0 or momentum < 0.0 or weight_decay < 0.0:
            raise ValueError(
                f"SGD: negative lr, momentum or weight_decay ({lr}, {momentum}, {weight_decay})"
            )
        if nesterov and momentum <= 0:
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")
        super().__init__(
            params,
            {
                "lr": lr,
                "momentum": momentum,
                "dampening": 0,
                "weight_decay": weight_decay,
                "nesterov": nesterov,
                "maximize": False,
                "foreach": None,
                "differentiable": False,
                "fused": None,
            },
        )

    def _update(self, group: dict[str, Any], params: list[torch.Tensor]) -> None:
        lr, momentum, wd = group["lr"], group["momentum"], group["weight_decay"]
        for p in params:
            grad = p.grad
            assert grad is not None
            if wd != 0:
                grad = grad.add(p, alpha=wd)
            if momentum != 0:
                buf = self.state[p].get("momentum_buffer")
                if buf is None:
                    buf = grad.detach().clone()
                else:
                    buf.mul_(momentum).add_(grad, alpha=1 - group["dampening"])
                self.state[p]["momentum_buffer"] = buf
                grad = grad.add(buf, alpha=momentum) if group["nesterov"] else buf
            p.add_(grad, alpha=-lr)


class Adam(LocalOptimizer):
    """``torch.optim.Adam(params, lr, weight_decay=...)`` on CPU (betas (0.9, 0.999),
    eps 1e-8).

    Per parameter, at step ``t`` (a float32 CPU tensor, as torch keeps it):
    ``g += weight_decay * w``; ``m = lerp(m, g, 1 - beta1)``;
    ``v = beta2 * v + (1 - beta2) * g * g``;
    ``w -= lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)``.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
    ) -> None:
        if lr < 0.0 or eps < 0.0 or weight_decay < 0.0:
            raise ValueError(
                f"Adam: negative lr, eps or weight_decay ({lr}, {eps}, {weight_decay})"
            )
        if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise ValueError(f"Adam: betas must be in [0, 1), got {betas}")
        super().__init__(
            params,
            {
                "lr": lr,
                "betas": (float(betas[0]), float(betas[1])),
                "eps": eps,
                "weight_decay": weight_decay,
                "amsgrad": False,
                "maximize": False,
                "foreach": None,
                "capturable": False,
                "differentiable": False,
                "fused": None,
                "decoupled_weight_decay": False,
            },
        )

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        for st in self.state.values():  # a plain-number step becomes torch's tensor
            if st and not torch.is_tensor(st["step"]):
                st["step"] = torch.tensor(float(st["step"]), dtype=_scalar_dtype())

    def _update(self, group: dict[str, Any], params: list[torch.Tensor]) -> None:
        lr, (beta1, beta2) = group["lr"], group["betas"]
        wd, eps = group["weight_decay"], group["eps"]
        for p in params:
            grad = p.grad
            assert grad is not None
            st = self.state[p]
            if not st:
                st["step"] = torch.tensor(0.0, dtype=_scalar_dtype(), device="cpu")
                st["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                st["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            exp_avg, exp_avg_sq, step_t = st["exp_avg"], st["exp_avg_sq"], st["step"]
            step_t += 1
            if wd != 0:
                grad = grad.add(p, alpha=wd)
            exp_avg.lerp_(grad, 1 - beta1)
            exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            step = step_t.item()
            bias_correction1 = 1 - beta1**step
            bias_correction2 = 1 - beta2**step
            step_size = lr / bias_correction1
            denom = (exp_avg_sq.sqrt() / bias_correction2**0.5).add_(eps)
            p.addcdiv_(exp_avg, denom, value=-step_size)


def _scalar_dtype() -> torch.dtype:
    """The dtype of Adam's ``step`` (torch's ``_get_scalar_dtype``)."""
    return torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32


#: Either kind of optimiser fedsim's training loop accepts.
Optimizer = torch.optim.Optimizer | LocalOptimizer


def kind(optimizer: Optimizer) -> str | None:
    """``"sgd"`` or ``"adam"`` for this module's classes and torch's; None otherwise."""
    t = type(optimizer)
    if t is SGD or t is torch.optim.SGD:
        return "sgd"
    if t is Adam or t is torch.optim.Adam:
        return "adam"
    return None


def native(params: Sequence[torch.Tensor]) -> bool:
    """True when torch would update ``params`` with its single-tensor path (all of them
    on the CPU), the one :class:`SGD` / :class:`Adam` reproduce bit for bit."""
    return all(p.device.type == "cpu" for p in params)


def sgd(
    params: Iterable[torch.Tensor],
    lr: float,
    momentum: float = 0.0,
    weight_decay: float = 0.0,
    nesterov: bool = False,
) -> Optimizer:
    """SGD over ``params``: this module's on the CPU (torch's arithmetic bit for bit, no
    ``torch._dynamo`` import), ``torch.optim.SGD`` elsewhere (see :func:`native`).  For
    the optimisers an algorithm keeps besides the client's (FRAug's generator and
    transformation network, FedoSSL's centroids, SimCLR pretraining)."""
    tensors = list(params)
    cls = SGD if native(tensors) else torch.optim.SGD
    return cls(tensors, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov)
