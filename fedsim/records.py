"""Helpers around Flower records: torch/NumPy <-> ArrayRecord and byte accounting.

Bytes on the wire are counted in one place, ``fedsim.algorithms.channels.wire_nbytes``, from the
arrays a message really carries, so every runtime and channel reports the same numbers.

:func:`to_array` / :func:`from_array` produce and read exactly the bytes
``flwr.app.Array(ndarray)`` / ``Array.numpy()`` do, with one copy instead of several
and without parsing the ``.npy`` header through ``ast`` for every array (measured: the
header parsing alone was a visible share of a round's overhead on small models).
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Mapping
from functools import lru_cache
from typing import Any

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict
from torch import nn

_NUMPY_STYPE = "numpy.ndarray"
_MAGIC = b"\x93NUMPY"


@lru_cache(maxsize=4096)
def _npy_header(descr: str, shape: tuple[int, ...]) -> bytes:
    """The exact ``.npy`` header ``np.save`` writes for a C-ordered array."""
    buf = io.BytesIO()
    header = {"descr": descr, "fortran_order": False, "shape": shape}
    np.lib.format.write_array_header_1_0(buf, header)
    return buf.getvalue()


def to_array(a: np.ndarray) -> Array:
    """A Flower ``Array`` holding exactly what ``Array(ndarray)`` would (``np.save`` bytes)."""
    if not a.flags["C_CONTIGUOUS"]:
        a = a.copy(order="C")  # (np.ascontiguousarray would turn a 0-d array into 1-d)
    if a.dtype.hasobject or not a.dtype.isnative:
        return Array(a)
    descr = np.lib.format.dtype_to_descr(a.dtype)
    if not isinstance(descr, str):  # structured dtypes: let Flower serialise them
        return Array(a)
    # one copy: join reads the array's buffer directly (header + raw C-order bytes)
    data = b"".join((_npy_header(descr, tuple(a.shape)), memoryview(a.reshape(-1).view(np.uint8))))
    return _array(str(a.dtype), tuple(a.shape), data)


def _array(dtype: str, shape: tuple[int, ...], data: bytes) -> Array:
    """``Array(dtype=dtype, shape=shape, stype="numpy.ndarray", data=data)`` for arguments
    known to be valid: the same fields and flags, without re-checking every argument
    (``tests/test_aggregate.py`` compares the two objects field by field)."""
    arr = Array.__new__(Array)
    arr.__dict__.update(dtype=dtype, shape=shape, stype=_NUMPY_STYPE, data=data, _is_dirty=True)
    return arr


def from_array(arr: Array) -> np.ndarray:
    """A read-only NumPy view of an ``Array``'s bytes (no copy).

    Falls back to Flower's ``Array.numpy()`` for anything but a plain C-ordered ``.npy``.
    """
    data = arr.data
    if arr.stype == _NUMPY_STYPE and data[:6] == _MAGIC and data[6] in (1, 2, 3):
        start = 10 if data[6] == 1 else 12
        hlen = int.from_bytes(data[8:start], "little")
        if b"'fortran_order': False" in data[start : start + hlen]:
            out = np.frombuffer(data, dtype=np.dtype(arr.dtype), offset=start + hlen)
            return out.reshape(tuple(arr.shape))
    return arr.numpy()


def arrays_from_state(
    state: Mapping[str, torch.Tensor], keys: Iterable[str] | None = None
) -> ArrayRecord:
    """Serialise (a subset of) a state dict into an ArrayRecord, preserving key order."""
    wanted = None if keys is None else set(keys)
    return _record(
        (name, to_array(tensor.detach().to("cpu").numpy()))
        for name, tensor in state.items()
        if wanted is None or name in wanted
    )


def state_from_arrays(record: ArrayRecord) -> dict[str, torch.Tensor]:
    """Deserialise an ArrayRecord into writable CPU tensors (one copy)."""
    return {name: torch.from_numpy(from_array(arr).copy()) for name, arr in record.items()}


def numpy_from_arrays(record: ArrayRecord) -> dict[str, np.ndarray]:
    """Read-only NumPy views of an ArrayRecord's arrays (no copy)."""
    return {name: from_array(arr) for name, arr in record.items()}


