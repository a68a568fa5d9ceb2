"""Compression channels: seeded unbiasedness, contraction, round trips, byte counts, the
registry, the two stages of a link, and FedAvg through a lossy channel on the messages
that really cross the Grid."""

from __future__ import annotations

import math
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
from flwr.app import Array, Message

from fedsim.algorithms.channels import (
    IdentityChannel,
    Link,
    Links,
    QSGDChannel,
    RandKChannel,
    SparseChannel,
    TopKChannel,
    channel_classes,
    num_kept,
    payload_nbytes,
    randk,
    topk,
    validate_channel,
)
from fedsim.algorithms.payloads import ARRAYS
from fedsim.config import ChannelSideConfig
from fedsim.errors import ConfigError
from fedsim.records import arrays_from_numpy, numpy_from_arrays
from fedsim.seeding import derive_rng

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


# ----------------------------------------------------------------------------- registry


def test_the_registry_is_filled_by_entry_points_and_names_what_is_allowed() -> None:
    from importlib.metadata import entry_points

    classes = channel_classes()
    assert {"identity", "randk", "topk", "qsgd", "sparse"} <= set(classes)
    assert set(classes) == {ep.name for ep in entry_points(group="fedsim.channels")}
    allowed = ", ".join(sorted(classes))
    bad = validate_channel(ChannelSideConfig(name="rank"), "channel.up")
    assert bad == f"channel.up.name: unknown 'rank' (allowed: {allowed})"
    assert validate_channel(ChannelSideConfig(name="topk", ratio=0.2), "channel.up") is None


def test_compressors_describe_themselves_for_algorithms_that_compress() -> None:
    randk_, topk_ = RandKChannel(0.25), TopKChannel(0.25)
    assert (randk_.compression(), randk_.variance(), randk_.kept(200)) == (4.0, 4.0, 50)
    assert topk_.vector_nbytes(200) == 50 * 8  # values + int32 indices
    assert randk_.vector_nbytes(200) == 50 * 4 + 8  # values + one seed
    assert QSGDChannel(16).compression() == 4.0  # int8 levels instead of float32
    assert QSGDChannel(16).variance() == 1.0 + min(512 / 16**2, 512**0.5 / 16)  # 1 + sqrt(2)
    assert IdentityChannel().variance() == SparseChannel().variance() == 1.0
    assert IdentityChannel().verbatim and not SparseChannel().verbatim


# ----------------------------------------------------------------------------- links


def test_a_link_draws_from_its_direction_record_round_and_client() -> None:
    link = Link("up", RandKChannel(0.3), seed=7)
    payload = link.encode({"w": np.arange(1.0, 11.0, dtype=np.float32)}, 3, 1)
    sent_seed = int(payload["w|seed"].numpy()[0])
    assert sent_seed == int(derive_rng(7, "channel/up", 3, 1).integers(2**63))
    other = link.rng(3, 1, record="fraug.generator")  # any other record: its own stream
    assert other.random() == derive_rng(7, "channel/up/fraug.generator", 3, 1).random()
    assert link.rng(3).random() == derive_rng(7, "channel/up", 3).random()  # a broadcast


def test_an_update_link_sends_the_difference_and_adds_the_reference_back() -> None:
    up = Link("up", TopKChannel(0.5), seed=0)
    reference = {ARRAYS: {"w": np.array([1.0, 2.0, 3.0, 4.0], np.float32)}}
    trained = np.array([1.0, 2.5, 3.0, 0.0], np.float32)
    counts = arrays_from_numpy({"n": np.ones(2, np.float32)})
    records = {ARRAYS: arrays_from_numpy({"w": trained}), "counts": counts}
    # Act
    sent = up.send(records, 1, 0, reference=reference)
    back = up.receive(sent, reference=reference)
    # Assert: the update is [0, 0.5, 0, -4]; TopK keeps 2 of 4, its two non-zeros
    assert up.nbytes(sent[ARRAYS]) == 2 * 4 + 2 * 4  # values + int32 indices
    assert np.array_equal(numpy_from_arrays(back[ARRAYS])["w"], trained)
    assert sent["counts"] is counts and back["counts"] is counts  # no reference: as it is


