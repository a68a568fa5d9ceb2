"""File-format readers: one split of one source into raw arrays.

``x`` is ``uint8`` of shape ``N×H×W`` (grey) or ``N×H×W×3`` (RGB, channels last) and ``y``
``int64`` class indices.  Formats here: compressed NumPy archives (:func:`load_npz`), MNIST
idx files (:func:`load_idx`) and scikit-learn's embedded 8×8 digits
(:func:`load_sklearn_digits`), plus the checks every reader shares (:func:`_check_xy`, the
file and folder tests).  CIFAR-10/100 python batches are in :mod:`fedsim.data.cifar_batches`
and class-per-folder images in :mod:`fedsim.data.image_folder`.
:func:`fedsim.data.sources.load_source` dispatches on a :class:`~fedsim.config.SourceConfig`;
:mod:`fedsim.data.datasets` builds datasets from them.

A missing or corrupt file is raised as a one-line :class:`~fedsim.errors.DataError`
that names the key or the file.
"""

from __future__ import annotations

import gzip
import math
import os
import struct
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedsim.errors import DataError

FORMATS = ("sklearn_digits", "npz", "idx", "cifar", "image_folder", "hf")
"""Allowed values of ``SourceConfig.format`` (``hf``: :mod:`fedsim.data.hf_source`)."""


# --------------------------------------------------------------------------- results


@dataclass(eq=False)
class RawSource:
    """One source as loaded from disk: raw ``uint8`` images and ``int64`` labels.

    ``test_x``/``test_y`` are ``None`` when the source has no test file; :func:`build_dataset`
    then carves a stratified test split out of the training data.
    """

    name: str
    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray | None = None
    test_y: np.ndarray | None = None


# --------------------------------------------------------------------------- helpers


def default_data_root() -> Path:
    """Directory that relative source paths resolve against when ``dataset.data_root`` is "".

    Returns
    -------
    Path
        ``$FEDSIM_DATA`` if set and non-empty, else ``<repo root>/../shared/data`` where the
        repo root is the parent of the ``fedsim`` package directory.
    """
    env = os.environ.get("FEDSIM_DATA", "")
    if env:
        return Path(env).expanduser()
    return Path(__file__).resolve().parents[3] / "shared" / "data"  # fedsim/data/loaders.py


