"""What a fedsim client is: the FedAvg client, the template of its round, the per-process
environment.

A client sees the global arrays as decoded from ``channel.down`` and replies with its
arrays; the channels, the keys that must stay local, faults and attacks are applied
around it by the ClientApp mods of :mod:`fedsim.algorithms.wrap.client`, so no client can forget
or bypass them.

A simulated client is rebuilt for every message (Flower's model); what must persist lives
in ``context.state`` under documented keys:

* ``fedsim.local`` — ArrayRecord of the tensors that never leave the client
  (:meth:`Client.local_keys`: FedBN's batch-norm layers, ...);
* ``fedsim.optim`` — ArrayRecord of optimizer state when ``train.persist_optimizer``.

A client's round of training is a :class:`LocalRun`: named stages (data, setup, loss,
after-step, finish) that :meth:`Client.fit`, the only ``fit``, runs around the one
training loop; an algorithm fills stages, it never rewrites ``fit`` or the shared config.

The heavy objects (data, model, device) live in a :class:`ClientEnv` built once per
process and reused by every client that process hosts.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

import numpy as np
import torch
from flwr.app import ArrayRecord, RecordDict
from torch import nn

from fedsim.algorithms.channels import Links, build_links
from fedsim.algorithms.optim import Optimizer
from fedsim.algorithms.payloads import EvalIns, EvalRes, TrainIns, TrainRes
from fedsim.algorithms.schedules import lr_at
from fedsim.algorithms.task import Workload
from fedsim.algorithms.training import (
    LossStage,
    TrainHooks,
    TrainStats,
    evaluate_model,
    make_optimizer,
    train_local,
)
from fedsim.algorithms.vectorize import released_while_waiting
from fedsim.config import RunConfig, TrainConfig
from fedsim.data.augment import Augmenter, build_augmenter
from fedsim.data.federation import Federation
from fedsim.models.modelzoo import frozen_keys, resolve_device
from fedsim.records import (
    array_records,
    arrays_from_state,
    load_state,
    numpy_from_arrays,
    state_from_arrays,
)
from fedsim.seeding import torch_generator

if TYPE_CHECKING:  # the engine hands the context in; the API does not import it
    from fedsim.engine.context import RunContext

LOCAL_KEY = "fedsim.local"
OPTIM_KEY = "fedsim.optim"


@dataclass
class ClientEnv:
    """Process-wide objects shared by the clients this process hosts."""

    run: RunContext  # the run this process's clients take part in
    workload: Workload  # the federation, and the model object the clients load into
    init_state: dict[str, torch.Tensor]
    device: torch.device
    lock: threading.Lock
    links: Links  # the run's channel links (fedsim.algorithms.channels), built once here
    augmenter: Augmenter | None = None  # train.augment (None: no op active)
    frozen: frozenset[str] = frozenset()  # state keys outside train.trainable: never sent

    @property
    def cfg(self) -> RunConfig:
        return self.run.cfg

    @property
    def fed(self) -> Federation:
        """The federation (a task without data has none: its clients never ask)."""
        if self.workload.fed is None:
            raise TypeError(f"scenario.task={self.cfg.scenario.task} has no dataset")
        return self.workload.fed

    @property
    def model(self) -> nn.Module:
        """The one model object this process's clients load their arrays into."""
        if self.workload.model is None:
            raise TypeError(f"scenario.task={self.cfg.scenario.task} has no network")
        return self.workload.model

    @property
    def buffer_keys(self) -> frozenset[str]:
        """State-dict keys of the model's buffers (BatchNorm statistics, ...)."""
        if self.workload.model is None:
            return frozenset()
        return frozenset(name for name, _ in self.workload.model.named_buffers())


def client_env(ctx: RunContext) -> ClientEnv:
    """The environment of a run's clients in this process, built once (kept by the run
    context, :mod:`fedsim.engine.context`)."""
    return ctx.memo("fedsim.client_env", lambda: _build_env(ctx))


