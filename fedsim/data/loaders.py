"""File-format readers: one split of one source into raw arrays.

``x`` is ``uint8`` of shape ``N×H×W`` (grey) or ``N×H×W×3`` (RGB, channels last) and ``y``
``int64`` class indices.  Formats: compressed NumPy archives (:func:`load_npz`), MNIST idx
files (:func:`load_idx`), CIFAR-10/100 python batches (:func:`load_cifar`),
class-per-folder images (:func:`load_image_folder`) and scikit-learn's embedded 8×8
digits (:func:`load_sklearn_digits`).  :func:`fedsim.data.datasets.load_source` dispatches on a
:class:`~fedsim.config.SourceConfig`; :mod:`fedsim.data.datasets` builds datasets from them (and
re-exports these names).

A missing or corrupt file is raised as a one-line :class:`~fedsim.errors.DataError`
that names the key or the file.
"""

from __future__ import annotations

import gzip
import math
import os
import pickle
import struct
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from fedsim.errors import DataError

FORMATS = ("sklearn_digits", "npz", "idx", "cifar", "image_folder", "hf")
"""Allowed values of ``SourceConfig.format`` (``hf``: :mod:`fedsim.data.hf_source`)."""

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
"""File suffixes (case-insensitive) that :func:`load_image_folder` reads."""

_GREY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"})


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


def image_folder_classes(root: str | Path) -> list[str]:
    """Class names of an image folder: its non-hidden sub-directories, sorted by name."""
    root = Path(root).absolute()
    _require_dir(root)
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def load_image_folder(root: str | Path, size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Load ``root/<class_name>/*.{png,jpg,jpeg,bmp}``; labels follow the sorted class names.

    Images are decoded with PIL to grey (``L``) if every image is grey, else to ``RGB``.
    Files with other suffixes and hidden folders are ignored; an empty class folder keeps
    its label.

    Parameters
    ----------
    root
        Folder with one sub-folder per class.
    size
        If given, every image is resized to ``size × size`` with Lanczos filtering (aspect
        ratio is not kept).  If ``None`` all images must have the same size.

    Returns
    -------
    tuple of numpy.ndarray
        ``x`` ``uint8`` ``N×H×W`` (grey) or ``N×H×W×3`` and ``y`` ``int64`` ``N``.

    Raises
    ------
    DataError
        The folder is missing or has no images, an image cannot be decoded, or sizes differ
        while ``size`` is ``None``.
    """
    root = Path(root).absolute()
    classes = image_folder_classes(root)
    files: list[Path] = []
    labels: list[int] = []
    for label, name in enumerate(classes):
        for path in sorted((root / name).iterdir()):
            if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
                files.append(path)
                labels.append(label)
    if not files:
        suffixes = ", ".join(IMAGE_SUFFIXES)
        raise DataError(f"{root}: no images found (expected root/<class_name>/*{{{suffixes}}})")

    def _open(path: Path) -> Image.Image:
        try:
            return Image.open(path)
        except (OSError, UnidentifiedImageError) as exc:
            raise DataError(f"{path}: cannot be read as an image ({_one_line(exc)})") from exc

    sizes: dict[tuple[int, int], Path] = {}
    grey = True
    for path in files:  # headers only: PIL decodes lazily
        with _open(path) as image:
            sizes.setdefault(image.size, path)
            grey = grey and image.mode in _GREY_MODES
    if size is None and len(sizes) > 1:
        (w1, h1), p1 = next(iter(sizes.items()))
        (w2, h2), p2 = list(sizes.items())[1]
        raise DataError(
            f"{root}: images differ in size ({w1}x{h1} in {p1}, {w2}x{h2} in {p2}); "
            "set dataset.image_size to resize them"
        )
    width, height = (size, size) if size is not None else next(iter(sizes))
    mode = "L" if grey else "RGB"
    x = np.empty((len(files), height, width) + (() if grey else (3,)), dtype=np.uint8)
    for i, path in enumerate(files):
        with _open(path) as image:
            try:
                converted = image.convert(mode)
                if converted.size != (width, height):
                    converted = converted.resize((width, height), Image.Resampling.LANCZOS)
                x[i] = np.asarray(converted)
            except (OSError, ValueError) as exc:
                raise DataError(f"{path}: cannot be decoded ({_one_line(exc)})") from exc
    return x, np.asarray(labels, dtype=np.int64)


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
