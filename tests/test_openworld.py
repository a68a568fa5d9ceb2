"""Open-world split and metrics: hand-checkable structure and accuracies."""

from __future__ import annotations

import numpy as np
import pytest

from fedsim.config import OpenWorldConfig
from fedsim.data.openworld import (
    ClassRoles,
    class_roles,
    hungarian_accuracy,
    open_world_metrics,
    open_world_split,
    validate_open_world,
)
from fedsim.errors import ConfigError

# The FedoSSL CIFAR-10 layout (spec §1): 6 everywhere, 7 and 8 at two clients, 9 at one.
SPEC_SETS = [
    [0, 1, 2, 3, 4, 5, 6, 7],
    [0, 1, 2, 3, 4, 5, 6, 7],
    [0, 1, 2, 3, 4, 5, 6, 8],
    [0, 1, 2, 3, 4, 5, 6, 8],
    [0, 1, 2, 3, 4, 5, 6, 9],
]


def _cfg(disjoint: bool = True, fraction: float = 0.5) -> OpenWorldConfig:
    return OpenWorldConfig(
        enabled=True,
        seen_classes=[0, 1, 2, 3, 4, 5],
        labeled_fraction=fraction,
        client_classes=[list(s) for s in SPEC_SETS],
        disjoint=disjoint,
    )


# ------------------------------------------------------------------ Hungarian accuracy


def test_permuted_perfect_clustering_scores_one() -> None:
    true = np.array([0, 0, 1, 1, 2, 2, 3])
    perm = np.array([2, 3, 0, 1])  # cluster id = perm[class]
    assert hungarian_accuracy(perm[true], true) == 1.0


def test_hungarian_accuracy_on_a_hand_built_confusion_matrix() -> None:
    # clusters 2->class 0 (2 hits), 0->class 1 (2 hits), 1->class 2 (1 hit): 5 of 6
    true = np.array([0, 0, 0, 1, 1, 2])
    pred = np.array([2, 2, 1, 0, 0, 1])
    assert hungarian_accuracy(pred, true) == pytest.approx(5 / 6)


def test_hungarian_accuracy_is_not_plain_accuracy() -> None:
    true = np.array([0, 1, 2, 0, 1, 2])
    pred = (true + 1) % 3
    assert np.mean(pred == true) == 0.0
    assert hungarian_accuracy(pred, true) == 1.0


def test_open_world_metrics_seen_plain_unseen_hungarian_and_the_split() -> None:
    roles = ClassRoles(seen=(0, 1), unseen=(2, 3, 4), local_unseen=(2, 3), global_unseen=(4,))
    true = np.array([0, 0, 1, 1, 2, 2, 3, 3, 4, 4])
    # seen: 3 of 4 right (plain); unseen: 2->7, 3->8 perfectly, class 4 split 7/9
    pred = np.array([0, 0, 1, 0, 7, 7, 8, 8, 9, 7])
    m = open_world_metrics(pred, true, roles)
    assert m["acc_seen"] == pytest.approx(3 / 4)
    assert m["acc_unseen"] == pytest.approx(5 / 6)  # 7->2, 8->3, 9->4
    assert m["acc_unseen_local"] == pytest.approx(1.0)
    assert m["acc_unseen_global"] == pytest.approx(1 / 2)
    # all classes, one matching: 0->0, 1->1, 7->2, 8->3, 9->4: 3 + 2 + 2 + 1 hits
    assert m["acc_all"] == pytest.approx(8 / 10)


def test_open_world_metrics_leave_out_empty_subsets() -> None:
    roles = ClassRoles(seen=(0,), unseen=(1,), local_unseen=(1,), global_unseen=())
    m = open_world_metrics(np.array([0, 1]), np.array([0, 1]), roles)
    assert "acc_unseen_global" not in m
    assert m["acc_unseen_local"] == 1.0


# ------------------------------------------------------------------ split


def _labels(per_class: int = 100, classes: int = 10) -> np.ndarray:
    return np.random.default_rng(3).permutation(np.repeat(np.arange(classes), per_class))


def test_split_gives_each_client_exactly_its_classes_and_the_spec_roles() -> None:
    labels = _labels()
    split = open_world_split(labels, _cfg(), 10, np.random.default_rng(0))
    for k, idx in enumerate(split.parts):
        assert set(np.unique(labels[idx]).tolist()) == set(SPEC_SETS[k])
    assert split.roles.seen == (0, 1, 2, 3, 4, 5)
    assert split.roles.unseen == (6, 7, 8, 9)
    assert split.roles.local_unseen == (6, 7, 8)
    assert split.roles.global_unseen == (9,)


