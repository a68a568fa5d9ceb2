"""A client's round is a template with named stages (``fedsim.algorithms.client.LocalRun``).

A toy algorithm written against the template, on numbers checked by hand: its loss is
``0.5 * ||b||^2`` of the head's bias ``b`` alone, so plain SGD at rate 0.5 halves ``b``
exactly at every step and leaves every other tensor as the server sent it.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch
import torch.nn.functional as F
from flwr.app import RecordDict
from torch import nn

from fedsim.algorithms.client import Client, LocalResult, LocalRun, client_env
from fedsim.algorithms.payloads import TrainIns
from fedsim.algorithms.training import BatchOut, TrainStats
from fedsim.algorithms.vectorize import client_blocker
from fedsim.config import TrainConfig
from fedsim.engine.context import context_for
from fedsim.records import arrays_from_state, numpy_from_arrays

CLIENTS = Path(__file__).resolve().parents[1] / "clients"
BIAS = torch.arange(10, dtype=torch.float32)  # 0.5 * ||b||^2 = 0.5 * 285 = 142.5


class ShrinkBias(LocalRun[Client]):
    """Toy: three local steps (a declared override), loss ``0.5 ||b||^2``; records the
    order in which the stages run and what each one sees."""

    forward = "none"  # the loss stage does not need the network's output

    calls: ClassVar[list[str]] = []
    seen: ClassVar[dict[str, Any]] = {}

    def train_config(self, train: TrainConfig) -> TrainConfig:
        return dataclasses.replace(train, local_steps=3)

    def data(self) -> tuple[torch.Tensor, torch.Tensor]:
        self.calls.append("data")
        return super().data()

    def setup(self) -> None:
        self.calls.append("setup")
        self.start = self.client.model.state_dict()["head.bias"].clone()
        self.seen["start"] = self.start

    def loss(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, out: BatchOut
    ) -> torch.Tensor:
        self.calls.append("loss")
        self.seen.setdefault("out", []).append(out)
        bias = dict(model.named_parameters())["head.bias"]
        return 0.5 * (bias**2).sum()

    def after_step(self, model: nn.Module) -> None:
        self.calls.append("after_step")
        self.seen.setdefault("after", []).append(model.state_dict()["head.bias"].clone())

    def finish(self, stats: TrainStats) -> LocalResult:
        self.calls.append("finish")
        self.seen["stats"] = stats
        self.seen["final"] = self.client.model.state_dict()["head.bias"].clone()
        record = arrays_from_state({"start": self.start})
        return LocalResult({"toy.start": record}, {"toy_steps": float(len(self.seen["after"]))})


class ShrinkBiasClient(Client):
    Run = ShrinkBias


@pytest.fixture
def toy(fast_cfg):  # type: ignore[no-untyped-def]
    cfg = fast_cfg(
        "strategy=fedavg",
        "train.momentum=0",
        "train.weight_decay=0",
        "train.lr=0.5",
        "train.batch_size=4",
    )
    env = client_env(context_for(cfg))
    sent = {k: v.clone() for k, v in env.init_state.items()}
    sent["head.bias"] = BIAS.clone()
    ShrinkBias.calls.clear()
    ShrinkBias.seen.clear()
    client = ShrinkBiasClient(env, 0, RecordDict())
    res = client.fit(TrainIns(arrays_from_state(sent), 1, {}))
    return client, sent, res


def test_the_stages_run_in_template_order(toy) -> None:  # type: ignore[no-untyped-def]
    assert ShrinkBias.calls == ["data", "setup", *["loss", "after_step"] * 3, "finish"]


def test_setup_sees_the_global_arrays_and_finish_the_trained_model(toy) -> None:  # type: ignore[no-untyped-def]
    seen = ShrinkBias.seen
    assert torch.equal(seen["start"], BIAS)
    # SGD at rate 0.5 on 0.5 ||b||^2: b <- b - 0.5 b, exactly b / 2 per step
    assert [t.tolist() for t in seen["after"]] == [(BIAS / d).tolist() for d in (2, 4, 8)]
    assert torch.equal(seen["final"], BIAS / 8)


def test_the_reply_carries_the_trained_arrays_records_and_metrics(toy) -> None:  # type: ignore[no-untyped-def]
    _, sent, res = toy
    got = numpy_from_arrays(res.arrays)
    assert got["head.bias"].tolist() == (BIAS / 8).tolist()
    others = [k for k in got if k != "head.bias"]
    assert others and all((got[k] == sent[k].numpy()).all() for k in others)  # no forward
    assert numpy_from_arrays(res.extra["toy.start"])["start"].tolist() == BIAS.tolist()
    # losses 142.5, 142.5 / 4, 142.5 / 16 on equal batches
    assert res.metrics["loss"] == pytest.approx(142.5 * (1 + 1 / 4 + 1 / 16) / 3)
    assert res.metrics["steps"] == 3.0 and res.metrics["toy_steps"] == 3.0
    assert ShrinkBias.seen["stats"].steps == 3


def test_the_training_override_is_declared_not_patched_into_the_shared_config(toy) -> None:  # type: ignore[no-untyped-def]
    client, _, _ = toy
    assert client.cfg.train.local_steps == 0  # three steps came from the run's override
    assert client.env.cfg.train.local_steps == 0


def test_a_features_forward_hands_the_stage_the_embedding_and_the_logits(fast_cfg) -> None:  # type: ignore[no-untyped-def]
    class Features(LocalRun[Client]):
        forward = "features"
        checks: ClassVar[list[tuple[bool, bool, tuple[int, ...]]]] = []

        def loss(
            self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, out: BatchOut
        ) -> torch.Tensor:
            assert out.features is not None and out.logits is not None and out.ce is not None
            head = model.head  # type: ignore[union-attr]
            same_logits = torch.equal(out.logits, head(out.features))  # of that embedding
            same_ce = torch.equal(out.ce, F.cross_entropy(out.logits, y))
            self.checks.append((same_logits, same_ce, tuple(out.features.shape)))
            return out.ce

    class FeaturesClient(Client):
        Run = Features

    cfg = fast_cfg("strategy=fedavg", "train.local_steps=2", "train.batch_size=8")
    env = client_env(context_for(cfg))
    FeaturesClient(env, 0, RecordDict()).fit(TrainIns(arrays_from_state(env.init_state), 1))
    dim = env.model.feature_dim  # type: ignore[union-attr]
    assert Features.checks == [(True, True, (8, dim))] * 2


# ------------------------------------------------------------------ the shipped clients


def _client_classes() -> list[type[Client]]:
    out = []
    for path in sorted(CLIENTS.glob("*.py")):
        module = importlib.import_module(f"clients.{path.stem}")
        out += [
            obj
            for obj in vars(module).values()
            if isinstance(obj, type)
            and issubclass(obj, Client)
            and obj.__module__ == module.__name__
        ]
    return out


#: MASHA's devices answer a variational-inequality message (an operator evaluation and
#: compressed differences, ``strategies.masha``); they train no network, so they have no
#: round of local training to fill stages of.
NO_LOCAL_TRAINING = {"MashaClient"}


def test_no_client_overrides_fit_or_the_old_hooks() -> None:
    classes = _client_classes()
    names = {c.__name__ for c in classes}
    assert {
        "FedBNClient",
        "FedProxClient",
        "ScaffoldClient",
        "FRAugClient",
        "FedoSSLClient",
    } <= names
    for cls in classes:
        own = set(vars(cls))
        if cls.__name__ not in NO_LOCAL_TRAINING:
            assert "fit" not in own, f"{cls.__name__} overrides fit"
        assert not own & {"hooks", "after_fit"}, cls.__name__


def test_no_client_module_rewrites_the_shared_config() -> None:
    """``dataclasses.replace(self.cfg, ...)`` / ``self.cfg = ...`` in a client half."""
    for path in sorted(CLIENTS.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Assign):
                for target in node.targets:
                    text = ast.unparse(target)
                    assert not text.endswith(".cfg"), f"{path.name}: {text} = ..."


def test_vectorize_on_judges_the_declared_stages_at_load() -> None:
    from clients.fedbn import FedBNClient
    from clients.fedossl import FedoSSLClient
    from clients.fedprox import FedProxClient
    from clients.fraug import FRAugClient
    from clients.scaffold import ScaffoldClient

    for declarative in (Client, FedBNClient, FedProxClient):
        assert client_blocker(declarative) is None, declarative
    assert "loss / after_step" in (client_blocker(FRAugClient) or "")
    assert "closure hook: loss" in (client_blocker(ScaffoldClient) or "")
    assert "closure hook: loss" in (client_blocker(FedoSSLClient) or "")
    assert client_blocker(ShrinkBiasClient) is not None
