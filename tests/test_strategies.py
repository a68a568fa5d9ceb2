"""Strategy behaviour checked on the messages that really cross the Grid."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from flwr.app import Message
from recording import run_recorded

from clients.fedprox import FedProxClient, proximal_term
from fedsim.algorithms.client import LOCAL_KEY, client_env
from fedsim.algorithms.payloads import TrainIns
from fedsim.engine.context import context_for
from fedsim.models.backbones import bn_state_keys
from fedsim.models.modelzoo import initial_model
from fedsim.records import arrays_from_state, numpy_from_arrays


def _wire_keys(msgs: list[Message]) -> set[str]:
    keys: set[str] = set()
    for m in msgs:
        if m.has_content():
            for rec in m.content.array_records.values():
                keys.update(rec.keys())
    return keys


def test_fedbn_keeps_batch_norm_on_the_clients(fast_cfg, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    cfg = fast_cfg("strategy=fedbn", "rounds=2", "scenario.num_clients=4")
    grid = run_recorded(cfg, tmp_path)
    model = initial_model(cfg.backbone, (1, 8, 8), 10, cfg.seed)
    bn = bn_state_keys(model)
    assert len(bn) == 25  # five BN layers x five tensors in cnn_digits

    sent, received = _wire_keys(grid.sent), _wire_keys(grid.received)
    assert sent and received
    assert not (bn & sent), "the server sent batch-norm tensors"
    assert not (bn & received), "a client sent batch-norm tensors"
    assert {k for k in model.state_dict() if k not in bn} <= sent  # everything else does travel

    # the BN tensors live in each client's state and differ between clients after training
    states = [grid.context(grid.node_map()[pid]).state for pid in range(4)]
    local = [numpy_from_arrays(s.array_records[LOCAL_KEY]) for s in states]
    assert set(local[0]) == bn
    key = next(k for k in sorted(bn) if k.endswith("running_mean"))
    assert not np.allclose(local[0][key], local[1][key])


def test_fedavg_sends_and_aggregates_batch_norm(fast_cfg, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    cfg = fast_cfg("strategy=fedavg", "rounds=1", "scenario.num_clients=3")
    grid = run_recorded(cfg, tmp_path)
    bn = bn_state_keys(initial_model(cfg.backbone, (1, 8, 8), 10, cfg.seed))
    assert bn <= _wire_keys(grid.sent) and bn <= _wire_keys(grid.received)


def test_proximal_term_hand_numbers() -> None:
    model = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[3.0, 4.0]]))
    anchor = [torch.zeros(1, 2)]
    # (mu / 2) * ||w - 0||^2 = 0.5 * 0.1 * 25
    assert torch.isclose(proximal_term(model, anchor, 0.1), torch.tensor(1.25))


def test_fedprox_term_pulls_the_update_towards_the_global_model(fast_cfg) -> None:  # type: ignore[no-untyped-def]
    cfg = fast_cfg("strategy=fedprox", "train.local_epochs=3")
    env = client_env(context_for(cfg))
    global_arrays = arrays_from_state(env.init_state)
    params = {
        name for name, _ in env.model.named_parameters()
    }  # buffers are not pulled by the term

    def distance(mu: float) -> float:
        from flwr.app import RecordDict

        client = FedProxClient(env, 0, RecordDict())
        res = client.fit(TrainIns(global_arrays, 1, {"proximal-mu": mu}))
        new = numpy_from_arrays(res.arrays)
        return float(sum(np.sum((new[k] - env.init_state[k].numpy()) ** 2) for k in params))

    d0, d_small, d_big = distance(0.0), distance(0.01), distance(10.0)
    assert d0 > 0
    assert d_big < 0.5 * d0  # a strong proximal term keeps the weights near the global ones
    assert d_small != d0  # even a small mu changes the update


def test_scaffold_round_keeps_c_i_plus_and_sends_its_change(fast_cfg) -> None:  # type: ignore[no-untyped-def]
    """Option II with ``c = c_i = 0`` (round 1): ``c_i+ = (x - y) / (K lr)``, kept in the
    client's state and sent as ``c_i+ - c_i``; the loss stage's correction is zero."""
    from flwr.app import RecordDict

    from clients.scaffold import ScaffoldClient
    from protocols.scaffold import DELTA_RECORD, STATE_KEY

    cfg = fast_cfg("strategy=scaffold", "train.local_steps=2", "train.lr=0.1")
    env = client_env(context_for(cfg))
    client = ScaffoldClient(env, 0, RecordDict())
    res = client.fit(TrainIns(arrays_from_state(env.init_state), 1))
    y = numpy_from_arrays(res.arrays)
    delta = numpy_from_arrays(res.extra[DELTA_RECORD])
    trainable = {n for n, p in env.model.named_parameters() if p.requires_grad}
    assert set(delta) == trainable and res.metrics["steps"] == 2.0
    for k, d in delta.items():
        expected = (env.init_state[k].numpy() - y[k]) / (2 * 0.1)
        np.testing.assert_allclose(d, expected, rtol=1e-4, atol=1e-5)
    kept = numpy_from_arrays(client.state.array_records[STATE_KEY])
    assert all(np.array_equal(kept[k], delta[k]) for k in delta)  # c_i was zero
