"""The FedAvg client and the per-process environment every client shares.

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

import numpy as np
import torch
from flwr.app import ArrayRecord, RecordDict
from torch import nn

from fedsim.channels import make_channel
from fedsim.config import RunConfig
from fedsim.federation import Federation, load_federation
from fedsim.modelzoo import initial_model, resolve_device
from fedsim.payloads import EvalIns, EvalRes, TrainIns, TrainRes
from fedsim.records import (
    arrays_from_numpy,
    arrays_from_state,
    numpy_from_arrays,
    state_from_arrays,
)
from fedsim.seeding import derive_rng, torch_generator
from fedsim.training import TrainHooks, evaluate_model, make_optimizer, train_local
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
                cfg.backbone, fed.data.input_shape, fed.data.num_classes, cfg.seed
            )
            init_state = {k: v.clone() for k, v in model.state_dict().items()}
            model.to(device)
            if cfg.backbone.channels_last:
                model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
            _ENVS.clear()
            env = _ENVS[key] = ClientEnv(cfg, fed, model, init_state, device, threading.Lock())
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
        return arrays_from_state(
            self.model.state_dict(), [k for k in self.model.state_dict() if k not in self.keep]
        )

    def optimizer(self) -> torch.optim.Optimizer:
        opt = make_optimizer(self.model, self.cfg.train)
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

    # ---------------------------------------------------------------- channels
    def downlink(self, ins: TrainIns) -> ArrayRecord:
        """The global arrays as decoded from ``channel.down`` (as sent when identity)."""
        if self.cfg.channel.down.name == "identity":
            return ins.arrays
        like = {k: v.numpy() for k, v in self.env.init_state.items() if k not in self.keep}
        down = make_channel(self.cfg.channel.down)
        return arrays_from_numpy(down.decode(ins.arrays, like))

    def uplink(self, received: ArrayRecord, out: ArrayRecord, server_round: int) -> ArrayRecord:
        """What goes back through ``channel.up``: the arrays themselves when identity, else
        the encoded update ``out - received`` (floating arrays; others travel as values)."""
        if self.cfg.channel.up.name == "identity":
            return out
        ref = numpy_from_arrays(received)
        update = {
            k: v - ref[k] if k in ref and np.issubdtype(v.dtype, np.floating) else v
            for k, v in numpy_from_arrays(out).items()
        }
        rng = derive_rng(self.cfg.seed, "channel/up", server_round, self.pid)
        return make_channel(self.cfg.channel.up).encode(update, rng)

    # ---------------------------------------------------------------- messages
    def fit(self, ins: TrainIns) -> TrainRes:
        data = self.env.fed.client(self.pid)
        x, y = data.x, data.y
        if data.labeled is not None:  # open world: a supervised client has only its labels
            x, y = x[data.labeled], y[data.labeled]
        with self.env.lock, released_while_waiting(self.env.lock):
            received = self.downlink(ins)
            self.load(received)
            opt = self.optimizer()
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
            )
            self.save_local()
            self.save_optimizer(opt)
            out = self.uplink(received, self.shared_state(), ins.server_round)
        return TrainRes(out, len(y), {"loss": stats.loss, "steps": float(stats.steps)})

    def evaluate(self, ins: EvalIns) -> EvalRes:
        data = self.env.fed.client(self.pid)
        with self.env.lock:
            self.load(ins.arrays)
            acc, loss = evaluate_model(
                self.model,
                data.x_holdout,
                data.y_holdout,
                self.env.device,
                precision=self.cfg.precision,
            )
        return EvalRes(
            len(data.y_holdout), {"acc": acc, "loss": loss, "domain": float(data.domain)}
        )
