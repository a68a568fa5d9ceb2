"""Helpers around Flower records: torch <-> ArrayRecord and byte accounting.

Bytes on the wire are counted in one place, :func:`record_nbytes`, from the serialized
arrays a message really carries (``Array.data`` is the ``np.save`` serialisation Flower
puts on the wire), so every runtime and channel reports the same numbers.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Mapping

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, Message, RecordDict


def arrays_from_state(
    state: Mapping[str, torch.Tensor], keys: Iterable[str] | None = None
) -> ArrayRecord:
    """Serialise (a subset of) a state dict into an ArrayRecord, preserving key order."""
    wanted = None if keys is None else set(keys)
    out: OrderedDict[str, Array] = OrderedDict()
    for name, tensor in state.items():
        if wanted is not None and name not in wanted:
            continue
        out[name] = Array(tensor.detach().to("cpu", copy=False).contiguous().numpy())
    return ArrayRecord(out)


def state_from_arrays(record: ArrayRecord) -> dict[str, torch.Tensor]:
    """Deserialise an ArrayRecord into CPU tensors (one copy, no pickle)."""
    return {
        name: torch.from_numpy(np.array(arr.numpy(), copy=False)) for name, arr in record.items()
    }


def numpy_from_arrays(record: ArrayRecord) -> dict[str, np.ndarray]:
    """Deserialise an ArrayRecord into NumPy arrays."""
    return {name: arr.numpy() for name, arr in record.items()}


def arrays_from_numpy(arrays: Mapping[str, np.ndarray]) -> ArrayRecord:
    """Serialise a mapping of NumPy arrays into an ArrayRecord (key order kept)."""
    return ArrayRecord(OrderedDict((k, Array(np.ascontiguousarray(v))) for k, v in arrays.items()))


def record_nbytes(content: RecordDict) -> int:
    """Bytes of serialized array payload in a message's content (what goes on the wire)."""
    total = 0
    for record in content.array_records.values():
        for arr in record.values():
            total += len(arr.data)
    return total


def message_nbytes(messages: Iterable[Message]) -> int:
    """Total array payload of the messages that carry content."""
    return sum(record_nbytes(m.content) for m in messages if m.has_content())
