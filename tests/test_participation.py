"""Participation plans: determinism, availability, sizes, dropout, stragglers, validation."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedsim.config import ParticipationConfig
from fedsim.data.participation import JITTER, ParticipationSampler, validate_participation
from fedsim.errors import ConfigError

FAST = settings(max_examples=40, deadline=None)

configs = st.builds(
    ParticipationConfig,
    fraction=st.floats(0.01, 1.0),
    clients_per_round=st.integers(0, 30),
    min_clients=st.integers(1, 10),
    availability=st.floats(0.05, 1.0),
    diurnal_period=st.sampled_from([0, 5, 24]),
    dropout=st.floats(0.0, 0.9),
    straggler_fraction=st.floats(0.0, 1.0),
    straggler_slowdown=st.floats(1.0, 10.0),
    deadline=st.sampled_from([0.0, 1.2, 3.0, 50.0]),
)


@FAST
@given(cfg=configs, seed=st.integers(0, 2**32 - 1), rounds=st.lists(st.integers(0, 10**6)))
def test_plan_invariants(cfg, seed, rounds):
    num_clients = 50
    sampler = ParticipationSampler(cfg, num_clients, seed)
    for r in [0, 1, *rounds[:5]]:
        plan = sampler.plan(r)
        # Never an unavailable client; ids sorted and unique.
        assert np.all(np.isin(plan.selected, plan.available))
        assert np.all(np.diff(plan.selected) > 0)
        assert np.all(np.diff(plan.available) > 0)
        assert np.all(np.isin(plan.dropped, plan.selected))
        assert np.all(np.isin(plan.late, plan.selected))
        assert np.intersect1d(plan.dropped, plan.late).size == 0
        assert plan.speed.shape == plan.selected.shape == plan.time.shape
        # Size rule: target raised to min_clients, capped by availability.
        assert plan.selected.size == min(sampler.target, plan.available.size)
        assert sampler.target >= cfg.min_clients
        # Skip exactly when fewer than min_clients can report.
        assert plan.skip == (plan.reporting.size < cfg.min_clients)
        assert bool(plan.reason) == plan.skip


@FAST
@given(cfg=configs, seed=st.integers(0, 2**32 - 1))
def test_plan_independent_of_call_order_and_instance(cfg, seed):
    a = ParticipationSampler(cfg, 40, seed)
    b = ParticipationSampler(cfg, 40, seed)
    forward = [a.plan(r) for r in range(6)]
    backward = [b.plan(r) for r in reversed(range(6))][::-1]
    assert forward == backward
    assert a.plan(3) == forward[3]


def test_other_seed_gives_other_plans():
    cfg = ParticipationConfig(fraction=0.1, availability=0.8, dropout=0.2)
    a = ParticipationSampler(cfg, 1000, seed=1)
    b = ParticipationSampler(cfg, 1000, seed=2)
    assert a.plan(5) != b.plan(5)
    assert not np.array_equal(a.plan(5).selected, b.plan(5).selected)
    # ...and rounds differ from each other.
    assert not np.array_equal(a.plan(5).selected, a.plan(6).selected)


def test_selection_does_not_change_when_dropout_changes():
    base = ParticipationConfig(fraction=0.2, availability=0.7)
    with_dropout = ParticipationConfig(fraction=0.2, availability=0.7, dropout=0.5)
    a = ParticipationSampler(base, 200, seed=0).plan(4)
    b = ParticipationSampler(with_dropout, 200, seed=0).plan(4)
    assert np.array_equal(a.selected, b.selected)
    assert a.dropped.size == 0 < b.dropped.size


def test_sizes_by_hand():
    assert ParticipationSampler(ParticipationConfig(fraction=0.1), 95, 0).target == 10
    assert ParticipationSampler(ParticipationConfig(fraction=0.001), 95, 0).target == 1
    cfg = ParticipationConfig(fraction=0.1, clients_per_round=7)
    assert ParticipationSampler(cfg, 95, 0).target == 7
    cfg = ParticipationConfig(clients_per_round=3, min_clients=5)
    assert ParticipationSampler(cfg, 95, 0).plan(0).selected.size == 5


def test_full_participation_selects_everyone():
    plan = ParticipationSampler(ParticipationConfig(), 7, 0).plan(0)
    assert plan.selected.tolist() == list(range(7))
    assert plan.speed.tolist() == [1.0] * 7
    assert not plan.skip and plan.reason == ""


def test_availability_rate_and_cap_by_available():
    cfg = ParticipationConfig(fraction=1.0, availability=0.3)
    sampler = ParticipationSampler(cfg, 1000, seed=0)
    rates = [sampler.plan(r).available.size / 1000 for r in range(50)]
    assert np.mean(rates) == pytest.approx(0.3, abs=0.02)
    plan = sampler.plan(0)
    assert np.array_equal(plan.selected, plan.available)  # capped by who is available


def test_diurnal_availability_cycles_around_the_mean():
    cfg = ParticipationConfig(availability=0.5, diurnal_period=24)
    sampler = ParticipationSampler(cfg, 2000, seed=0)
    p = np.stack([sampler.availability(t) for t in range(24)])
    assert p.min() >= 0.0 and p.max() <= 1.0
    assert p.mean() == pytest.approx(0.5, abs=1e-9)  # mean over a whole period
    # One client swings from ~0 to ~1 over a day; clients peak at different hours.
    assert p[:, 0].max() - p[:, 0].min() > 0.9
    assert len(set(p.argmax(axis=0).tolist())) > 12
    # Drawn availability follows the trace.
    counts = np.array([sampler.plan(t).available.size for t in range(240)]) / 2000
    assert counts.mean() == pytest.approx(0.5, abs=0.02)


def test_low_availability_skips_rounds_with_a_reason():
    cfg = ParticipationConfig(clients_per_round=5, min_clients=5, availability=0.05)
    sampler = ParticipationSampler(cfg, 20, seed=0)
    plans = [sampler.plan(r) for r in range(50)]
    skipped = [p for p in plans if p.skip]
    assert skipped, "with 1 of 20 clients available on average some rounds must skip"
    assert all("available" in p.reason for p in skipped)
    assert all(p.selected.size >= 5 for p in plans if not p.skip)


def test_min_clients_respected_when_enough_available():
    cfg = ParticipationConfig(fraction=0.01, min_clients=8, availability=0.5)
    sampler = ParticipationSampler(cfg, 100, seed=3)
    for r in range(30):
        plan = sampler.plan(r)
        assert plan.selected.size == min(8, plan.available.size)


def test_dropout_and_straggler_fractions_roughly_right():
    cfg = ParticipationConfig(
        clients_per_round=100, dropout=0.2, straggler_fraction=0.25, straggler_slowdown=4.0
    )
    sampler = ParticipationSampler(cfg, 1000, seed=0)
    assert sampler.stragglers.size == 250
    plans = [sampler.plan(r) for r in range(100)]
    dropped = sum(p.dropped.size for p in plans) / sum(p.selected.size for p in plans)
    slow = np.concatenate([p.speed for p in plans])
    assert dropped == pytest.approx(0.2, abs=0.02)
    assert np.mean(slow == 4.0) == pytest.approx(0.25, abs=0.02)
    assert set(np.unique(slow).tolist()) == {1.0, 4.0}
    # The straggler set is fixed: a slow client is slow in every round.
    for p in plans[:5]:
        assert np.array_equal(
            p.selected[p.speed == 4.0], np.intersect1d(p.selected, sampler.stragglers)
        )


def test_deadline_makes_exactly_the_stragglers_late():
    cfg = ParticipationConfig(straggler_fraction=0.3, straggler_slowdown=2.0, deadline=1.5)
    plan = ParticipationSampler(cfg, 100, seed=0).plan(2)
    assert np.all((plan.time >= plan.speed) & (plan.time < plan.speed * (1 + JITTER)))
    assert np.array_equal(plan.late, plan.selected[plan.speed == 2.0])
    assert plan.reporting.size == 70


def test_hundred_thousand_clients_plan():
    cfg = ParticipationConfig(
        fraction=0.001,
        availability=0.6,
        diurnal_period=24,
        dropout=0.1,
        straggler_fraction=0.1,
        deadline=2.0,
    )
    sampler = ParticipationSampler(cfg, 100_000, seed=0)
    plan = sampler.plan(17)
    assert plan.selected.size == 100
    assert np.all(np.isin(plan.selected, plan.available))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"fraction": 1.5}, "participation.fraction: must be in (0, 1], got 1.5"),
        ({"fraction": 0.0}, "participation.fraction: must be in (0, 1], got 0.0"),
        ({"clients_per_round": 11}, "participation.clients_per_round: must be in [0, num_clients"),
        ({"min_clients": 11}, "participation.min_clients: must be in [1, num_clients=10], got 11"),
        ({"min_clients": 0}, "participation.min_clients: must be in [1"),
        ({"availability": 1.2}, "participation.availability: must be a probability in (0, 1]"),
        ({"availability": float("nan")}, "participation.availability: must be"),
        ({"diurnal_period": -1}, "participation.diurnal_period: must be >= 0"),
        ({"dropout": -0.1}, "participation.dropout: must be a probability in [0, 1)"),
        ({"dropout": 1.0}, "participation.dropout: must be a probability in [0, 1)"),
        ({"straggler_fraction": 2.0}, "participation.straggler_fraction: must be in [0, 1]"),
        ({"straggler_slowdown": 0.5}, "participation.straggler_slowdown: must be a finite"),
        ({"deadline": 0.5}, "participation.deadline: must be 0 (no deadline) or >= 1.1"),
        ({"deadline": -1.0}, "participation.deadline: must be 0"),
    ],
)
def test_validation_names_the_key(overrides, message):
    cfg = ParticipationConfig(**overrides)
    with pytest.raises(ConfigError) as info:
        validate_participation(cfg, num_clients=10)
    assert str(info.value).startswith(message)


def test_sampler_validates_and_rejects_negative_seed():
    with pytest.raises(ConfigError, match=r"^participation\.fraction"):
        ParticipationSampler(ParticipationConfig(fraction=2.0), 10, 0)
    with pytest.raises(ConfigError, match=r"^seed: must be >= 0"):
        ParticipationSampler(ParticipationConfig(), 10, -1)
