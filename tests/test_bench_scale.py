"""What lets 1,000,000 registered clients run at a per-round cost set by the sampled ones
(behaviour only; the timings live in bench/results/scale.md)."""

from __future__ import annotations

import numpy as np

from fedsim.config import ParticipationConfig
from fedsim.data.participation import ParticipationSampler


def test_full_availability_plans_share_one_population_and_draw_as_before() -> None:
    n = 1_000_000
    sampler = ParticipationSampler(ParticipationConfig(clients_per_round=100), n, 7)
    p1, p2 = sampler.plan(1), sampler.plan(2)
    assert p1.available is p2.available  # built once, not per round
    assert not p1.available.flags.writeable
    assert p1.available.size == n and p1.available[-1] == n - 1
    for rnd, plan in ((1, p1), (2, p2)):
        # the draw equals sampling from the materialised population (the old code path)
        ref = np.random.default_rng([7, rnd, 1]).choice(np.arange(n), 100, replace=False)
        assert np.array_equal(plan.selected, np.sort(ref))
    assert not np.array_equal(p1.selected, p2.selected)


def test_inline_grid_creates_contexts_only_for_clients_it_runs() -> None:
    from flwr.clientapp import ClientApp

    from fedsim.engine.runtime.inline import NODE_BASE, InlineGrid

    grid = InlineGrid(ClientApp(), 1_000_000, {})
    try:
        assert len(grid.node_map()) == 1_000_000
        grid.context(NODE_BASE + 999_999)
        assert len(grid.client_states()) == 0  # empty states are not kept
        assert len(grid._local.contexts) == 1
    finally:
        grid.close()
