"""What a fedsim client is: the FedAvg client and the per-process environment.

A client sees the global arrays as decoded from ``channel.down`` and replies with its
arrays; the channels, the keys that must stay local, faults and attacks are applied
around it by the ClientApp mods of :mod:`fedsim.wrap.client`, so no client can forget
or bypass them.

A simulated client is rebuilt for every message (Flower's model); what must persist lives
in ``context.state`` under documented keys:

* ``fedsim.local`` — ArrayRecord of the tensors that never leave the client
  (:meth:`Client.local_keys`: FedBN's batch-norm layers, ...);
* ``fedsim.optim`` — ArrayRecord of optimizer state when ``train.persist_optimizer``.

The heavy objects (data, model, device) live in a :class:`ClientEnv` built once per
process and reused by every client that process hosts.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import torch
from flwr.app import ArrayRecord, RecordDict
from torch import nn

from fedsim.augment import Augmenter, build_augmenter
from fedsim.config import RunConfig
from fedsim.federation import Federation, load_federation
from fedsim.modelzoo import frozen_keys, initial_model, resolve_device
from fedsim.payloads import EvalIns, EvalRes, TrainIns, TrainRes
from fedsim.records import (
    arrays_from_state,
    state_from_arrays,
)
from fedsim.schedules import lr_at
from fedsim.seeding import torch_generator
from fedsim.training import TrainHooks, TrainStats, evaluate_model, make_optimizer, train_local
from fedsim.vectorize import declarative, released_while_waiting

LOCAL_KEY = "fedsim.local"
OPTIM_KEY = "fedsim.optim"


@dataclass
class ClientEnv:
    """Process-wide objects shared by the clients this process hosts."""

    cfg: RunConfig
    fed: Federation
    model: nn.Module
    init_state: dict[str, torch.Tensor]
    device: torch.device
    lock: threading.Lock
    augmenter: Augmenter | None = None  # train.augment (None: no op active)
    frozen: frozenset[str] = frozenset()  # state keys outside train.trainable: never sent

    @property
    def buffer_keys(self) -> frozenset[str]:
        """State-dict keys of the model's buffers (BatchNorm statistics, ...)."""
        if self.model is None:
            return frozenset()
        return frozenset(name for name, _ in self.model.named_buffers())


_ENVS: dict[str, ClientEnv] = {}
_ENV_LOCK = threading.Lock()


def client_env(cfg: RunConfig, key: str) -> ClientEnv:
    """The environment for a run configuration, built once per process."""
    with _ENV_LOCK:
        env = _ENVS.get(key)
        if env is None:
            if cfg.runtime.threads > 0:
                torch.set_num_threads(cfg.runtime.threads)
            if cfg.scenario.problem.kind != "classification":
                # a synthetic problem (fedsim.problems) has no dataset and no backbone; its
                # clients (clients.masha) never touch env.fed / env.model
                _ENVS.clear()
                env = _ENVS[key] = ClientEnv(
                    cfg,
                    None,  # type: ignore[arg-type]  # no data: see above
                    None,  # type: ignore[arg-type]  # no backbone: see above
                    {},
                    torch.device("cpu"),
                    threading.Lock(),
                )
                return env
            fed = load_federation(cfg.scenario, cfg.seed)
            device = resolve_device(cfg.device)
            model = initial_model(
                cfg.backbone,
                fed.data.input_shape,
                fed.data.num_classes,
                cfg.seed,
                cfg.train.trainable,
            )
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
            _ENVS.clear()
            env = _ENVS[key] = ClientEnv(
                cfg,
                fed,
                model,
                init_state,
                device,
                threading.Lock(),
                augmenter,
                frozen_keys(model),
            )
        return env


