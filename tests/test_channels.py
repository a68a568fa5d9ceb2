"""Compression channels: seeded unbiasedness, contraction, round trips, byte counts, and
FedAvg through a lossy channel on the messages that really cross the Grid."""

from __future__ import annotations

import math
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
from flwr.app import Array, Message

from fedsim.channels import (
    IdentityChannel,
    QSGDChannel,
    RandKChannel,
    SparseChannel,
    TopKChannel,
    num_kept,
    payload_nbytes,
    randk,
    topk,
)
from fedsim.config import ChannelSideConfig
from fedsim.errors import ConfigError
from fedsim.records import arrays_from_numpy

RNG_SEED = 1234


def test_randk_is_unbiased_with_the_stated_variance() -> None:
    # Arrange: d = 20, k = 5 -> scale d/k = 4; E||Q(v) - v||^2 = (d/k - 1) ||v||^2 exactly
    rng = np.random.default_rng(RNG_SEED)
    v = rng.normal(size=20)
    n = 8000
    # Act
    samples = np.stack([randk(v, 5, rng) for _ in range(n)])
    # Assert: Monte-Carlo mean within 4 standard errors of v, coordinate-wise
    stderr = np.sqrt((20 / 5 - 1) * v**2 / n)
    assert np.all(np.abs(samples.mean(axis=0) - v) <= 4 * stderr + 1e-12)
    var = np.mean(np.sum((samples - v) ** 2, axis=1))
    bound = (20 / 5 - 1) * np.sum(v**2)
    assert var <= bound * 1.05
    assert var >= bound * 0.95  # and it is tight: RandK attains the bound


def test_randk_channel_draws_a_fresh_mask_per_call_and_decodes_what_it_encoded() -> None:
    ch = RandKChannel(0.25)
    rng = np.random.default_rng(RNG_SEED)
    v = np.arange(1.0, 9.0)
    a, b = ch.roundtrip(v, rng), ch.roundtrip(v, rng)
    assert np.count_nonzero(a) == 2 and np.count_nonzero(b) == 2
    assert not np.array_equal(np.flatnonzero(a), np.flatnonzero(b))  # 28 masks: differ here
    kept = np.flatnonzero(a)
    assert np.allclose(a[kept], 4.0 * v[kept])  # scaled by d/k = 8/2


def test_topk_is_contractive_with_delta_d_over_k() -> None:
    rng = np.random.default_rng(RNG_SEED)
    d, k = 50, 5
    for _ in range(200):
        v = rng.standard_cauchy(size=d)
        err = np.sum((topk(v, k) - v) ** 2)
        assert err <= (1 - k / d) * np.sum(v**2) + 1e-12
    # hand example: keep the two largest magnitudes, unscaled
    assert np.array_equal(topk(np.array([0.5, -3.0, 2.0, 1.0]), 2), [0.0, -3.0, 2.0, 0.0])


def test_qsgd_is_unbiased() -> None:
    ch = QSGDChannel(levels=4)
    rng = np.random.default_rng(RNG_SEED)
    v = rng.normal(size=30)
    samples = np.stack([ch.roundtrip(v, rng) for _ in range(8000)])
    assert np.allclose(samples.mean(axis=0), v, atol=0.05)
    # values are multiples of ||v|| / s
    step = np.linalg.norm(v.astype(np.float32)) / 4
    assert np.allclose(samples[0] / step, np.round(samples[0] / step), atol=1e-4)


@pytest.mark.parametrize(
    "ch", [IdentityChannel(), SparseChannel(), RandKChannel(1.0), TopKChannel(1.0)]
)
def test_lossless_settings_round_trip_exactly(ch) -> None:  # type: ignore[no-untyped-def]
    arrays = {
        "w": np.arange(12, dtype=np.float32).reshape(3, 4),
        "b": np.array([0.0, -1.5, 0.0], dtype=np.float32),
        "n": np.array(7, dtype=np.int64),  # integer arrays always travel unchanged
    }
    payload = ch.encode(arrays, np.random.default_rng(0))
    out = ch.decode(payload, arrays)
    assert set(out) == set(arrays)
    for k, v in arrays.items():
        assert out[k].shape == v.shape
        assert np.array_equal(out[k], v)


def test_identity_channel_is_byte_identical_to_a_plain_record() -> None:
    arrays = {"a": np.ones((2, 3), np.float32), "b": np.arange(4, dtype=np.int64)}
    payload = IdentityChannel().encode(arrays, np.random.default_rng(0))
    plain = arrays_from_numpy(arrays)
    assert list(payload.keys()) == list(plain.keys())
    assert all(payload[k].data == plain[k].data for k in plain)