def _build_env(ctx: RunContext) -> ClientEnv:
    cfg = ctx.cfg
    if cfg.runtime.threads > 0:
        torch.set_num_threads(cfg.runtime.threads)
    work = ctx.workload()
    if work.fed is None or work.model is None:
        # a task without data or network (fedsim.algorithms.task): its clients (e.g. a
        # variational-inequality device) never touch env.fed / env.model
        return ClientEnv(ctx, work, {}, torch.device("cpu"), threading.Lock(), build_links(cfg))
    fed = work.fed
    model = ctx.fresh_model()  # the clients' own copy: they load arrays into it
    device = resolve_device(cfg.device)
    init_state = {k: v.clone() for k, v in model.state_dict().items()}
    model.to(device)
    if cfg.backbone.channels_last:
        model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    augmenter = build_augmenter(
        cfg.train.augment,
        fed.data.mean.to(device),
        fed.data.std.to(device),
        cfg.scenario.augment,
    )
    return ClientEnv(
        ctx,
        Workload(fed, model),
        init_state,
        device,
        threading.Lock(),
        build_links(cfg),
        augmenter,
        frozen_keys(model),
    )


C = TypeVar("C", bound="Client")


@dataclass(frozen=True)
class LocalResult:
    """What a round adds to the reply: extra records (SCAFFOLD's control-variate change,
    FRAug's generator, FedoSSL's cluster summaries) and extra training metrics."""

    records: dict[str, ArrayRecord] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)


