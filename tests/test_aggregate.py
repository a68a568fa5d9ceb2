"""Aggregation maths on hand-checkable numbers."""

from __future__ import annotations

import numpy as np
import pytest

from fedsim.algorithms.aggregate import is_finite_update, update_norm, weighted_average


def test_weighted_average_hand_numbers() -> None:
    # weights [1, 3], values [0, 4] -> (1*0 + 3*4) / 4 = 3.0 exactly
    out = weighted_average(
        [{"w": np.array([0.0], np.float32)}, {"w": np.array([4.0], np.float32)}], [1, 3]
    )
    assert out["w"].dtype == np.float32
    assert out["w"].tolist() == [3.0]


def test_weighted_average_several_keys_and_integer_buffers() -> None:
    a = {"w": np.array([[1.0, 2.0]]), "n": np.array(10, dtype=np.int64)}
    b = {"w": np.array([[3.0, 6.0]]), "n": np.array(13, dtype=np.int64)}
    out = weighted_average([a, b], [1, 1])
    assert out["w"].tolist() == [[2.0, 4.0]]
    assert out["n"].dtype == np.int64 and int(out["n"]) == 12  # 11.5 rounds to even


def test_equal_weights_is_plain_mean() -> None:
    rng = np.random.default_rng(0)
    ups = [{"w": rng.normal(size=5)} for _ in range(4)]
    out = weighted_average(ups, [7, 7, 7, 7])
    np.testing.assert_allclose(out["w"], np.mean([u["w"] for u in ups], axis=0), rtol=1e-12)


@pytest.mark.parametrize(
    ("updates", "weights", "match"),
    [
        ([], [], "at least one"),
        ([{"w": np.zeros(2)}], [0], "positive sum"),
        ([{"w": np.zeros(2)}, {"w": np.zeros(3)}], [1, 1], "shape mismatch"),
        ([{"w": np.zeros(2)}, {"v": np.zeros(2)}], [1, 1], "missing key"),
        ([{"w": np.zeros(2)}], [1, 2], "weights"),
    ],
)
def test_weighted_average_rejects_bad_input(updates, weights, match) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match=match):
        weighted_average(updates, weights)


def test_finite_and_norm_checks() -> None:
    assert is_finite_update({"w": np.ones(3), "n": np.array(3)})
    assert not is_finite_update({"w": np.array([1.0, np.nan])})
    assert not is_finite_update({"w": np.array([np.inf])})
    assert update_norm({"w": np.array([3.0, 4.0])}, {"w": np.zeros(2)}) == 5.0


def test_fast_array_codec_matches_flower() -> None:
    from flwr.app import Array

    from fedsim.records import from_array, to_array

    for a in [
        np.arange(12, dtype=np.float32).reshape(3, 4),
        np.array(7, dtype=np.int64),
        np.zeros((0, 2)),
    ]:
        ours, flowers = to_array(a), Array(a)
        assert ours.data == flowers.data  # byte-identical on the wire
        np.testing.assert_array_equal(from_array(flowers), a)
        np.testing.assert_array_equal(flowers.numpy(), from_array(ours))
    nan = update_norm({"w": np.array([1.0, np.nan], np.float32)}, {"w": np.zeros(2, np.float32)})
    assert not np.isfinite(nan)