class Client:
    """FedAvg client: load the shared arrays, train locally, send the arrays back.

    Subclasses change behaviour through :meth:`local_keys` (what stays on the client) and
    :meth:`hooks` (extra loss terms); they do not write a training loop.
    """

    def __init__(self, env: ClientEnv, pid: int, state: RecordDict) -> None:
        self.env = env
        self.cfg = env.cfg
        self.pid = pid
        self.state = state
        self.model = env.model
        self.keep = self.local_keys(self.model)

    @staticmethod
    def local_keys(model: nn.Module) -> set[str]:
        """State-dict keys that stay on the client (none for FedAvg)."""
        return set()

    @declarative
    def hooks(self, ins: TrainIns) -> TrainHooks:
        """Additions to the local objective for this round (none for FedAvg).

        A subclass whose hooks are declarative (no closures) marks its override with
        ``@fedsim.vectorize.declarative`` so that ``runtime.vectorize=on`` accepts it."""
        return TrainHooks()

    def after_fit(self, ins: TrainIns, stats: TrainStats) -> dict[str, ArrayRecord]:
        """Extra records to send after local training, the trained model still loaded
        (SCAFFOLD: the change of its control variate); none for FedAvg."""
        return {}

    # ---------------------------------------------------------------- state
    def load(self, arrays: ArrayRecord) -> None:
        """Global arrays + this client's local tensors -> the shared model object."""
        state = state_from_arrays(arrays)
        if self.keep:
            if LOCAL_KEY in self.state.array_records:
                state.update(state_from_arrays(self.state.array_records[LOCAL_KEY]))
            else:
                state.update({k: self.env.init_state[k] for k in self.keep})
        missing = set(self.env.init_state) - set(state)
        if missing:  # e.g. a strategy that shares a subset: fill from the initial model
            state.update({k: self.env.init_state[k] for k in missing})
        self.model.load_state_dict(state, strict=True)

    def save_local(self) -> None:
        if self.keep:
            self.state[LOCAL_KEY] = arrays_from_state(self.model.state_dict(), self.keep)

    def shared_state(self) -> ArrayRecord:
        """What goes on the uplink: every tensor but the local and the frozen ones."""
        held = self.keep | self.env.frozen
        return arrays_from_state(
            self.model.state_dict(), [k for k in self.model.state_dict() if k not in held]
        )

    def lr(self, server_round: int) -> float:
        """This round's learning rate (``train.schedule``)."""
        return lr_at(self.cfg.train, server_round, self.cfg.rounds)

    def optimizer(self, server_round: int = 0) -> torch.optim.Optimizer:
        opt = make_optimizer(
            self.model, self.cfg.train, self.lr(server_round) if server_round else None
        )
        if self.cfg.train.persist_optimizer and OPTIM_KEY in self.state.array_records:
            saved = state_from_arrays(self.state.array_records[OPTIM_KEY])
            sd = opt.state_dict()
            for key, tensor in saved.items():
                idx, name = key.split("/", 1)
                sd["state"].setdefault(int(idx), {})[name] = tensor.to(self.env.device)
            opt.load_state_dict(sd)
        return opt

    def save_optimizer(self, opt: torch.optim.Optimizer) -> None:
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
        data = self.env.fed.client(self.pid)
        x, y = data.x, data.y
        if data.labeled is not None:  # open world: a supervised client has only its labels
            x, y = x[data.labeled], y[data.labeled]
        with self.env.lock, released_while_waiting(self.env.lock):
            self.load(ins.arrays)
            opt = self.optimizer(ins.server_round)
            gen = torch_generator(self.cfg.seed, "train", ins.server_round, self.pid)
            stats = train_local(
                self.model,
                x,
                y,
                self.cfg.train,
                opt,
                gen,
                self.env.device,
                self.cfg.precision,
                self.hooks(ins),
                self.env.augmenter,
                self.augment_generator(ins.server_round),
            )
            self.save_local()
            self.save_optimizer(opt)
            out = self.shared_state()
            extra = self.after_fit(ins, stats)
        return TrainRes(out, len(y), {"loss": stats.loss, "steps": float(stats.steps)}, extra)

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
