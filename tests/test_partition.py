"""Partitioners: coverage of every sample, skew where promised, validation messages."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedsim.config import PartitionConfig
from fedsim.data.partition import (
    holdout_sizes,
    label_skew,
    partition,
    split_holdout,
    split_holdouts,
)
from fedsim.data.partition_checks import KINDS, validate_partition
from fedsim.errors import ConfigError

FAST = settings(max_examples=40, deadline=None)


def _data(seed: int, n: int, num_classes: int, num_domains: int = 1):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, num_classes, n)
    domains = rng.integers(0, num_domains, n)
    return labels, domains


def _owner_counts(parts: list[np.ndarray], n: int) -> np.ndarray:
    return np.bincount(np.concatenate(parts), minlength=n) if parts else np.zeros(n, int)


def _assert_well_formed(parts: list[np.ndarray], num_clients: int) -> None:
    assert len(parts) == num_clients
    for p in parts:
        assert p.dtype == np.int64
        assert np.all(np.diff(p) > 0), "indices must be sorted and unique"


# --------------------------------------------------------------------------- properties

exact_kinds = st.sampled_from(["iid", "dirichlet", "pathological", "quantity_skew"])


@FAST
@given(
    kind=exact_kinds,
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(200, 2000),
    num_clients=st.integers(1, 20),
    num_classes=st.integers(2, 10),
)
def test_every_sample_exactly_once_and_no_empty_client(kind, seed, n, num_clients, num_classes):
    # Arrange: alpha large enough that min_samples=2 is reachable on these sizes
    labels, _ = _data(seed, n, num_classes)
    cfg = PartitionConfig(kind=kind, alpha=1.0, min_samples=2, classes_per_client=2)
    # Act
    parts = partition(labels, None, num_clients, cfg, np.random.default_rng(seed))
    # Assert
    _assert_well_formed(parts, num_clients)
    assert np.all(_owner_counts(parts, n) == 1)
    assert min(len(p) for p in parts) >= 1


@FAST
@given(
    seed=st.integers(0, 2**32 - 1),
    num_domains=st.integers(1, 4),
    clients_per_domain=st.integers(1, 5),
)
def test_by_domain_clients_hold_only_their_domain(seed, num_domains, clients_per_domain):
    labels, domains = _data(seed, 600, 10, num_domains)
    num_clients = num_domains * clients_per_domain
    cfg = PartitionConfig(kind="by_domain", clients_per_domain=clients_per_domain)

    parts = partition(
        labels, domains, num_clients, cfg, np.random.default_rng(seed), num_domains=num_domains
    )

    _assert_well_formed(parts, num_clients)
    assert np.all(_owner_counts(parts, labels.size) == 1)
    for k, p in enumerate(parts):
        assert len(p) > 0
        assert set(domains[p].tolist()) == {k // clients_per_domain}


@FAST
@given(
    seed=st.integers(0, 2**32 - 1),
    weights=st.lists(
        st.lists(st.floats(0, 5, allow_nan=False), min_size=3, max_size=3).filter(
            lambda row: sum(row) > 0.1
        ),
        min_size=1,
        max_size=8,
    ),
)
def test_by_domain_mixture_uses_samples_at_most_once_in_proportion(seed, weights):
    labels, domains = _data(seed, 3000, 10, 3)
    cfg = PartitionConfig(kind="by_domain", mixture=weights, allow_empty=True)

    parts = partition(labels, domains, len(weights), cfg, np.random.default_rng(seed))

    _assert_well_formed(parts, len(weights))
    assert np.all(_owner_counts(parts, labels.size) <= 1)
    for row, p in zip(weights, parts, strict=True):
        held = np.bincount(domains[p], minlength=3)
        for d, w in enumerate(row):
            if w == 0:
                assert held[d] == 0
        # Share of each source within one sample per source of the requested mix.
        expected = np.asarray(row) / sum(row) * len(p)
        assert np.all(np.abs(held - expected) <= 3 + 1e-9)


def test_mixture_equal_weights_use_all_data_of_equal_sources():
    # Two sources of 100 samples, two clients mixing them 1:1 -> 100 samples each, all used.
    labels = np.zeros(200, dtype=np.int64)
    domains = np.repeat([0, 1], 100)
    cfg = PartitionConfig(kind="by_domain", mixture=[[1.0, 1.0], [1.0, 1.0]])

    parts = partition(labels, domains, 2, cfg, np.random.default_rng(0))

    assert [len(p) for p in parts] == [100, 100]
    assert np.all(_owner_counts(parts, 200) == 1)
    assert np.bincount(domains[parts[0]]).tolist() == [50, 50]


def test_mixture_limited_by_scarce_source():
    # Source 1 has only 10 samples; client 1 wants half of its data from it -> size 20 each,
    # and 80 samples of source 0 stay unused.
    labels = np.zeros(110, dtype=np.int64)
    domains = np.repeat([0, 1], [100, 10])
    cfg = PartitionConfig(kind="by_domain", mixture=[[1.0, 0.0], [1.0, 1.0]])

    parts = partition(labels, domains, 2, cfg, np.random.default_rng(0))

    assert [len(p) for p in parts] == [20, 20]
    assert np.bincount(domains[parts[1]], minlength=2).tolist() == [10, 10]
    assert np.all(domains[parts[0]] == 0)


@FAST
@given(
    seed=st.integers(0, 2**32 - 1),
    num_classes=st.integers(2, 10),
    k=st.integers(1, 4),
    clients_per_class=st.integers(1, 5),
)
def test_pathological_gives_at_most_k_classes(seed, num_classes, k, clients_per_class):
    # Classes divide evenly: num_classes * clients_per_class clients x k shards of 7 samples,
    # k * clients_per_class shards per class, so every shard holds a single class.
    num_clients = num_classes * clients_per_class
    per_class = 7 * k * clients_per_class
    labels = np.random.default_rng(seed).permutation(np.repeat(np.arange(num_classes), per_class))
    cfg = PartitionConfig(kind="pathological", classes_per_client=k)

    parts = partition(labels, None, num_clients, cfg, np.random.default_rng(seed))

    assert np.all(_owner_counts(parts, labels.size) == 1)
    assert all(len(p) == 7 * k for p in parts)
    for p in parts:
        assert len(np.unique(labels[p])) <= k


def test_pathological_single_class_shards_by_hand():
    # 4 classes x 10 samples, 4 clients x 1 shard of 10: each client holds exactly one class.
    labels = np.repeat(np.arange(4), 10)
    cfg = PartitionConfig(kind="pathological", classes_per_client=1)

    parts = partition(labels, None, 4, cfg, np.random.default_rng(3))

    assert sorted(int(np.unique(labels[p])[0]) for p in parts) == [0, 1, 2, 3]
    assert all(len(np.unique(labels[p])) == 1 for p in parts)


def test_dirichlet_skew_grows_as_alpha_shrinks():
    labels, _ = _data(0, 10_000, 10)
    skews = []
    for alpha in (100.0, 1.0, 0.05):
        cfg = PartitionConfig(kind="dirichlet", alpha=alpha, min_samples=1)
        parts = partition(labels, None, 20, cfg, np.random.default_rng(1))
        skews.append(label_skew(parts, labels, 10))

    assert skews[0] < 0.1  # near IID
    assert skews[0] < skews[1] < skews[2]
    assert skews[2] > 0.6  # most clients hold one or two classes


@FAST
@given(seed=st.integers(0, 2**32 - 1), alpha=st.floats(0.05, 10))
def test_dirichlet_balance_caps_clients_near_fair_share(seed, alpha):
    labels, _ = _data(seed, 2000, 10)
    cfg = PartitionConfig(kind="dirichlet", alpha=alpha, balance=True, min_samples=0)
    cfg.allow_empty = True

    parts = partition(labels, None, 10, cfg, np.random.default_rng(seed))

    assert np.all(_owner_counts(parts, labels.size) == 1)
    # A client stops receiving at N/K = 200, so it overshoots by at most one class (~200).
    assert max(len(p) for p in parts) < 200 + np.bincount(labels).max()


def test_dirichlet_balance_shrinks_the_largest_client():
    labels, _ = _data(0, 2000, 10)

    def largest(balance: bool) -> float:
        cfg = PartitionConfig(
            kind="dirichlet", alpha=0.1, balance=balance, min_samples=0, allow_empty=True
        )
        rngs = (np.random.default_rng(s) for s in range(10))
        return float(
            np.mean([max(len(p) for p in partition(labels, None, 10, cfg, r)) for r in rngs])
        )

    assert largest(True) < 0.85 * largest(False)


def test_dirichlet_impossible_min_samples_raises_config_error():
    labels, _ = _data(0, 100, 10)
    cfg = PartitionConfig(kind="dirichlet", alpha=0.001, min_samples=9)

    with pytest.raises(ConfigError, match=r"^partition\.min_samples: could not"):
        partition(labels, None, 11, cfg, np.random.default_rng(0))


@pytest.mark.parametrize("quantity", ["lognormal", "powerlaw"])
def test_quantity_skew_sizes_vary_and_respect_min(quantity):
    labels, _ = _data(0, 5000, 10)
    cfg = PartitionConfig(kind="quantity_skew", quantity=quantity, sigma=1.0, min_samples=5)

    parts = partition(labels, None, 50, cfg, np.random.default_rng(0))
    sizes = np.array([len(p) for p in parts])

    assert sizes.sum() == 5000
    assert sizes.min() >= 5
    assert sizes.max() > 3 * sizes.min()
    assert sizes.std() / sizes.mean() > 0.4
    # Labels stay IID within clients: far less skew than a label-skewed split.
    assert label_skew(parts, labels, 10) < 0.3


def test_iid_sizes_differ_by_at_most_one():
    labels, _ = _data(0, 103, 3)
    parts = partition(labels, None, 10, PartitionConfig(kind="iid"), np.random.default_rng(0))
    assert sorted(len(p) for p in parts) == [10] * 7 + [11] * 3


def test_same_rng_seed_same_partition_other_seed_differs():
    labels, _ = _data(0, 1000, 10)
    cfg = PartitionConfig(kind="dirichlet", alpha=0.5)
    a = partition(labels, None, 10, cfg, np.random.default_rng(7))
    b = partition(labels, None, 10, cfg, np.random.default_rng(7))
    c = partition(labels, None, 10, cfg, np.random.default_rng(8))
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=True))


def test_allow_empty_permits_more_clients_than_samples():
    labels = np.arange(5) % 2
    cfg = PartitionConfig(kind="iid", allow_empty=True)
    parts = partition(labels, None, 8, cfg, np.random.default_rng(0))
    assert sorted(len(p) for p in parts) == [0, 0, 0, 1, 1, 1, 1, 1]


def test_hundred_thousand_clients():
    labels, domains = _data(0, 300_000, 10, 2)
    for cfg in (
        PartitionConfig(kind="iid"),
        PartitionConfig(kind="dirichlet", alpha=0.5, min_samples=0, allow_empty=True),
        PartitionConfig(kind="pathological", classes_per_client=2),
        PartitionConfig(kind="quantity_skew", min_samples=1),
        PartitionConfig(kind="by_domain", clients_per_domain=50_000),
    ):
        parts = partition(labels, domains, 100_000, cfg, np.random.default_rng(0))
        assert len(parts) == 100_000
        assert np.all(_owner_counts(parts, labels.size) == 1)
    splits = split_holdouts(parts, 0.2, np.random.default_rng(0))
    assert len(splits) == 100_000


# --------------------------------------------------------------------------- holdout


def test_holdout_sizes_by_hand():
    assert holdout_sizes(np.array([0, 1, 2, 3, 10, 100]), 0.2).tolist() == [0, 0, 1, 1, 2, 20]
    assert holdout_sizes(np.array([2, 10]), 0.9).tolist() == [1, 9]
    assert holdout_sizes(np.array([5]), 0.0).tolist() == [0]


@FAST
@given(
    seed=st.integers(0, 2**32 - 1),
    sizes=st.lists(st.integers(0, 50), min_size=1, max_size=20),
    fraction=st.floats(0, 0.95),
)
def test_split_holdouts_is_a_disjoint_cover(seed, sizes, fraction):
    rng = np.random.default_rng(seed)
    perm = rng.permutation(sum(sizes))
    parts = [np.sort(x) for x in np.split(perm, np.cumsum(sizes)[:-1])]

    splits = split_holdouts(parts, fraction, np.random.default_rng(seed))

    for p, (train, held) in zip(parts, splits, strict=True):
        assert np.array_equal(np.sort(np.concatenate([train, held])), p)
        assert np.intersect1d(train, held).size == 0
        assert np.all(np.diff(train) > 0) and np.all(np.diff(held) > 0)
        if fraction > 0 and len(p) >= 2:
            assert 1 <= len(held) <= len(p) - 1
        if fraction == 0:
            assert len(held) == 0


def test_split_holdout_single_client():
    train, held = split_holdout(np.arange(10, 20), 0.3, np.random.default_rng(0))
    assert len(held) == 3 and len(train) == 7
    assert np.array_equal(np.sort(np.concatenate([train, held])), np.arange(10, 20))


def test_holdout_fraction_one_is_rejected():
    with pytest.raises(ConfigError, match=r"^evaluation\.holdout_fraction: must be in \[0, 1\)"):
        split_holdouts([np.arange(3)], 1.0, np.random.default_rng(0))


# --------------------------------------------------------------------------- label skew


def test_label_skew_by_hand():
    labels = np.array([0, 0, 1, 1])
    # Each client holds one class: p_k = (1, 0), global (0.5, 0.5) -> TV = 0.5.
    assert label_skew([np.array([0, 1]), np.array([2, 3])], labels, 2) == pytest.approx(0.5)
    # Each client holds both classes equally: TV = 0.
    assert label_skew([np.array([0, 2]), np.array([1, 3])], labels, 2) == pytest.approx(0.0)
    # Empty clients are ignored.
    assert label_skew([np.array([0, 2]), np.array([], dtype=np.int64)], labels, 2) == 0.0


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("overrides", "num_clients", "message"),
    [
        (
            {"kind": "foo"},
            10,
            "partition.kind: unknown 'foo' "
            "(allowed: by_domain, dirichlet, iid, pathological, quantity_skew)",
        ),
        ({"alpha": -1}, 10, "partition.alpha: must be > 0, got -1"),
        ({"min_samples": -2}, 10, "partition.min_samples: must be >= 0, got -2"),
        ({"classes_per_client": 0}, 10, "partition.classes_per_client: must be >= 1"),
        ({"quantity": "zipf"}, 10, "partition.quantity: unknown 'zipf'"),
        ({"sigma": 0}, 10, "partition.sigma: must be > 0"),
        ({"kind": "iid"}, 5000, "num_clients: 5000 clients but only 1797 training samples"),
        ({"kind": "iid"}, 0, "num_clients: must be >= 1, got 0"),
        ({"kind": "dirichlet", "min_samples": 200}, 10, "partition.min_samples: 10 clients x 200"),
        (
            {"kind": "pathological", "classes_per_client": 2},
            1000,
            "partition.classes_per_client: 1000 clients x 2 shards",
        ),
        ({"kind": "by_domain", "clients_per_domain": 2}, 5, "num_clients: by_domain without"),
        ({"kind": "by_domain", "mixture": [[1, 1, 1]]}, 2, "partition.mixture: expected 2 rows"),
        (
            {"kind": "by_domain", "mixture": [[1, 1, 1], [1, 1]]},
            2,
            "partition.mixture[1]: expected 3 weights",
        ),
        (
            {"kind": "by_domain", "mixture": [[1, -0.5, 1], [1, 1, 1]]},
            2,
            "partition.mixture[0][1]: must be a finite weight >= 0, got -0.5",
        ),
        (
            {"kind": "by_domain", "mixture": [[1, 1, 1], [0, 0, 0]]},
            2,
            "partition.mixture[1]: weights sum to 0",
        ),
    ],
)
def test_validation_names_the_key(overrides, num_clients, message):
    cfg = PartitionConfig(**overrides)
    with pytest.raises(ConfigError) as info:
        validate_partition(cfg, num_clients, num_samples=1797, num_domains=3)
    assert str(info.value).startswith(message)


def test_validation_accepts_defaults_for_every_kind():
    for kind in KINDS:
        validate_partition(PartitionConfig(kind=kind, clients_per_domain=2), 6, 1797, 3)


def test_by_domain_too_small_source_names_clients_per_domain():
    labels = np.zeros(12, dtype=np.int64)
    domains = np.array([0] * 10 + [1] * 2)
    cfg = PartitionConfig(kind="by_domain", clients_per_domain=3)
    with pytest.raises(
        ConfigError, match=r"^partition\.clients_per_domain: .* source 1 has only 2"
    ):
        partition(labels, domains, 6, cfg, np.random.default_rng(0))
