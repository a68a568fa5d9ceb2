"""Vectorised clients (runtime.vectorize) train exactly what the sequential loop trains."""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from fedsim.algorithms.training import TrainHooks, make_optimizer, train_local
from fedsim.algorithms.vectorize import RoundBatcher, VectorizeError, released_while_waiting
from fedsim.algorithms.vmap_train import train_jobs
from fedsim.config import AugmentConfig, BackboneConfig, TrainConfig
from fedsim.data.augment import build_augmenter
from fedsim.errors import ConfigError
from fedsim.models.modelzoo import initial_model

CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def _one_thread() -> Any:
    # float reductions depend on the thread count, and a batch-norm CNN on a few samples
    # amplifies that noise over steps (1 vs 2 threads alone moves its weights by ~1e-3):
    # compare the two loops under one thread, as runtime.threads=1 does for runtimes
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


Hooks = Callable[[nn.Module], TrainHooks]


def _data(sizes: list[int], shape: tuple[int, int, int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return [
        (torch.randn(n, *shape, generator=g), torch.randint(0, 10, (n,), generator=g))
        for n in sizes
    ]


def _clients(
    backbone: str,
    sizes: list[int],
    cfg: TrainConfig,
    mode: str,
    hooks: Hooks | None = None,
    drop: frozenset[int] = frozenset(),
    rounds: int = 1,
    shape: tuple[int, int, int] = (1, 16, 16),
    declare: bool = True,
    make_model: Callable[[], nn.Module] | None = None,
    augment: str = "",
) -> list[dict[str, Any]]:
    """Train ``len(sizes)`` clients on one shared model, as ``Client.fit`` does (under the
    environment lock); ``mode`` off = one after the other, on = greenlets around a batcher.
    ``rounds`` > 1 carries every client's optimizer state over (train.persist_optimizer)."""
    model = (
        make_model()
        if make_model is not None
        else initial_model(BackboneConfig(name=backbone, width=0.5), shape, 10, 0)
    )
    init = {k: v.clone() for k, v in model.state_dict().items()}
    data = _data(sizes, shape)
    lock = threading.Lock()
    out: list[dict[str, Any]] = [{} for _ in sizes]
    c = shape[0]
    aug = build_augmenter(AugmentConfig(recipe=augment), torch.zeros(c), torch.ones(c))

    def fit(i: int, rnd: int) -> None:
        if i in drop:
            raise RuntimeError("dropped")  # a crash before training: never submits
        with lock, released_while_waiting(lock if declare else None):
            model.load_state_dict(out[i].get("state", init))
            opt = make_optimizer(model, cfg)
            if "opt" in out[i]:
                opt.load_state_dict(out[i]["opt"])
            gen = torch.Generator().manual_seed(1000 * rnd + i)
            x, y = data[i]
            stats = train_local(
                model,
                x,
                y,
                cfg,
                opt,
                gen,
                CPU,
                hooks=hooks(model) if hooks else None,
                augmenter=aug,
                aug_gen=torch.Generator().manual_seed(7000 * rnd + i) if aug else None,
            )
            out[i] = {
                "state": {k: v.clone() for k, v in model.state_dict().items()},
                "opt": {
                    "state": {k: dict(v) for k, v in opt.state_dict()["state"].items()},
                    "param_groups": opt.state_dict()["param_groups"],
                },
                "stats": stats,
            }

    for rnd in range(rounds):
        if mode == "off":
            for i in range(len(sizes)):
                with contextlib.suppress(RuntimeError):
                    fit(i, rnd)
            continue
        batcher = RoundBatcher(mode)

        def run(i: int, rnd: int = rnd, b: RoundBatcher = batcher) -> None:
            with b.bind(), contextlib.suppress(RuntimeError):
                fit(i, rnd)

        batcher.run([functools.partial(run, i) for i in range(len(sizes))], train_jobs)
    return out


def _agree(a: list[dict[str, Any]], b: list[dict[str, Any]], tol: float = 1e-5) -> None:
    assert len(a) == len(b)
    for ca, cb in zip(a, b, strict=True):
        assert ca.keys() == cb.keys()
        if not ca:
            continue
        for k, v in ca["state"].items():
            w = cb["state"][k]
            if v.is_floating_point():
                assert torch.allclose(v, w, atol=tol, rtol=0), (k, (v - w).abs().max())
            else:
                assert torch.equal(v, w), k
        sa, sb = ca["stats"], cb["stats"]
        assert (sa.steps, sa.examples) == (sb.steps, sb.examples)
        assert sa.loss == pytest.approx(sb.loss, abs=1e-5)
        for pid, st in ca["opt"]["state"].items():
            for name, t in st.items():
                assert torch.allclose(t, cb["opt"]["state"][pid][name].to(t.dtype), atol=tol), name


SGD = TrainConfig(batch_size=10, lr=0.05)


@pytest.mark.parametrize("backbone", ["logreg", "mlp", "cnn_digits"])
def test_backbones_agree_with_sequential(backbone: str) -> None:
    # cnn_digits has batch norm in training mode: running statistics per client
    seq = _clients(backbone, [30, 30, 30], SGD, "off")
    vec = _clients(backbone, [30, 30, 30], SGD, "on")
    _agree(seq, vec)
    moved = seq[0]["state"]
    if backbone == "cnn_digits":
        assert any("running_mean" in k for k in moved)
        a = vec[0]["state"]
        b = vec[1]["state"]
        key = next(k for k in a if "running_mean" in k)
        assert not torch.equal(a[key], b[key])  # each client kept its own statistics


@pytest.fixture
def _float64() -> Any:
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(before)


@pytest.mark.usefixtures("_float64")
def test_whole_epochs_of_a_batch_norm_cnn_agree_in_float64() -> None:
    # Over whole local epochs a batch-norm CNN on noise amplifies float32 rounding: the
    # sequential float32 loop itself ends ~0.4 (parameters) away from its float64 result,
    # and the batched one as far.  In float64 the rounding is gone, so the two loops must
    # agree to float64 noise: step order, batch-norm statistics, momentum, ragged batches.
    cfg = TrainConfig(batch_size=16, lr=0.05, momentum=0.5)
    sizes = [120, 90, 100]
    seq = _clients("cnn_digits", sizes, cfg, "off", rounds=2, shape=(1, 8, 8))
    vec = _clients("cnn_digits", sizes, cfg, "on", rounds=2, shape=(1, 8, 8))
    assert seq[0]["state"]["head.weight"].dtype == torch.float64
    _agree(seq, vec, tol=1e-9)


@pytest.mark.usefixtures("_float64")
def test_a_proximal_term_and_clipping_agree_in_float64() -> None:
    # mu = 0.1 and the clipping norm are not exact in float32: the batched step must do
    # their arithmetic in the model's dtype, as the sequential loop does
    cfg = TrainConfig(batch_size=8, lr=0.05, momentum=0.9, clip_norm=0.5)
    seq = _clients("mlp", [40, 30], cfg, "off", hooks=_prox(0.1), rounds=2)
    vec = _clients("mlp", [40, 30], cfg, "on", hooks=_prox(0.1), rounds=2)
    _agree(seq, vec, tol=1e-12)


def test_ragged_sizes_and_step_counts() -> None:
    # 26 samples -> batches 10,10,6; 8 -> 8; 16 -> 10,6 (ragged sizes and step counts); a
    # batch-norm CNN on batches of 2-3 random samples is ill-conditioned: float noise then
    # grows to ~1e-4 between any two implementations (even 1 vs 2 threads), so not here
    _agree(
        _clients("cnn_digits", [26, 8, 16], SGD, "off"),
        _clients("cnn_digits", [26, 8, 16], SGD, "on"),
    )
    steps = TrainConfig(batch_size=4, local_steps=7, lr=0.05)
    _agree(_clients("mlp", [9, 30], steps, "off"), _clients("mlp", [9, 30], steps, "on"))


def test_dropped_clients_do_not_block_the_round() -> None:
    drop = frozenset({1, 3})
    seq = _clients("mlp", [10, 10, 15, 10], SGD, "off", drop=drop)
    vec = _clients("mlp", [10, 10, 15, 10], SGD, "on", drop=drop)
    assert vec[1] == {} and vec[3] == {}
    _agree(seq, vec)


def test_sgd_momentum_weight_decay_over_rounds() -> None:
    cfg = TrainConfig(batch_size=10, lr=0.01, momentum=0.9, weight_decay=1e-3)
    _agree(
        _clients("mlp", [15, 12], cfg, "off", rounds=2),
        _clients("mlp", [15, 12], cfg, "on", rounds=2),
    )


def test_nesterov_clipping_and_label_smoothing() -> None:
    cfg = TrainConfig(
        batch_size=10, lr=0.05, momentum=0.9, nesterov=True, clip_norm=0.5, label_smoothing=0.1
    )
    seq = _clients("mlp", [15, 12], cfg, "off", rounds=2)
    _agree(seq, _clients("mlp", [15, 12], cfg, "on", rounds=2))
    plain = _clients("mlp", [15, 12], TrainConfig(batch_size=10, lr=0.05, momentum=0.9), "off")
    assert not torch.allclose(seq[0]["state"]["head.weight"], plain[0]["state"]["head.weight"])


@pytest.mark.parametrize("recipe", ["cifar", "fraug_digits"])
def test_augmentation_batched_equals_sequential(recipe: str) -> None:
    # each client draws its own augmentation parameters; the batched loop applies all
    # clients' draws in one call and must give every client the batches it alone would see
    seq = _clients("cnn_digits", [20, 20, 20], SGD, "off", shape=(3, 16, 16), augment=recipe)
    vec = _clients("cnn_digits", [20, 20, 20], SGD, "on", shape=(3, 16, 16), augment=recipe)
    _agree(seq, vec)
    plain = _clients("cnn_digits", [20, 20, 20], SGD, "off", shape=(3, 16, 16))
    w = "conv1.weight"
    assert not torch.allclose(seq[0]["state"][w], plain[0]["state"][w])  # it augmented


def test_adam_over_rounds() -> None:
    cfg = TrainConfig(batch_size=10, lr=1e-3, optimizer="adam", weight_decay=1e-4)
    _agree(
        _clients("mlp", [15, 22, 8], cfg, "off", rounds=2),
        _clients("mlp", [15, 22, 8], cfg, "on", rounds=2),
    )


def _prox(mu: float) -> Hooks:
    def make(model: nn.Module) -> TrainHooks:
        ref = [p.detach().clone() + 0.1 for p in model.parameters() if p.requires_grad]
        return TrainHooks(prox_mu=mu, prox_ref=ref)

    return make


class _Tempered(nn.Module):
    """A linear classifier with a learnable 0-d temperature (a scalar parameter)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.lin = nn.Sequential(nn.Flatten(), nn.Linear(256, 10))
        self.scale = nn.Parameter(torch.tensor(1.5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.lin(x) * self.scale
        return out


def test_scalar_parameters_with_a_proximal_term_and_clipping() -> None:
    # a 0-d parameter is a 1-d row per client once stacked: the proximal term and the
    # per-client clipping norm must still sum it per client
    cfg = TrainConfig(batch_size=5, lr=0.1, momentum=0.9, clip_norm=0.5)
    seq = _clients("", [12, 17], cfg, "off", hooks=_prox(0.5), make_model=_Tempered)
    vec = _clients("", [12, 17], cfg, "on", hooks=_prox(0.5), make_model=_Tempered)
    _agree(seq, vec)
    assert float(seq[0]["state"]["scale"]) != pytest.approx(1.5)  # the scalar trained


def test_fedprox_proximal_term() -> None:
    seq = _clients("mlp", [12, 17], SGD, "off", hooks=_prox(0.5))
    _agree(seq, _clients("mlp", [12, 17], SGD, "on", hooks=_prox(0.5)))
    plain = _clients("mlp", [12, 17], SGD, "off")
    w = "head.weight" if "head.weight" in plain[0]["state"] else next(iter(plain[0]["state"]))
    assert not torch.allclose(plain[0]["state"][w], seq[0]["state"][w])  # the term acts


def test_closure_hooks_fall_back_under_auto_and_refuse_under_on(caplog: Any) -> None:
    def closure(model: nn.Module) -> TrainHooks:
        return TrainHooks(after_step=lambda m: None)

    with caplog.at_level(logging.INFO, logger="fedsim.algorithms.vectorize"):
        seq = _clients("logreg", [10, 10], SGD, "off", hooks=closure)
        auto = _clients("logreg", [10, 10], SGD, "auto", hooks=closure)
    _agree(seq, auto, tol=0.0)
    said = [r.getMessage() for r in caplog.records if "one by one" in r.getMessage()]
    assert len(said) == 1 and "closures" in said[0]
    with pytest.raises(VectorizeError, match=r"runtime.vectorize=on: .*closures"):
        model = initial_model(BackboneConfig(name="logreg"), (1, 8, 8), 10, 0)
        batcher = RoundBatcher("on")
        with batcher.bind():
            x, y = _data([10], (1, 8, 8))[0]
            train_local(
                model,
                x,
                y,
                SGD,
                make_optimizer(model, SGD),
                torch.Generator(),
                CPU,
                hooks=closure(model),
            )


# ------------------------------------------------------------------ end to end


def _rows(record: dict[str, Any]) -> list[dict[str, Any]]:
    path = Path(record["run_dir"]) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize(
    ("strategy", "backbone", "rounds", "tol", "extra"),
    [
        ("fedavg", "mlp", 2, 1e-6, ()),
        ("fedprox", "mlp", 2, 1e-6, ()),
        ("fedavg", "logreg", 2, 1e-6, ()),
        # The digits CNN is compared at one local step per round: over whole epochs this
        # BatchNorm CNN amplifies float32 rounding, in either loop (README,
        # runtime.vectorize); test_whole_epochs_of_a_batch_norm_cnn_agree_in_float64
        # checks the whole-epoch update itself.  At one step per round both agree to ~1e-7.
        ("fedavg", "cnn_digits", 2, 1e-5, ("train.local_steps=1",)),
    ],
)
def test_run_on_matches_off(
    fast_cfg: Any,
    tmp_path: Path,
    strategy: str,
    backbone: str,
    rounds: int,
    tol: float,
    extra: tuple[str, ...],
) -> None:
    from fedsim.engine.runner import execute

    common = (
        f"rounds={rounds}",
        "runtime.threads=1",
        "scenario.num_clients=4",
        f"strategy={strategy}",
        f"backbone={backbone}",
        *extra,
    )
    off = _rows(execute(fast_cfg(*common, f"output_dir={tmp_path}/off")))
    on = _rows(execute(fast_cfg(*common, "runtime.vectorize=on", f"output_dir={tmp_path}/on")))
    assert [r["round"] for r in on] == list(range(1, rounds + 1))
    keys = ["train/loss", "eval/loss"]
    if backbone != "cnn_digits":
        keys += ["eval/acc", "eval/global_acc"]
    for key in keys:
        assert [r[key] for r in on] == pytest.approx([r[key] for r in off], abs=tol), key


def test_on_refuses_what_cannot_vectorise(fast_cfg: Any) -> None:
    from fedsim.engine.validation import validate

    with pytest.raises(ConfigError, match=r"runtime.vectorize=on: strategy=fraug: .*closure"):
        validate(fast_cfg("strategy=fraug", "runtime.vectorize=on"))
    with pytest.raises(ConfigError, match=r"runtime.vectorize=on: only runtime=inline"):
        validate(fast_cfg("runtime=ray", "runtime.vectorize=on"))
    with pytest.raises(ConfigError, match=r"runtime.vectorize: must be one of auto, on, off"):
        validate(fast_cfg("runtime.vectorize=sometimes"))
    validate(fast_cfg("strategy=fraug", "runtime.vectorize=auto"))  # auto accepts it


def test_auto_falls_back_for_fraug_and_says_so(fast_cfg: Any, tmp_path: Path, caplog: Any) -> None:
    from fedsim.engine.runner import execute

    with caplog.at_level(logging.INFO, logger="fedsim.algorithms.vectorize"):
        rec = execute(
            fast_cfg(
                "strategy=fraug", "rounds=1", "scenario.num_clients=3", "runtime.vectorize=auto"
            )
        )
    assert rec["status"] == "complete"
    said = [r.getMessage() for r in caplog.records if "one by one" in r.getMessage()]
    assert len(said) == 1, said


def test_an_undeclared_lock_trains_one_by_one_instead_of_deadlocking(caplog: Any) -> None:
    with caplog.at_level(logging.INFO, logger="fedsim.algorithms.vectorize"):
        auto = _clients("logreg", [10, 10], SGD, "auto", declare=False)
    _agree(_clients("logreg", [10, 10], SGD, "off"), auto, tol=0.0)
    assert any("declared no lock" in r.getMessage() for r in caplog.records)


def test_an_interrupt_surfaces_at_once_and_unwinds_the_waiting_clients() -> None:
    # a client waiting in submit while another is interrupted: the interrupt is not held
    # back until the batched step ran, and the waiting client's finally blocks run
    batcher = RoundBatcher("on")
    trained: list[Any] = []
    unwound: list[bool] = []

    class _Job:
        done = False
        error = None

    def waits() -> None:
        with batcher.bind():
            try:
                batcher.submit(_Job())
            finally:
                unwound.append(True)

    def interrupted() -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        batcher.run([waits, interrupted], trained.append)
    assert trained == [] and unwound == [True]
    with pytest.raises(RuntimeError, match=r"outside RoundBatcher\.run"):
        batcher.submit(_Job())  # the round is over


def test_client_errors_are_raised_after_the_round() -> None:
    batcher = RoundBatcher("on")
    order: list[str] = []

    def fails() -> None:
        order.append("fails")
        raise ValueError("client 0")

    def works() -> str:
        order.append("works")
        return "reply"

    with pytest.raises(ValueError, match="client 0"):
        batcher.run([fails, works], lambda jobs: None)
    assert order == ["fails", "works"]  # the other client still ran
