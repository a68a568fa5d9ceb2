"""fedsim's own SGD / Adam (:mod:`fedsim.algorithms.optim`) against ``torch.optim``: the same
weights, bit for bit, and the same state, for every option ``train.*`` allows; and
training without importing ``torch._dynamo``."""

from __future__ import annotations

import itertools
import subprocess
import sys
from typing import Any

import pytest
import torch
from torch import nn

from fedsim.algorithms import optim
from fedsim.algorithms.training import make_optimizer, train_local
from fedsim.config import TrainConfig

CPU = torch.device("cpu")

#: every optimiser setting the configuration allows (validate_train: Nesterov needs SGD
#: with momentum > 0; Adam takes lr and weight_decay)
SETTINGS = [
    *(
        TrainConfig(lr=0.05, momentum=m, nesterov=n, weight_decay=wd)
        for m, n, wd in itertools.product((0.0, 0.9), (False, True), (0.0, 5e-4))
        if not (n and m == 0)
    ),
    *(TrainConfig(optimizer="adam", lr=1e-2, weight_decay=wd) for wd in (0.0, 5e-4)),
]


def _ids(cfg: TrainConfig) -> str:
    return f"{cfg.optimizer}-m{cfg.momentum}-nesterov{int(cfg.nesterov)}-wd{cfg.weight_decay}"


def _model(seed: int = 0) -> nn.Module:
    """Conv, batch norm and linear layers: weights of four shapes, and biases."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 6 * 6, 5),
    )


def _torch_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(
        params,
        lr=cfg.lr,
        momentum=cfg.momentum,
        weight_decay=cfg.weight_decay,
        nesterov=cfg.nesterov,
    )


def _steps(model: nn.Module, opt: Any, n: int, seed: int = 1) -> None:
    gen = torch.Generator().manual_seed(seed)
    for _ in range(n):
        x = torch.randn(6, 1, 8, 8, generator=gen)
        y = torch.randint(0, 5, (6,), generator=gen)
        opt.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()


def _same_state(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert a.keys() == b.keys()
    for i in a:
        assert a[i].keys() == b[i].keys()
        for k in a[i]:
            assert a[i][k].dtype == b[i][k].dtype, (i, k)
            assert torch.equal(a[i][k], b[i][k]), (i, k)


@pytest.mark.parametrize("cfg", SETTINGS, ids=_ids)
def test_weights_and_state_equal_torch_optim_bit_for_bit(cfg: TrainConfig) -> None:
    ours_model, ref_model = _model(), _model()
    ours = make_optimizer(ours_model, cfg)
    ref = _torch_optimizer(ref_model, cfg)
    assert isinstance(ours, optim.LocalOptimizer)  # not torch.optim on the CPU

    _steps(ours_model, ours, 7)
    _steps(ref_model, ref, 7)

    for (name, a), b in zip(
        ours_model.state_dict().items(), ref_model.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name  # bitwise, not approximately
    _same_state(ours.state_dict()["state"], ref.state_dict()["state"])
    assert ours.state_dict()["param_groups"] == ref.state_dict()["param_groups"]


@pytest.mark.parametrize("cfg", SETTINGS, ids=_ids)
def test_saved_state_continues_alike_in_either_kind(cfg: TrainConfig) -> None:
    # round 1 trains, its state is saved (train.persist_optimizer); round 2 starts a new
    # optimiser from it: ours from torch's state and torch's from ours give one result
    models = [_model() for _ in range(2)]
    first = [make_optimizer(models[0], cfg), _torch_optimizer(models[1], cfg)]
    for m, o in zip(models, first, strict=True):
        _steps(m, o, 3)
    saved = [o.state_dict() for o in first]

    again = [make_optimizer(models[0], cfg), _torch_optimizer(models[1], cfg)]
    again[0].load_state_dict(saved[1])
    again[1].load_state_dict(saved[0])
    for m, o in zip(models, again, strict=True):
        _steps(m, o, 3, seed=2)

    for a, b in zip(models[0].parameters(), models[1].parameters(), strict=True):
        assert torch.equal(a, b)
    _same_state(again[0].state_dict()["state"], again[1].state_dict()["state"])


def test_frozen_parameters_get_no_state_and_no_update() -> None:
    model = _model()
    model[0].weight.requires_grad_(False)
    before = model[0].weight.clone()
    opt = make_optimizer(model, TrainConfig(lr=0.1, momentum=0.9))

    _steps(model, opt, 2)

    assert torch.equal(model[0].weight, before)
    assert len(opt.state_dict()["state"]) == len(list(model.parameters())) - 1


def test_zero_grad_set_to_none_false_zeroes_in_place() -> None:
    model = _model()
    opt = make_optimizer(model, TrainConfig())
    _steps(model, opt, 1)
    grad = model[4].weight.grad
    assert grad is not None and grad.abs().sum() > 0

    opt.zero_grad(set_to_none=False)

    assert model[4].weight.grad is grad and not grad.any()


@pytest.mark.parametrize(
    "cfg",
    [
        TrainConfig(lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4, clip_norm=0.5),
        TrainConfig(optimizer="adam", lr=1e-2, label_smoothing=0.1, local_epochs=2),
    ],
    ids=["sgd-nesterov-clip", "adam-smoothing"],
)
def test_train_local_gives_the_weights_torch_optim_gives(cfg: TrainConfig) -> None:
    x = torch.randn(40, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    y = torch.arange(40) % 5
    ours_model, ref_model = _model(), _model()

    for model, opt in (
        (ours_model, make_optimizer(ours_model, cfg)),
        (ref_model, _torch_optimizer(ref_model, cfg)),
    ):
        gen = torch.Generator().manual_seed(4)
        train_local(model, x, y, cfg, opt, gen, CPU)

    for a, b in zip(ours_model.state_dict().values(), ref_model.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_optimizer_kinds_are_recognised() -> None:
    p = [nn.Parameter(torch.zeros(2))]
    assert optim.kind(optim.SGD(p, lr=0.1)) == optim.kind(torch.optim.SGD(p, lr=0.1)) == "sgd"
    assert optim.kind(optim.Adam(p)) == optim.kind(torch.optim.Adam(p)) == "adam"
    assert optim.kind(torch.optim.RMSprop(p)) is None
    with pytest.raises(ValueError, match="empty parameter list"):
        optim.SGD([], lr=0.1)


def test_training_on_the_cpu_never_imports_torch_dynamo() -> None:
    # the first torch.optim optimiser imports torch._dynamo (about 1.3 s of start-up);
    # a fresh process shows whether the training loop still pays it
    code = (
        "import sys, torch\n"
        "from fedsim.config import TrainConfig\n"
        "from fedsim.algorithms.training import make_optimizer, train_local\n"
        "for cfg in (TrainConfig(momentum=0.9, clip_norm=1.0), TrainConfig(optimizer='adam')):\n"
        "    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))\n"
        "    opt = make_optimizer(model, cfg)\n"
        "    x, y = torch.randn(8, 4), torch.arange(8) % 3\n"
        "    train_local(model, x, y, cfg, opt, torch.Generator().manual_seed(0),\n"
        "                torch.device('cpu'))\n"
        "    opt.load_state_dict(opt.state_dict())\n"
        "print('torch._dynamo' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"
