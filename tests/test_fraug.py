"""FRAug (arXiv 2205.14900): what crosses the wire, the three losses, shapes, a 2-round run."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import Message
from recording import run_recorded

from clients.fraug import (
    FRAUG_OPTIM_KEY,
    PROTOTYPES_KEY,
    RTNET_KEY,
    Augmenter,
    cyclic_labels,
    entropy,
    make_generator,
    make_rtnet,
    mmd_kernel,
    mmd_moments,
    update_prototypes,
)
from fedsim.algorithms.aggregate import weighted_average
from fedsim.config import BackboneConfig
from fedsim.engine.runner import execute
from fedsim.errors import ConfigError
from fedsim.models.backbones import BACKBONES, bn_running_stat_keys, bn_state_keys, build_backbone
from fedsim.models.modelzoo import initial_model
from fedsim.records import numpy_from_arrays
from protocols.fraug import (
    GENERATOR_RECORD,
    FRAugConfig,
    lambda_schedule,
    local_keys,
    local_train,
    rho_schedule,
)

FAST = ("strategy=fraug", "scenario.num_clients=3", "strategy.local_iterations=3")


def _train_msgs(msgs: list[Message], server_round: int) -> list[Message]:
    return [
        m
        for m in msgs
        if m.has_content()
        and "config" in m.content.config_records
        and m.content.config_records["config"]["server-round"] == server_round
        and m.metadata.message_type == "train"
    ]


def _all_arrays(msgs: list[Message]) -> list[np.ndarray]:
    return [
        arr.numpy()
        for m in msgs
        if m.has_content()
        for rec in m.content.array_records.values()
        for arr in rec.values()
    ]


# --------------------------------------------------------------------------- the wire


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):  # type: ignore[no-untyped-def]
    from fedsim.engine.conf import compose

    tmp = tmp_path_factory.mktemp("fraug")
    fast = [f"output_dir={tmp}", "progress=false", "backbone.width=0.25"]
    cfg = compose([*fast, *FAST, "rounds=2"])
    return cfg, run_recorded(cfg, tmp)


def test_rtnet_and_prototypes_never_reach_the_server(recorded) -> None:  # type: ignore[no-untyped-def]
    cfg, grid = recorded
    wire = _all_arrays(grid.sent) + _all_arrays(grid.received)
    record_names = {
        name for m in grid.sent + grid.received if m.has_content() for name in m.content
    }
    assert record_names.isdisjoint({RTNET_KEY, PROTOTYPES_KEY, FRAUG_OPTIM_KEY})

    for pid in range(cfg.scenario.num_clients):
        state = grid.context(grid.node_map()[pid]).state
        private = numpy_from_arrays(state.array_records[RTNET_KEY])
        private.update(numpy_from_arrays(state.array_records[PROTOTYPES_KEY]))
        private.update(numpy_from_arrays(state.array_records[FRAUG_OPTIM_KEY]))
        secret = {k: v for k, v in private.items() if v.dtype.kind == "f" and v.size > 1}
        assert "mu" in secret and np.abs(secret["mu"]).sum() > 0  # prototypes were learned
        assert any(k.startswith("rt/") for k in secret)  # RTNet momentum is kept
        for key, value in secret.items():
            for arr in wire:
                same = arr.shape == value.shape and np.array_equal(arr, value)
                assert not same, f"client {pid}'s private {key} was on the wire"


def test_bn_running_statistics_stay_local_and_the_rest_travels(recorded) -> None:  # type: ignore[no-untyped-def]
    cfg, grid = recorded
    model = initial_model(cfg.backbone, (1, 8, 8), 10, cfg.seed)
    running = bn_running_stat_keys(model)
    assert running
    keys = {
        k
        for m in grid.sent + grid.received
        if m.has_content() and "arrays" in m.content.array_records
        for k in m.content.array_records["arrays"]
    }
    assert not (running & keys)
    assert set(model.state_dict()) - running == keys  # BN affine weights are shared (code)


def test_generator_is_sent_back_averaged_and_broadcast(recorded) -> None:  # type: ignore[no-untyped-def]
    _, grid = recorded
    assert all(GENERATOR_RECORD not in m.content for m in _train_msgs(grid.sent, 1))
    replies = [
        r for r in grid.received if r.has_content() and GENERATOR_RECORD in r.content.array_records
    ]
    first = replies[:3]  # round-1 train replies come first
    assert len(first) == 3
    gens = [numpy_from_arrays(r.content.array_records[GENERATOR_RECORD]) for r in first]
    weights = [r.content.metric_records["metrics"]["num-examples"] for r in first]
    key = next(k for k in gens[0] if k.endswith("weight"))
    assert not np.allclose(gens[0][key], gens[1][key])  # clients trained G differently
    expected = weighted_average(gens, weights)  # type: ignore[arg-type]

    round2 = _train_msgs(grid.sent, 2)
    assert len(round2) == 3
    for m in round2:
        got = numpy_from_arrays(m.content.array_records[GENERATOR_RECORD])
        assert set(got) == set(expected)
        for k in expected:
            np.testing.assert_allclose(got[k], expected[k], rtol=1e-6, atol=1e-7)


def test_local_bn_all_keeps_every_batch_norm_tensor_local(fast_cfg, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    cfg = fast_cfg(*FAST, "rounds=1", "strategy.local_bn=all", "strategy.local_iterations=1")
    grid = run_recorded(cfg, tmp_path)
    model = initial_model(cfg.backbone, (1, 8, 8), 10, cfg.seed)
    bn = bn_state_keys(model)
    keys = {
        k
        for m in grid.sent + grid.received
        if m.has_content() and "arrays" in m.content.array_records
        for k in m.content.array_records["arrays"]
    }
    assert keys and not (bn & keys)
    assert set(model.state_dict()) - bn == keys


def test_two_round_run_end_to_end(fast_cfg) -> None:  # type: ignore[no-untyped-def]
    cfg = fast_cfg(*FAST, "rounds=2")
    record = execute(cfg)
    assert record["status"] == "complete"
    run_dir = Path(record["run_dir"])
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2
    last = rows[-1]
    for key in ("eval/acc", "train/fraug_loss_g", "train/fraug_loss_rt", "train/fraug_loss_syn"):
        assert math.isfinite(last[key]), key
    assert last["fraug/lambda"] == pytest.approx(0.5)  # gamma 0.002: rho > 0.5 throughout
    assert rows[1]["comm/bytes_down"] > rows[0]["comm/bytes_down"]  # + generator from round 2


def test_bad_choices_are_rejected_when_the_config_loads(fast_cfg) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError, match=r"strategy\.dist_rt"):
        fast_cfg("strategy=fraug", "strategy.dist_rt=cosine")
    with pytest.raises(ConfigError, match=r"strategy\.noise"):
        fast_cfg("strategy=fraug", "strategy.noise=laplace")


# --------------------------------------------------------------------------- maths


def test_schedules_hand_numbers() -> None:
    assert rho_schedule(101, 100, 0.01) == pytest.approx(1.0)  # t = T
    assert rho_schedule(1, 100, 0.01) == pytest.approx(math.exp(-1.0))
    assert lambda_schedule(0.2) == 0.2 and lambda_schedule(0.9) == 0.5


def test_cyclic_labels_are_balanced_rotations() -> None:
    cpu = torch.device("cpu")
    assert cyclic_labels(0, 5, 3, cpu).tolist() == [0, 1, 2, 0, 1]
    assert cyclic_labels(1, 5, 3, cpu).tolist() == [2, 0, 1, 2, 0]  # offset 5 mod 3


def test_prototype_ema_only_moves_classes_in_the_batch() -> None:
    mu = torch.tensor([[1.0, 1.0], [2.0, 2.0], [3.0, 3.0]])
    feats = torch.tensor([[11.0, 1.0], [1.0, 1.0], [5.0, 5.0]])
    out = update_prototypes(mu, feats, torch.tensor([0, 0, 2]), 0.3)
    # class 0: 0.7 * 1 + 0.3 * mean(11, 1) = 2.5 and 0.7 * 1 + 0.3 * 1 = 1.0; class 1 absent
    torch.testing.assert_close(out, torch.tensor([[2.5, 1.0], [2.0, 2.0], [3.6, 3.6]]))


def test_distances_vanish_on_identical_samples_and_grow_apart() -> None:
    a = torch.randn(16, 4, generator=torch.Generator().manual_seed(0))
    for dist in (mmd_moments, mmd_kernel):
        assert float(dist(a, a)) == pytest.approx(0.0, abs=1e-6)
        assert float(dist(a, a + 3.0)) > 0.1


def test_entropy_of_uniform_logits_is_log_c() -> None:
    assert float(entropy(torch.zeros(3, 4))) == pytest.approx(math.log(4))


def test_local_keys_one_rule_for_both_halves() -> None:
    """``protocols.fraug.local_keys``: what the client keeps and the server never sends."""
    from clients.fraug import FRAugClient
    from fedsim.engine.conf import compose

    model = initial_model(BackboneConfig(name="cnn_digits", width=0.25), (1, 8, 8), 10, 0)
    # five BN layers: three running-statistics tensors each, plus weight and bias
    code = local_keys(model, FRAugConfig())
    paper = local_keys(model, FRAugConfig(local_bn="all"))
    assert (len(code), len(paper)) == (15, 25)
    assert code == bn_running_stat_keys(model) and paper == bn_state_keys(model)
    assert paper - code == {f"bn{i}.{w}" for i in range(1, 6) for w in ("weight", "bias")}
    cfg = compose(["strategy=fraug", "strategy.local_bn=all", "backbone.width=0.25"])
    assert FRAugClient.local_keys(model, cfg) == paper  # the server asks the client class


def test_local_iterations_are_a_declared_override_not_a_patched_config(fast_cfg) -> None:  # type: ignore[no-untyped-def]
    from flwr.app import RecordDict

    from clients.fraug import FRAugClient, FRAugRun
    from fedsim.algorithms.client import client_env
    from fedsim.algorithms.payloads import TrainIns
    from fedsim.engine.context import context_for
    from fedsim.records import arrays_from_state

    train = fast_cfg("strategy=fraug").train
    assert local_train(train, FRAugConfig(local_iterations=7)).local_steps == 7
    assert local_train(train, FRAugConfig(local_iterations=0)) is train  # epochs
    stepped = dataclasses.replace(train, local_steps=2)
    assert local_train(stepped, FRAugConfig(local_iterations=7)) is stepped  # local_steps wins

    cfg = fast_cfg(*FAST)  # local_iterations=3, train.local_steps=0
    env = client_env(context_for(cfg))
    client = FRAugClient(env, 0, RecordDict())
    ins = TrainIns(arrays_from_state(env.init_state), 1, {})
    assert isinstance(client.local_run(ins), FRAugRun)
    assert client.local_run(ins).train.local_steps == 3
    res = client.fit(ins)
    assert res.metrics["steps"] == 3.0
    assert client.cfg.train.local_steps == 0 and env.cfg.train.local_steps == 0


def test_prototypes_move_before_the_prototype_anchored_term(
    fast_cfg, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    # official order: the EMA of this batch's embedding, then CE(h(mu[y_cyc] + T(G))).
    # The prototypes start at zero, so the first call must already see non-zero rows.
    seen: list[torch.Tensor] = []
    original = Augmenter.classifier_loss

    def spy(self, head, real, y, z, y_cyc, rho):  # type: ignore[no-untyped-def]
        seen.append(self.mu.clone())
        expected = update_prototypes(torch.zeros_like(self.mu), real, y, self.cfg.ema)
        if len(seen) == 1:
            torch.testing.assert_close(self.mu, expected)
        return original(self, head, real, y, z, y_cyc, rho)

    monkeypatch.setattr(Augmenter, "classifier_loss", spy)
    cfg = fast_cfg(*FAST, "rounds=1", "backbone.width=0.25", "scenario.num_clients=1")
    run_recorded(cfg, tmp_path)
    assert seen and float(seen[0].abs().sum()) > 0


# --------------------------------------------------------------------------- losses


def _toy(name: str = "cnn_digits", shape: tuple[int, int, int] = (3, 16, 16)):  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    classes, batch = 5, 10
    model = build_backbone(BackboneConfig(name=name, width=0.25), shape, classes)
    cfg = FRAugConfig()
    d = model.feature_dim
    aug = Augmenter(
        cfg,
        make_generator(cfg, classes, d, seed=0),
        make_rtnet(cfg, classes, d, seed=0, pid=0),
        torch.rand(classes, d),
        classes,
    )
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(batch, *shape, generator=gen)
    y = torch.arange(batch) % classes
    dz = aug.g.latent_dim
    z = (torch.rand(batch, dz, generator=gen), torch.rand(batch, dz, generator=gen))
    y_cyc = cyclic_labels(3, batch, classes, torch.device("cpu"))
    return model, aug, x, y, z, y_cyc


def _descends(loss_fn, params, steps: int = 15, lr: float = 0.05) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    opt = torch.optim.SGD(params, lr=lr)
    first = float(loss_fn().detach())
    for _ in range(steps):
        opt.zero_grad()
        loss = loss_fn()
        loss.backward()
        opt.step()
    return first, float(loss_fn().detach())


def test_model_loss_alone_decreases_on_a_fixed_batch() -> None:
    model, aug, x, y, z, y_cyc = _toy()
    model.train()
    aug.g.eval()
    aug.t.eval()
    lam = 0.5

    def loss() -> torch.Tensor:
        feats = model.features(x)
        real = torch.nn.functional.cross_entropy(model.head(feats), y)
        return (1 - lam) * real + lam * aug.classifier_loss(model.head, feats, y, z, y_cyc, 0.9)

    before, after = _descends(loss, list(model.parameters()))
    assert after < before


def test_synthetic_term_only_trains_the_head() -> None:
    model, aug, x, y, z, y_cyc = _toy()
    aug.g.eval()
    aug.t.eval()
    feats = model.features(x)
    aug.classifier_loss(model.head, feats, y, z, y_cyc, 0.9).backward()
    head = {id(p) for p in model.head.parameters()}
    for p in model.parameters():
        assert (p.grad is not None and p.grad.abs().sum() > 0) == (id(p) in head)
    assert all(p.grad is None for p in [*aug.g.parameters(), *aug.t.parameters()])


@pytest.mark.parametrize("dist", ["L2", "MMD", "MMD_kernel"])
def test_generator_loss_alone_decreases_on_a_fixed_batch(dist: str) -> None:
    model, aug, x, _y, z, y_cyc = _toy()
    aug.cfg.dist_g = dist
    model.eval()
    aug.g.train()
    with torch.no_grad():
        real = model.features(x)
    before, after = _descends(
        lambda: aug.generator_loss(model.head, z[0], y_cyc, real), list(aug.g.parameters())
    )
    assert after < before


@pytest.mark.parametrize("dist", ["L2", "MMD_kernel"])
def test_rtnet_loss_alone_decreases_on_a_fixed_batch(dist: str) -> None:
    model, aug, x, y, z, y_cyc = _toy()
    aug.cfg.dist_rt = dist
    model.eval()
    aug.g.eval()
    aug.t.train()
    with torch.no_grad():
        real = model.features(x)
    before, after = _descends(
        lambda: aug.rtnet_loss(model.head, z, y_cyc, real, y), list(aug.t.parameters())
    )
    assert after < before


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_shapes_for_every_backbone(name: str) -> None:
    model, aug, x, y, z, y_cyc = _toy(name, (3, 16, 16))
    b, d = len(y), model.feature_dim
    assert aug.g.latent_dim == max(1, d // 2)
    model.eval()
    with torch.no_grad():
        feats = model.features(x)
        gen = aug.g(z[0], y_cyc)
        res = aug.t(gen, y_cyc)
        synthetic = aug.synthetic(feats, z[1], y, 0.5)
    assert feats.shape == gen.shape == res.shape == synthetic.shape == (b, d)
    assert (gen >= 0).all()  # post-ReLU like the backbones' embeddings
    assert model.head(synthetic).shape == (b, 5)
    for value in (
        aug.classifier_loss(model.head, feats, y, z, y_cyc, 0.5),
        aug.generator_loss(model.head, z[0], y_cyc, feats),
        aug.rtnet_loss(model.head, z, y_cyc, feats, y),
    ):
        assert value.shape == () and torch.isfinite(value)