def _one_line(exc: BaseException) -> str:
    """An exception's text on one line (user errors are printed as a single line)."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _require_file(path: Path) -> None:
    if not path.exists():
        # Say what is there: a misspelled domain (pacs/paintings_*.npz) shows the real ones.
        there = sorted(p.name for p in path.parent.glob(f"*{path.suffix}")) if path.suffix else []
        shown = ", ".join(there[:12]) + (", ..." if len(there) > 12 else "")
        hint = f" (files there: {shown})" if there else ""
        raise DataError(f"file not found: {path}{hint}")
    if not path.is_file():
        raise DataError(f"{path}: is a directory, expected a file")


def _require_dir(path: Path) -> None:
    if not path.exists():
        raise DataError(f"directory not found: {path}")
    if not path.is_dir():
        raise DataError(f"{path}: is a file, expected a directory")


def _check_xy(x: Any, y: Any, where: str) -> tuple[np.ndarray, np.ndarray]:
    """Validate raw images/labels and return them as ``uint8`` / ``int64`` arrays.

    ``where`` names the file (and keys) in the error messages.
    """
    if not isinstance(x, np.ndarray) or not isinstance(y, np.ndarray):
        raise DataError(f"{where}: x and y must be arrays")
    if x.dtype != np.uint8:
        raise DataError(f"{where}: x must be uint8 pixel values 0..255, got dtype {x.dtype}")
    if x.ndim == 4 and x.shape[-1] == 1:
        x = x[..., 0]
    if not (x.ndim == 3 or (x.ndim == 4 and x.shape[-1] == 3)):
        raise DataError(f"{where}: x must have shape N×H×W or N×H×W×3, got {tuple(x.shape)}")
    if y.ndim != 1:
        raise DataError(f"{where}: y must be one-dimensional, got shape {tuple(y.shape)}")
    if y.dtype.kind not in "iu":
        raise DataError(f"{where}: y must hold integer class indices, got dtype {y.dtype}")
    if len(x) != len(y):
        raise DataError(f"{where}: x has {len(x)} samples but y has {len(y)}")
    if len(x) == 0:
        raise DataError(f"{where}: holds no samples")
    if x.shape[1] == 0 or x.shape[2] == 0:
        raise DataError(f"{where}: images have an empty size {x.shape[1]}x{x.shape[2]}")
    if y.dtype.kind == "i" and int(y.min()) < 0:
        raise DataError(f"{where}: labels must be >= 0, found {int(y.min())}")
    return x, y.astype(np.int64, copy=False)


# --------------------------------------------------------------------------- loaders


def load_npz(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Load a NumPy archive with arrays ``x`` (``uint8`` images) and ``y`` (labels).

    Parameters
    ----------
    path
        An ``.npz`` file, compressed or not.  Object arrays are refused
        (``allow_pickle=False``).

    Returns
    -------
    tuple of numpy.ndarray
        ``x`` ``uint8`` ``N×H×W`` or ``N×H×W×3`` and ``y`` ``int64`` ``N``.

    Raises
    ------
    DataError
        The file is missing, not an npz archive, lacks ``x`` or ``y``, or holds invalid arrays.
    """
    path = Path(path).absolute()
    _require_file(path)
    try:
        loaded = np.load(path, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise DataError(f"{path}: not an npz archive (a single .npy array?)")
        with loaded as archive:
            missing = [key for key in ("x", "y") if key not in archive.files]
            if missing:
                found = ", ".join(archive.files) or "nothing"
                raise DataError(f"{path}: missing array {missing[0]!r} (found: {found})")
            x, y = archive["x"], archive["y"]
    except DataError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        raise DataError(f"{path}: not a readable npz archive ({_one_line(exc)})") from exc
    return _check_xy(x, y, str(path))


def _read_maybe_gzip(path: Path) -> bytes:
    """File contents, gunzipped if the file starts with the gzip magic (whatever its name)."""
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{path}: cannot be read ({_one_line(exc)})") from exc
    return raw


def _read_idx(path: Path, ndim: int) -> np.ndarray:
    """Parse an idx file of unsigned bytes with ``ndim`` dimensions."""
    _require_file(path)
    raw = _read_maybe_gzip(path)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise DataError(f"{path}: not an idx file (bad magic number)")
    type_code, file_ndim = raw[2], raw[3]
    if type_code != 0x08:
        raise DataError(
            f"{path}: idx element type 0x{type_code:02x} is not supported (only 0x08, uint8)"
        )
    if file_ndim != ndim:
        kind = "images (idx3)" if ndim == 3 else "labels (idx1)"
        raise DataError(f"{path}: expected {kind} with {ndim} dimensions, got {file_ndim}")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: truncated idx header")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    expected = header + math.prod(dims)
    if len(raw) != expected:
        raise DataError(
            f"{path}: header says shape {dims} ({expected} bytes) but the file has {len(raw)} bytes"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def load_idx(images_path: str | Path, labels_path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Load MNIST-style idx files (``idx3-ubyte`` images, ``idx1-ubyte`` labels).

    Parameters
    ----------
    images_path, labels_path
        Plain or gzip-compressed idx files (detected from the content, not the name).

    Returns
    -------
    tuple of numpy.ndarray
        ``x`` ``uint8`` ``N×H×W`` and ``y`` ``int64`` ``N``.

    Raises
    ------
    DataError
        A file is missing, not an idx file of unsigned bytes, truncated, or the counts differ.
    """
    images_path, labels_path = Path(images_path).absolute(), Path(labels_path).absolute()
    x = _read_idx(images_path, 3)
    y = _read_idx(labels_path, 1)
    if len(x) != len(y):
        raise DataError(
            f"{images_path}: holds {len(x)} images but {labels_path} holds {len(y)} labels"
        )
    return _check_xy(x, y, str(images_path))


def load_sklearn_digits() -> tuple[np.ndarray, np.ndarray]:
    """Scikit-learn's bundled 8×8 digits (1,797 images, offline), scaled to ``uint8``.

    Values 0..16 become ``round(v * 255 / 16)``, so 16 maps to 255.

    Returns
    -------
    tuple of numpy.ndarray
        ``x`` ``uint8`` ``1797×8×8`` and ``y`` ``int64`` ``1797``.
    """
    raw = _bundled_digits()
    if raw is None:  # a scikit-learn that stores them differently: ask it
        from sklearn.datasets import load_digits  # slow: imports scikit-learn

        d = load_digits()
        raw = np.column_stack([np.asarray(d.data, dtype=np.float64), d.target])
    x = np.rint(raw[:, :64].reshape(-1, 8, 8) * (255.0 / 16.0)).astype(np.uint8)
    return x, raw[:, 64].astype(np.int64)


def _bundled_digits() -> np.ndarray | None:
    """The ``1797 x 65`` table ``load_digits`` reads (64 pixels, then the label), read
    straight from scikit-learn's package data: importing scikit-learn costs about half a
    second, reading its file 25 ms.  ``None`` if the file is not where it is expected."""
    import importlib.util

    spec = importlib.util.find_spec("sklearn")  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        return None
    pkg = Path(next(iter(spec.submodule_search_locations)))
    path = pkg / "datasets" / "data" / "digits.csv.gz"
    if not path.is_file():
        return None
    table = np.loadtxt(path, delimiter=",")
    return table if table.shape == (1797, 65) else None