def test_byte_counts_match_hand_computation() -> None:
    rng = np.random.default_rng(0)
    arrays = {"w": rng.normal(size=(10, 100)).astype(np.float32), "n": np.array(3, np.int64)}
    k = num_kept(1000, 0.05)
    assert k == 50

    def nbytes(ch) -> int:  # type: ignore[no-untyped-def]
        return payload_nbytes(ch.encode(arrays, np.random.default_rng(1)))

    assert nbytes(IdentityChannel()) == 1000 * 4 + 8
    assert nbytes(RandKChannel(0.05)) == 50 * 4 + 8 + 8  # values + one uint64 seed + int64
    assert nbytes(TopKChannel(0.05)) == 50 * (4 + 4) + 8  # values + int32 indices + int64
    assert nbytes(QSGDChannel(16)) == 1000 * 1 + 2 * 4 + 8  # int8 levels + 2 bucket norms
    sparse = {"v": np.array([0, 0, 2.0, 0, 0, 0, 0, 0, 0, 0], np.float32)}
    assert payload_nbytes(SparseChannel().encode(sparse, rng)) == 4 + 4
    # the framing Flower adds on the wire (.npy header) is what we leave out
    assert len(Array(arrays["w"]).data) == 4000 + 128


def test_num_kept_rounds_up_and_keeps_one() -> None:
    assert num_kept(200, 0.01) == 2
    assert num_kept(10, 0.01) == 1
    assert num_kept(10, 1.0) == 10
    assert num_kept(1000, 0.25) == 250


def test_channel_shorthand_composes_and_bad_values_are_named(fast_cfg) -> None:  # type: ignore[no-untyped-def]
    cfg = fast_cfg("channel.up=randk", "channel.up.ratio=0.05", "channel.down=qsgd")
    assert cfg.channel.up == ChannelSideConfig(name="randk", ratio=0.05, levels=16)
    assert cfg.channel.down.name == "qsgd"
    with pytest.raises(ConfigError, match=r"channel\.up\.name: unknown 'rank'"):
        fast_cfg("channel.up=rank")
    with pytest.raises(ConfigError, match=r"channel.down.ratio: must be in \(0, 1\]"):
        fast_cfg("channel.down=topk", "channel.down.ratio=0")


def _run(cfg, tmp_path: Path):  # type: ignore[no-untyped-def]
    from fedsim.app import CONFIG_KEY, make_client_app
    from fedsim.conf import to_json
    from fedsim.runtime.inline import InlineGrid
    from fedsim.server import run_experiment

    class RecordingGrid(InlineGrid):
        received: ClassVar[list[Message]] = []

        def send_and_receive(self, messages, *, timeout=None):  # type: ignore[no-untyped-def]
            replies = list(super().send_and_receive(messages, timeout=timeout))
            self.received.extend(replies)
            return replies

    grid = RecordingGrid(make_client_app(), cfg.scenario.num_clients, {CONFIG_KEY: to_json(cfg)})
    final = run_experiment(grid, cfg, tmp_path / "run", callbacks=[])
    return grid, final


def test_fedavg_through_randk_uplink_sends_what_was_counted(fast_cfg, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from fedsim.channels import wire_nbytes
    from fedsim.modelzoo import initial_model

    cfg = fast_cfg(
        "strategy=fedavg", "rounds=1", "scenario.num_clients=3", "channel.up=randk",
        "channel.up.ratio=0.1",
    )  # fmt: skip
    grid, final = _run(cfg, tmp_path)
    model = initial_model(cfg.backbone, (1, 8, 8), 10, cfg.seed)
    state = model.state_dict()
    buffers = {name for name, _ in model.named_buffers()}  # statistics travel uncompressed
    per_client = sum(
        num_kept(t.numel(), 0.1) * 4 + 8
        if t.is_floating_point() and k not in buffers
        else t.numel() * t.element_size()
        for k, t in state.items()
    )
    assert final["comm/bytes_up"] == 3 * per_client == wire_nbytes(grid.received)
    dense = sum(t.numel() * t.element_size() for t in state.values())
    assert final["comm/bytes_down"] == 3 * dense  # identity downlink: the model itself
    assert per_client < 0.15 * dense
    assert math.isfinite(final["eval/global_acc"])


def test_fedavg_identity_and_lossless_uplink_give_the_same_model(fast_cfg, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import torch

    a = fast_cfg("strategy=fedavg", "rounds=1", "scenario.num_clients=2")
    b = fast_cfg("strategy=fedavg", "rounds=1", "scenario.num_clients=2", "channel.up=randk",
                 "channel.up.ratio=1.0")  # fmt: skip
    _run(a, tmp_path / "a")
    _run(b, tmp_path / "b")
    ma = torch.load(tmp_path / "a" / "run" / "final_model.pt")
    mb = torch.load(tmp_path / "b" / "run" / "final_model.pt")
    for k in ma:  # the update travels as a float32 difference: equal up to rounding
        assert torch.allclose(ma[k].double(), mb[k].double(), atol=1e-6), k
