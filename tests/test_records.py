"""fedsim.records' fast constructors build exactly what Flower's constructors build, and
``load_state`` loads exactly what ``load_state_dict`` loads (and refuses what it refuses)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict
from torch import nn

from fedsim.records import (
    arrays_from_numpy,
    load_state,
    metric_record,
    numpy_from_arrays,
    record_dict,
    to_array,
)

ARRAYS = [
    np.arange(12, dtype=np.float32).reshape(3, 4),
    np.array(7, dtype=np.int64),
    np.zeros((0, 2)),
]


def _fields(obj: object) -> dict[str, object]:
    return {k: v for k, v in vars(obj).items() if not callable(v) and k != "_data"}


@pytest.mark.parametrize("a", ARRAYS, ids=["matrix", "scalar", "empty"])
def test_to_array_is_flowers_array(a: np.ndarray) -> None:
    ours, flowers = to_array(a), Array(a)
    assert vars(ours) == vars(flowers)  # dtype, shape, stype, bytes and the dirty flag
    assert ours.object_id == flowers.object_id


def test_array_record_is_flowers_record() -> None:
    arrays = {f"a{i}": a for i, a in enumerate(ARRAYS)}
    ours = arrays_from_numpy(arrays)
    flowers = ArrayRecord({k: Array(v) for k, v in arrays.items()})
    assert list(ours.keys()) == list(flowers.keys())
    assert all(vars(ours[k]) == vars(flowers[k]) for k in arrays)
    assert ours.is_dirty and flowers.is_dirty
    assert ours.object_id == flowers.object_id


def test_record_dict_is_flowers_record_dict() -> None:
    content = {
        "arrays": arrays_from_numpy({"w": ARRAYS[0]}),
        "config": ConfigRecord({"server-round": 3}),
        "metrics": MetricRecord({"loss": 0.5}),
    }
    ours, flowers = record_dict(content), RecordDict(content)
    assert list(ours.items()) == list(flowers.items())
    assert _fields(ours) == _fields(flowers)
    with pytest.raises(TypeError, match="ArrayRecord"):
        record_dict({"bad": {"w": 1}})  # type: ignore[dict-item]
    with pytest.raises(TypeError):
        record_dict({3: ConfigRecord()})  # type: ignore[dict-item]


def test_metric_record_is_flowers_metric_record() -> None:
    values = {"num-examples": 60, "loss": 0.25, "curve": [0.1, 0.2]}
    ours, flowers = metric_record(values), MetricRecord(values)
    assert list(ours.items()) == list(flowers.items())
    assert _fields(ours) == _fields(flowers)
    with pytest.raises(TypeError):
        metric_record({"flag": True})  # bools are not metrics, as in Flower
    with pytest.raises(TypeError):
        metric_record({"name": "x"})


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(8, 3))


def test_load_state_loads_what_load_state_dict_loads() -> None:
    src = _model()
    for p in src.parameters():
        p.data.normal_()
    src[1].num_batches_tracked.fill_(5)
    views = numpy_from_arrays(
        arrays_from_numpy({k: v.numpy() for k, v in src.state_dict().items()})
    )
    ours, ref = _model(), _model()
    load_state(ours, views)
    ref.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in views.items()})
    for (k, a), b in zip(ours.state_dict().items(), ref.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    assert ours[1].num_batches_tracked.item() == 5
    # the model owns its memory: the message's bytes are not aliased
    assert not np.shares_memory(ours[0].weight.detach().numpy(), views["0.weight"])


def test_load_state_refuses_what_load_state_dict_refuses() -> None:
    model = _model()
    state: dict[str, np.ndarray | torch.Tensor] = {
        k: v.numpy().copy() for k, v in model.state_dict().items()
    }
    with pytest.raises(RuntimeError, match="Missing key"):
        load_state(model, {k: v for k, v in state.items() if k != "3.bias"})
    with pytest.raises(RuntimeError, match="Unexpected key"):
        load_state(model, {**state, "extra": np.zeros(1)})
    with pytest.raises(RuntimeError, match="size mismatch"):
        load_state(model, {**state, "3.bias": np.zeros(4, np.float32)})
