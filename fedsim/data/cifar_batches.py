"""CIFAR-10/100 python batches: the pickled batch files, read into raw arrays.

Separate from :mod:`fedsim.data.loaders` because this format alone needs unpickling, done
with an allow-list of NumPy classes (:class:`_ArrayUnpickler`) so that a batch file cannot
run code.  The arrays follow the loaders' convention (``uint8`` ``N×32×32×3``, ``int64``
labels) and a bad file is a one-line :class:`~fedsim.errors.DataError`.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np

from fedsim.data.loaders import _check_xy, _one_line, _require_dir, _require_file
from fedsim.errors import DataError


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickler that only rebuilds NumPy arrays, so a batch file cannot run code."""

    _ALLOWED = frozenset(
        {
            ("numpy", "ndarray"),
            ("numpy", "dtype"),
            ("numpy.core.multiarray", "_reconstruct"),
            ("numpy._core.multiarray", "_reconstruct"),
            ("numpy.core.numeric", "_frombuffer"),
            ("numpy._core.numeric", "_frombuffer"),
            ("_codecs", "encode"),  # how protocol 2 stores bytes
        }
    )

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def _read_cifar_batch(path: Path, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    _require_file(path)
    try:
        with path.open("rb") as handle:
            batch = _ArrayUnpickler(handle, encoding="latin1").load()
    except Exception as exc:  # unpickling garbage raises an open set of exception types
        raise DataError(f"{path}: not a CIFAR python batch ({_one_line(exc)})") from exc
    if not isinstance(batch, dict):
        raise DataError(f"{path}: not a CIFAR python batch (expected a dict)")
    batch = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in batch.items()}
    for key in ("data", label_key):
        if key not in batch:
            found = ", ".join(sorted(map(str, batch))) or "nothing"
            raise DataError(f"{path}: missing key {key!r} (found: {found})")
    data = batch["data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2:
        raise DataError(f"{path}: 'data' must be a uint8 array N×3072")
    if data.shape[1] != 3 * 32 * 32:
        raise DataError(f"{path}: 'data' rows must hold 3072 values, got {data.shape[1]}")
    try:
        labels = np.asarray(batch[label_key])
    except (TypeError, ValueError) as exc:
        raise DataError(f"{path}: {label_key!r} is not a list of integers") from exc
    x = np.ascontiguousarray(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    return _check_xy(x, labels, f"{path} (keys 'data', {label_key!r})")


def load_cifar(directory: str | Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Load CIFAR-10 or CIFAR-100 from the python-version batch files.

    CIFAR-10 is recognised by ``data_batch_1`` or ``test_batch`` (labels under ``labels``;
    the train split concatenates every ``data_batch_<k>`` present, in order of ``k``),
    CIFAR-100 by ``train``/``test`` (labels under ``fine_labels``).  ``directory`` may also be
    the parent of the extracted ``cifar-10-batches-py`` or ``cifar-100-python`` folder.
    Batches are unpickled with an allow-list of NumPy classes only.

    Parameters
    ----------
    directory
        Folder holding the batch files.
    split
        ``"train"`` or ``"test"``.

    Returns
    -------
    tuple of numpy.ndarray
        ``x`` ``uint8`` ``N×32×32×3`` and ``y`` ``int64`` ``N``.

    Raises
    ------
    DataError
        The folder or a batch is missing, a batch cannot be unpickled or lacks a key.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    directory = Path(directory).absolute()
    _require_dir(directory)
    for sub in ("cifar-10-batches-py", "cifar-100-python"):
        if (directory / sub).is_dir():
            directory = directory / sub
            break
    if (directory / "data_batch_1").exists() or (directory / "test_batch").exists():
        label_key = "labels"
        if split == "test":
            files = [directory / "test_batch"]
        else:
            found = [p for p in directory.glob("data_batch_*") if p.name[11:].isdigit()]
            files = sorted(found, key=lambda p: int(p.name[11:])) or [directory / "data_batch_1"]
    elif (directory / "train").exists() or (directory / "test").exists():
        label_key = "fine_labels"
        files = [directory / split]
    else:
        raise DataError(
            f"{directory}: not a CIFAR batches directory (expected data_batch_1..5 and "
            "test_batch for CIFAR-10, or train and test for CIFAR-100)"
        )
    parts = [_read_cifar_batch(path, label_key) for path in files]
    if len(parts) == 1:
        return parts[0]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