def arrays_from_numpy(arrays: Mapping[str, np.ndarray]) -> ArrayRecord:
    """Serialise a mapping of NumPy arrays into an ArrayRecord (key order kept)."""
    return _record((k, to_array(v)) for k, v in arrays.items())


RecordType = ArrayRecord | ConfigRecord | MetricRecord
_RECORD_TYPES = (ArrayRecord, ConfigRecord, MetricRecord)


def record_dict(records: Mapping[str, RecordType]) -> RecordDict:
    """``RecordDict(records)`` with the same key and value checks, done once per item
    (Flower's constructor checks every item through two callbacks and looks up the key
    it might overwrite, several times per message and per client in a round)."""
    out = RecordDict()
    data = out.__dict__["_data"]
    for key, value in records.items():
        if type(key) is str and isinstance(value, _RECORD_TYPES):
            data[key] = value
        else:
            out[key] = value  # Flower's own check raises its own TypeError
    return out


def metric_record(values: Mapping[str, Any]) -> MetricRecord:
    """``MetricRecord(values)``: plain int and float values are checked here once,
    anything else (lists, wrong types) goes through Flower's checks."""
    out = MetricRecord()
    data = out.__dict__["_data"]
    for key, value in values.items():
        if type(key) is str and type(value) in (int, float):
            data[key] = value
        else:
            out[key] = value
    return out


def _record(items: Iterable[tuple[str, Array]]) -> ArrayRecord:
    """An ArrayRecord holding these very Arrays, in order (``ArrayRecord(dict)`` rebuilds
    every Array, a validated copy of its fields, once more)."""
    record = ArrayRecord()
    data = record.__dict__["_data"]
    for name, arr in items:
        if type(name) is str and type(arr) is Array:
            data[name] = arr
        else:
            record[name] = arr  # Flower's own checks raise its own TypeError
    record.__dict__["_is_dirty"] = True  # as ArrayRecord.__setitem__ leaves it
    return record


# Flower's ``RecordDict.array_records`` (and ``config_records``, ``metric_records``) builds
# a type-checked view of every record on each access, tens of microseconds per message
# that a round pays about a dozen times per client; these read the records directly.


def array_records(content: RecordDict) -> dict[str, ArrayRecord]:
    """The array records of ``content`` by name (a plain dict: for reading)."""
    return {k: v for k, v in content.items() if isinstance(v, ArrayRecord)}


def config_records(content: RecordDict) -> dict[str, ConfigRecord]:
    """The config records of ``content`` by name (a plain dict: for reading)."""
    return {k: v for k, v in content.items() if isinstance(v, ConfigRecord)}


def metric_records(content: RecordDict) -> dict[str, MetricRecord]:
    """The metric records of ``content`` by name (a plain dict: for reading)."""
    return {k: v for k, v in content.items() if isinstance(v, MetricRecord)}


_NUMPY_DTYPES = {torch.float32, torch.float64, torch.float16, torch.int64, torch.int32, torch.uint8}


@torch.no_grad()
def load_state(model: nn.Module, state: Mapping[str, np.ndarray | torch.Tensor]) -> None:
    """``model.load_state_dict(state, strict=True)`` for arrays read straight from a
    message: each value is copied once into the model's own tensor (a NumPy view needs
    no intermediate tensor).  Anything ``load_state_dict`` would refuse (a missing or an
    unexpected key, a shape mismatch) goes through ``load_state_dict`` for its error."""
    target = model.state_dict()
    if target.keys() != state.keys() or any(
        tuple(state[k].shape) != tuple(t.shape) for k, t in target.items()
    ):
        model.load_state_dict(
            {
                k: torch.from_numpy(np.array(v)) if isinstance(v, np.ndarray) else v
                for k, v in state.items()
            },
            strict=True,
        )
        return
    for key, dst in target.items():
        src = state[key]
        if isinstance(src, np.ndarray):
            if dst.device.type == "cpu" and dst.dtype in _NUMPY_DTYPES and dst.is_contiguous():
                np.copyto(dst.numpy(), src, casting="unsafe")
                continue
            src = torch.from_numpy(np.array(src))
        dst.copy_(src)