def test_disjoint_split_covers_every_sample_once_and_hides_unseen_labels() -> None:
    labels = _labels()
    split = open_world_split(labels, _cfg(), 10, np.random.default_rng(0))
    flat = np.concatenate(split.parts)
    assert len(flat) == len(np.unique(flat)) == len(labels)
    assert not split.labeled[np.isin(labels, [6, 7, 8, 9])].any()
    # class 6: 100 images over 5 holders; class 7: 50 + 50; class 9: all 100 at client 4
    counts = [np.bincount(labels[idx], minlength=10) for idx in split.parts]
    assert [c[6] for c in counts] == [20, 20, 20, 20, 20]
    assert [c[7] for c in counts] == [50, 50, 0, 0, 0]
    assert [c[9] for c in counts] == [0, 0, 0, 0, 100]
    # half of each client's share of each seen class is labelled (20 per class -> 10)
    for idx in split.parts:
        lab = idx[split.labeled[idx]]
        assert np.bincount(labels[lab], minlength=10).tolist() == [10] * 6 + [0] * 4


def test_non_disjoint_split_duplicates_like_the_official_code() -> None:
    labels = _labels()
    split = open_world_split(labels, _cfg(disjoint=False), 10, np.random.default_rng(0))
    a, b = split.parts[0], split.parts[1]  # same class set -> identical images
    assert np.array_equal(a, b)
    c6 = [set(idx[labels[idx] == 6].tolist()) for idx in split.parts]
    assert all(s == c6[0] for s in c6) and len(c6[0]) == 20


def test_split_is_deterministic_given_the_generator() -> None:
    labels = _labels()
    s1 = open_world_split(labels, _cfg(), 10, np.random.default_rng(5))
    s2 = open_world_split(labels, _cfg(), 10, np.random.default_rng(5))
    assert all(np.array_equal(a, b) for a, b in zip(s1.parts, s2.parts, strict=True))
    assert np.array_equal(s1.labeled, s2.labeled)


# ------------------------------------------------------------------ validation


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"client_classes": [s[:-1] for s in SPEC_SETS]},
            "unseen classes [7, 8, 9] are held by no",
        ),
        ({"seen_classes": [0, 1, 12]}, "seen_classes: class 12 is outside the dataset"),
        ({"client_classes": SPEC_SETS[:4]}, "client_classes: lists 4 class sets"),
        ({"labeled_fraction": 0.0}, "labeled_fraction: must be in (0, 1]"),
        ({"client_classes": [*SPEC_SETS[:4], [0, 10]]}, "client_classes[4]: class 10 is outside"),
        ({"seen_classes": list(range(10))}, "every class is seen"),
    ],
)
def test_validation_names_the_key_and_the_problem(change: dict, message: str) -> None:  # type: ignore[type-arg]
    cfg = _cfg()
    for key, value in change.items():
        setattr(cfg, key, value)
    with pytest.raises(ConfigError, match=r"^open_world\.") as err:
        validate_open_world(cfg, 5, 10)
    assert message in str(err.value)


def test_class_roles_of_the_spec_layout() -> None:
    roles = class_roles(_cfg(), 10)
    assert roles.local_unseen == (6, 7, 8) and roles.global_unseen == (9,)


def test_federation_uses_the_open_world_split_for_open_world_scenarios(fast_cfg) -> None:  # type: ignore[no-untyped-def]
    from fedsim.data.federation import build_federation

    cfg = fast_cfg("scenario=digits_open_world")
    fed = build_federation(cfg.scenario, cfg.seed)
    assert fed.labeled is not None and fed.labeled.shape == fed.data.train_y.shape
    labels = fed.data.train_y.numpy()
    for pid, classes in enumerate(cfg.scenario.open_world.client_classes):
        data = fed.client(pid)
        assert set(np.unique(data.y.numpy()).tolist()) == set(classes)
        assert data.labeled is not None and data.labeled.shape == data.y.shape
        assert not data.labeled[data.y >= 6].any()  # unseen classes are never labelled
    assert fed.labeled[np.isin(labels, [0, 1, 2, 3, 4, 5])].mean() == pytest.approx(0.5, abs=0.02)


def test_scenarios_without_open_world_keep_their_partition(fast_cfg) -> None:  # type: ignore[no-untyped-def]
    from fedsim.data.federation import build_federation

    cfg = fast_cfg()
    fed = build_federation(cfg.scenario, cfg.seed)
    assert fed.labeled is None and fed.client(0).labeled is None