def test_exact_records_and_the_identity_link_leave_records_untouched() -> None:
    stats = arrays_from_numpy({"s": np.arange(3, dtype=np.float32)})
    model = arrays_from_numpy({"w": np.ones(10, np.float32)})
    lossy = Link("down", RandKChannel(0.1), seed=0, exact=frozenset({"stats"}))
    sent = lossy.send({ARRAYS: model, "stats": stats}, 1, 0)
    assert sent["stats"] is stats and payload_nbytes(sent[ARRAYS]) == 4 + 8
    plain = Link("down", IdentityChannel(), seed=0).send({ARRAYS: model}, 1, 0)
    assert plain[ARRAYS] is model


def test_both_ends_hold_the_same_reference() -> None:
    # float64 arrays, as Flower's FedAdam returns them; RandK scales by d/k = 10/3
    links = Links(Link("up", SparseChannel(), 0), Link("down", RandKChannel(0.3), 0))
    glob = {"w": np.random.default_rng(0).normal(size=10)}
    sent = links.down.send({ARRAYS: arrays_from_numpy(glob)}, 2, 1)
    _, at_server = links.delivered(sent)
    got, at_client = links.delivered(sent)
    # a client that returns what it decoded gets exactly that back at the server
    back = links.up.receive(links.up.send(got, 2, 1, reference=at_client), reference=at_server)
    assert np.array_equal(numpy_from_arrays(back[ARRAYS])["w"], at_client[ARRAYS]["w"])
    assert at_client[ARRAYS]["w"].dtype == np.float32
    assert np.count_nonzero(at_client[ARRAYS]["w"]) == 3


def _run(cfg, tmp_path: Path):  # type: ignore[no-untyped-def]
    from fedsim.engine.app import CONFIG_KEY, make_client_app
    from fedsim.engine.conf import to_json
    from fedsim.engine.runtime.inline import InlineGrid
    from fedsim.engine.server import run_experiment

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
    from fedsim.algorithms.channels import wire_nbytes
    from fedsim.models.modelzoo import initial_model

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


def test_the_server_keeps_what_each_client_decoded(fast_cfg, tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """FedAdam's global arrays are float64; the server's reference of a client's update is
    the float32 arrays that client decoded from the lossy downlink, not a re-decoding."""
    from fedsim.algorithms.client import Client
    from fedsim.algorithms.wrap.server import FedsimStrategy

    at_client: dict[tuple[int, int], dict[str, np.ndarray]] = {}
    at_server: dict[tuple[int, int], dict[str, np.ndarray]] = {}
    fit, encode_down = Client.fit, FedsimStrategy._encode_down

    def recording_fit(self, ins):  # type: ignore[no-untyped-def]
        at_client[(ins.server_round, self.pid)] = numpy_from_arrays(ins.arrays)
        return fit(self, ins)

    def recording_encode(self, server_round, msg):  # type: ignore[no-untyped-def]
        out = encode_down(self, server_round, msg)
        pid = self.ctx.partition_of[msg.metadata.dst_node_id]
        at_server[(server_round, pid)] = self._received[pid][ARRAYS]
        return out

    monkeypatch.setattr(Client, "fit", recording_fit)
    monkeypatch.setattr(FedsimStrategy, "_encode_down", recording_encode)
    cfg = fast_cfg("strategy=fedadam", "strategy.eta=0.01", "rounds=2", "scenario.num_clients=2",
                   "train.local_steps=2", "channel.down=randk", "channel.down.ratio=0.3",
                   "channel.up=sparse")  # fmt: skip
    _run(cfg, tmp_path)
    assert sorted(at_client) == sorted(at_server) == [(1, 0), (1, 1), (2, 0), (2, 1)]
    for key, arrays in at_client.items():
        assert at_server[key].keys() == arrays.keys()
        for k, v in arrays.items():
            assert at_server[key][k].dtype == v.dtype, (key, k)
            assert np.array_equal(at_server[key][k], v), (key, k)