class LocalRun(Generic[C]):
    """One client's round of local training as named stages: the template of
    :meth:`Client.fit` (fedjax's ``client_init`` / ``client_step`` / ``client_final``).

    ``Client.fit`` builds one per training message (the client class's :attr:`Client.Run`)
    and runs, in this order:

    1. :meth:`data` — the samples to train on;
    2. holding the environment's lock, with the round's global arrays (and the client's
       local tensors) loaded into the model: :meth:`setup` — per-round state (control
       variates, a generator, a memory bank, ...), before the optimiser is built;
    3. the one training loop (:func:`fedsim.algorithms.training.train_local`) with :attr:`train`; it
       computes :attr:`forward` on every batch, takes the batch's objective from
       :attr:`loss` (the loop's cross-entropy when there is none) and calls
       :attr:`after_step` after every optimiser step;
    4. once the local and the shared arrays are taken from the trained model, which is
       still loaded: :meth:`finish` — extra records and metrics for the reply, and what
       the client keeps in ``client.state``.

    State one stage hands to a later one lives on this object, which lives for one round;
    what must outlive the round goes in ``client.state`` (``context.state``).  ``loss``
    and ``after_step`` are optional stages: a subclass defines them as methods.  A run
    without either is declarative, so the vectorised loop (``runtime.vectorize``) can
    train it, with the proximal term that :meth:`setup` may declare (``prox_mu`` /
    ``prox_ref``).
    """

    #: what the loop computes before the loss stage (:data:`fedsim.algorithms.hooks.FORWARDS`)
    forward: ClassVar[str] = "logits"
    #: whether the loop applies ``train.augment`` to every batch; False when the loss
    #: stage draws its own views from the client's augmentation stream
    augment: ClassVar[bool] = True
    #: the loss stage ``(model, x, y, out) -> objective``; None: the loop's ``out.ce``
    loss: LossStage | None = None
    #: the after-step stage ``(model) -> None``, after every optimiser step
    after_step: Callable[[nn.Module], None] | None = None

    def __init__(self, client: C, ins: TrainIns) -> None:
        self.client = client
        self.ins = ins
        self.cfg = client.cfg
        self.prox_mu = 0.0  # declarative proximal term (FedProx), set by setup
        self.prox_ref: list[torch.Tensor] | None = None
        self.train = self.train_config(client.cfg.train)

    def train_config(self, train: TrainConfig) -> TrainConfig:
        """The ``train.*`` of this round's loop: the run's, unless an algorithm declares
        its own amount of local work (FRAug's ``local_iterations``) and returns a new
        object (``dataclasses.replace``); the shared configuration is never written."""
        return train

    def data(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The samples to train on: the client's, only the labelled ones in an open world."""
        data = self.client.env.fed.client(self.client.pid)
        if data.labeled is not None:  # open world: a supervised client has only its labels
            return data.x[data.labeled], data.y[data.labeled]
        return data.x, data.y

    def setup(self) -> None:
        """Prepare this round's state (nothing for FedAvg)."""

    def finish(self, stats: TrainStats) -> LocalResult:
        """Extra records and metrics for the reply (none for FedAvg)."""
        return LocalResult()

    def hooks(self) -> TrainHooks:
        """The stages as the training loop takes them."""
        return TrainHooks(self.loss, self.after_step, self.forward, self.prox_mu, self.prox_ref)

    @classmethod
    def closure_stages(cls) -> list[str]:
        """The optional stages this run defines (code the vectorised loop cannot batch)."""
        return [name for name in ("loss", "after_step") if getattr(cls, name) is not None]


def kept_keys(client_class: type[Client], model: nn.Module, cfg: RunConfig) -> set[str]:
    """Every state-dict key that never leaves a client: the algorithm's
    (:meth:`Client.local_keys`) and, under differential privacy (``dp.kind``), the model's
    integer buffers (BatchNorm's step counters): Flower's clipping cannot scale an integer
    array, so a sent counter would put the reply's norm above the clipping bound.  The
    client and the server (``fedsim.engine.experiment.build_strategy``) both ask here."""
    keys = set(client_class.local_keys(model, cfg))
    if cfg.dp.kind != "none":
        keys |= {k for k, v in model.state_dict().items() if not v.is_floating_point()}
    return keys


class Client:
    """FedAvg client: load the shared arrays, train locally, send the arrays back.

    Subclasses change behaviour through :meth:`local_keys` (what stays on the client) and
    :attr:`Run`, their round's :class:`LocalRun`; they neither override :meth:`fit` nor
    write a training loop.
    """

    #: the stages of this client's round, declared on the class so that a configuration
    #: check (``runtime.vectorize=on``) can judge them before any client exists
    Run: ClassVar[type[LocalRun[Any]]] = LocalRun

    def __init__(self, env: ClientEnv, pid: int, state: RecordDict) -> None:
        self.env = env
        self.cfg = env.cfg
        self.pid = pid
        self.state = state

    @property
    def model(self) -> nn.Module:
        """The process's model object (:attr:`ClientEnv.model`)."""
        return self.env.model

    @cached_property
    def keep(self) -> set[str]:
        """State-dict keys that stay on this client (:func:`kept_keys`)."""
        return kept_keys(type(self), self.model, self.cfg)

    @staticmethod
    def local_keys(model: nn.Module, cfg: RunConfig) -> set[str]:
        """State-dict keys of ``model`` that never leave the client (none for FedAvg).

        The one rule of an algorithm, defined in its protocol module; the server asks
        the client class with its own model
        (``fedsim.engine.experiment.build_strategy``), so both halves agree on what travels."""
        return set()

    def local_run(self, ins: TrainIns) -> LocalRun[Any]:
        """This round's stages: :attr:`Run` over this client and the training message."""
        return self.Run(self, ins)

    # ---------------------------------------------------------------- state
    def load(self, arrays: ArrayRecord) -> None:
        """Global arrays + this client's local tensors -> the shared model object."""
        state: dict[str, np.ndarray | torch.Tensor] = dict(numpy_from_arrays(arrays))
        if self.keep:
            if LOCAL_KEY in array_records(self.state):
                state.update(numpy_from_arrays(array_records(self.state)[LOCAL_KEY]))
            else:
                state.update({k: self.env.init_state[k] for k in self.keep})
        # what a strategy that shares a subset leaves out comes from the initial model
        load_state(self.model, {**self.env.init_state, **state})

    def save_local(self) -> None:
        if self.keep:
            self.state[LOCAL_KEY] = arrays_from_state(self.model.state_dict(), self.keep)

    def shared_state(self) -> ArrayRecord:
        """What goes on the uplink: every tensor but the local and the frozen ones."""
        held = self.keep | self.env.frozen
        state = self.model.state_dict()
        return arrays_from_state(state, [k for k in state if k not in held])

    def lr(self, server_round: int) -> float:
        """This round's learning rate (``train.schedule``)."""
        return lr_at(self.cfg.train, server_round, self.cfg.rounds)

    def optimizer(self, server_round: int = 0, train: TrainConfig | None = None) -> Optimizer:
        """The round's optimiser (``train``: the round's ``train.*``, the run's by default)."""
        opt = make_optimizer(
            self.model,
            self.cfg.train if train is None else train,
            self.lr(server_round) if server_round else None,
        )
        if self.cfg.train.persist_optimizer and OPTIM_KEY in array_records(self.state):
            saved = state_from_arrays(array_records(self.state)[OPTIM_KEY])
            sd = opt.state_dict()
            for key, tensor in saved.items():
                idx, name = key.split("/", 1)
                sd["state"].setdefault(int(idx), {})[name] = tensor.to(self.env.device)
            opt.load_state_dict(sd)
        return opt

    def save_optimizer(self, opt: Optimizer) -> None:
        if not self.cfg.train.persist_optimizer:
            return
        flat = {
            f"{idx}/{name}": t
            for idx, st in opt.state_dict()["state"].items()
            for name, t in st.items()
            if isinstance(t, torch.Tensor)
        }
        self.state[OPTIM_KEY] = arrays_from_state(flat)

    # ---------------------------------------------------------------- messages
    def fit(self, ins: TrainIns) -> TrainRes:
        """One round of local training: the stages of :attr:`Run` (see :class:`LocalRun`)
        around the one loop.  The only ``fit``: subclasses fill stages instead."""
        run = self.local_run(ins)
        x, y = run.data()
        with self.env.lock, released_while_waiting(self.env.lock):
            self.load(ins.arrays)
            run.setup()
            opt = self.optimizer(ins.server_round, run.train)
            gen = torch_generator(self.cfg.seed, "train", ins.server_round, self.pid)
            augmenter = self.env.augmenter if run.augment else None
            stats = train_local(
                self.model,
                x,
                y,
                run.train,
                opt,
                gen,
                self.env.device,
                self.cfg.precision,
                run.hooks(),
                augmenter,
                self.augment_generator(ins.server_round) if augmenter is not None else None,
            )
            self.save_local()
            self.save_optimizer(opt)
            out = self.shared_state()
            result = run.finish(stats)
        metrics = {"loss": stats.loss, "steps": float(stats.steps), **result.metrics}
        return TrainRes(out, len(y), metrics, result.records)

    def augment_generator(self, server_round: int) -> torch.Generator | None:
        """The client's augmentation stream of this round (None when nothing augments);
        separate from the batch order's, so turning augmentation on changes no batch."""
        if self.env.augmenter is None:
            return None
        return torch_generator(self.cfg.seed, "augment", server_round, self.pid)

    def evaluate(self, ins: EvalIns) -> EvalRes:
        """Test metrics (``evaluation.test``: the holdout or the domain's test file) and,
        with ``evaluation.validation_fraction``, the selection split's ``val_acc``."""
        data = self.env.fed.client(self.pid)
        x_test, y_test = self.env.fed.test_set(self.pid)
        metrics: dict[str, float] = {"domain": float(data.domain)}
        with self.env.lock:
            self.load(ins.arrays)
            acc, loss = evaluate_model(
                self.model, x_test, y_test, self.env.device, precision=self.cfg.precision
            )
            metrics.update(acc=acc, loss=loss)
            xv, yv = data.x_val, data.y_val
            if xv is not None and yv is not None and len(yv):
                val_acc, val_loss = evaluate_model(
                    self.model, xv, yv, self.env.device, precision=self.cfg.precision
                )
                metrics.update(val_acc=val_acc, val_loss=val_loss)
        return EvalRes(len(y_test), metrics)
