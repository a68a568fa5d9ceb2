"""Image datasets: read the formats researchers have, build one in-memory federated dataset.

Two layers:

* **Loaders** read one split of one file format into raw arrays: ``x`` ``uint8`` of shape
  ``N×H×W`` (grey) or ``N×H×W×3`` (RGB, channels last) and ``y`` ``int64`` class indices.
  Formats: compressed NumPy archives (:func:`load_npz`), MNIST idx files (:func:`load_idx`),
  CIFAR-10/100 python batches (:func:`load_cifar`), class-per-folder images
  (:func:`load_image_folder`) and scikit-learn's embedded 8×8 digits
  (:func:`load_sklearn_digits`).  :func:`load_source` dispatches on a
  :class:`~fedsim.config.SourceConfig`.
* :func:`build_dataset` turns the sources of a :class:`~fedsim.config.DatasetConfig` into a
  :class:`FederatedDataset`: sub-sampled, split into train/test, converted to ``float32``
  ``N×C×H×W`` tensors with a common size and channel count, optionally standardised, and
  tagged with the index of the source (domain) each sample came from.  Partitioning over
  clients happens elsewhere; nothing here knows about clients.

Every problem a user can fix (a missing or corrupt file, inconsistent arrays, a bad value)
is raised as a one-line :class:`~fedsim.errors.DataError` or
:class:`~fedsim.errors.ConfigError` that names the key or the file.  Randomness comes from
``np.random.default_rng`` streams derived from ``(seed, source index, purpose)``; nothing is
seeded globally.
"""

from __future__ import annotations

import gzip
import math
import os
import pickle
import struct
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from fedsim.config import DatasetConfig, SourceConfig
from fedsim.errors import ConfigError, DataError

__all__ = [
    "FORMATS",
    "IMAGE_SUFFIXES",
    "FederatedDataset",
    "RawSource",
    "build_dataset",
    "default_data_root",
    "image_folder_classes",
    "load_cifar",
    "load_idx",
    "load_image_folder",
    "load_npz",
    "load_sklearn_digits",
    "load_source",
    "validate_dataset",
]

FORMATS = ("sklearn_digits", "npz", "idx", "cifar", "image_folder")
"""Allowed values of ``SourceConfig.format``."""

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
"""File suffixes (case-insensitive) that :func:`load_image_folder` reads."""

_GREY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"})
_LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601, the weights PIL uses for RGB -> "L"
_CHUNK_FLOATS = 1 << 23  # ~32 MiB of float32 per conversion chunk
_STREAM_CARVE = 1  # rng purpose ids, so each purpose gets its own stream
_STREAM_SUBSAMPLE = 2


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


@dataclass(eq=False)
class FederatedDataset:
    """All samples of all sources, in memory, ready for partitioning over clients.

    Attributes
    ----------
    train_x, test_x
        ``float32`` tensors ``N×C×H×W``; pixel values in ``[0, 1]``, standardised per
        channel with ``mean``/``std`` when ``normalized`` is true.
    train_y, test_y
        ``int64`` class indices.
    train_domain, test_domain
        ``int64`` index into ``domains`` of the source each sample came from.
    domains
        Source names, in the order of ``dataset.sources``.
    num_classes
        Largest label over every source and split, plus one.
    input_shape
        ``(C, H, W)`` of one sample.
    mean, std
        ``float32`` tensors of shape ``(C,)``: the standardisation that was applied, so that
        ``x * std + mean`` is always the ``[0, 1]`` pixel image.  With ``dataset.normalize``
        these are the per-channel statistics of the training images; without, they are
        ``0`` and ``1``.
    normalized
        Whether ``train_x``/``test_x`` were standardised (``dataset.normalize``).
    """

    train_x: torch.Tensor
    train_y: torch.Tensor
    train_domain: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    test_domain: torch.Tensor
    domains: list[str]
    num_classes: int
    input_shape: tuple[int, int, int]
    mean: torch.Tensor
    std: torch.Tensor
    normalized: bool = True

    def normalize(self, x01: torch.Tensor) -> torch.Tensor:
        """Map ``[0, 1]`` images ``N×C×H×W`` to the space of ``train_x`` (no-op if unnormalised)."""
        return (x01 - self.mean.view(1, -1, 1, 1)) / self.std.view(1, -1, 1, 1)

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`normalize`: back to pixel values on the ``[0, 1]`` scale."""
        return x * self.std.view(1, -1, 1, 1) + self.mean.view(1, -1, 1, 1)


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
    return Path(__file__).resolve().parent.parent.parent / "shared" / "data"


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
    from sklearn.datasets import load_digits  # imported lazily: sklearn is slow to import

    digits = load_digits()
    x = np.rint(np.asarray(digits.images, dtype=np.float64) * (255.0 / 16.0)).astype(np.uint8)
    return x, np.asarray(digits.target, dtype=np.int64)


def _resolve(path: str, data_root: Path) -> Path:
    p = Path(path).expanduser()
    return (p if p.is_absolute() else data_root / p).absolute()


def load_source(
    src: SourceConfig, data_root: Path, *, key: str | None = None, image_size: int = 0
) -> RawSource:
    """Load the train (and optional test) split of one source.

    Parameters
    ----------
    src
        The source: format, file paths (relative ones resolve against ``data_root``).
    data_root
        Base directory of relative paths.
    key
        Config path of the source, used as the prefix of error messages
        (``dataset.sources[i]``); defaults to the source's name.
    image_size
        ``image_folder`` only: if > 0, images are resized to this size while decoding, so
        folders of mixed sizes can be read.

    Returns
    -------
    RawSource
        ``test_x``/``test_y`` are ``None`` when ``src.test`` is empty (also for ``cifar``: point
        ``test`` at the same directory to use its test batch).

    Raises
    ------
    DataError
        One line, ``<key>.<field>: <problem>``, for an unknown format, a missing path or an
        unreadable or inconsistent file.
    """
    key = key if key is not None else src.name
    data_root = Path(data_root)
    if src.format not in FORMATS:
        raise DataError(f"{key}.format: unknown {src.format!r} (allowed: {', '.join(FORMATS)})")
    if src.format == "sklearn_digits":
        x, y = load_sklearn_digits()
        return RawSource(src.name, x, y)

    def _split(field: str, labels_field: str) -> tuple[np.ndarray, np.ndarray]:
        where = f"{key}.{field}"
        value = getattr(src, field)
        if not value:
            raise DataError(f"{where}: required for format {src.format!r}")
        path = _resolve(value, data_root)
        try:
            if src.format == "npz":
                return load_npz(path)
            if src.format == "cifar":
                return load_cifar(path, "train" if field == "train" else "test")
            if src.format == "image_folder":
                return load_image_folder(path, size=image_size or None)
            labels_value = getattr(src, labels_field)
            if not labels_value:
                raise DataError(f"{key}.{labels_field}: required for format 'idx'")
            labels_path = _resolve(labels_value, data_root)
            _require_file(path)
            if not labels_path.exists():
                raise DataError(f"{key}.{labels_field}: file not found: {labels_path}")
            return load_idx(path, labels_path)
        except DataError as exc:
            if str(exc).startswith(f"{key}."):
                raise
            raise DataError(f"{where}: {exc}") from exc

    train_x, train_y = _split("train", "train_labels")
    if not src.test:
        return RawSource(src.name, train_x, train_y)
    if src.format == "image_folder":
        test_dir = _resolve(src.test, data_root)
        if test_dir.is_dir():  # else _split reports the missing directory
            train_classes = image_folder_classes(_resolve(src.train, data_root))
            test_classes = image_folder_classes(test_dir)
            if train_classes != test_classes:
                raise DataError(
                    f"{key}.test: class folders {test_classes} differ from those of "
                    f"{key}.train {train_classes}, so labels would not match"
                )
    test_x, test_y = _split("test", "test_labels")
    return RawSource(src.name, train_x, train_y, test_x, test_y)


# --------------------------------------------------------------------------- validation


def validate_dataset(cfg: DatasetConfig) -> None:
    """Check the values of a dataset config without touching any file.

    Raises
    ------
    ConfigError
        The message starts with the key path, e.g.
        ``dataset.test_fraction: must be in [0, 1), got 1.5``.
    """
    if not cfg.sources:
        raise ConfigError("dataset.sources: must list at least one source")
    if not 0.0 <= cfg.test_fraction < 1.0:
        raise ConfigError(f"dataset.test_fraction: must be in [0, 1), got {cfg.test_fraction}")
    if cfg.image_size < 0:
        raise ConfigError(
            f"dataset.image_size: must be >= 0 (0 = native size), got {cfg.image_size}"
        )
    if cfg.channels not in (0, 1, 3):
        raise ConfigError(
            f"dataset.channels: must be 0 (native), 1 (grey) or 3 (RGB), got {cfg.channels}"
        )
    names: set[str] = set()
    for i, src in enumerate(cfg.sources):
        key = f"dataset.sources[{i}]"
        if not src.name:
            raise ConfigError(f"{key}.name: must not be empty")
        if src.name in names:
            raise ConfigError(f"{key}.name: duplicate {src.name!r} (source names must be unique)")
        names.add(src.name)
        if src.format not in FORMATS:
            raise ConfigError(
                f"{key}.format: unknown {src.format!r} (allowed: {', '.join(FORMATS)})"
            )
        if not 0.0 < src.fraction <= 1.0:
            raise ConfigError(f"{key}.fraction: must be in (0, 1], got {src.fraction}")
        if src.max_samples < 0:
            raise ConfigError(
                f"{key}.max_samples: must be >= 0 (0 = no cap), got {src.max_samples}"
            )
        if src.format == "sklearn_digits":
            for field in ("train", "test", "train_labels", "test_labels"):
                if getattr(src, field):
                    raise ConfigError(
                        f"{key}.{field}: format 'sklearn_digits' is embedded and takes no files"
                    )
            continue
        if not src.train:
            raise ConfigError(f"{key}.train: required for format {src.format!r}")
        if src.format == "idx":
            if not src.train_labels:
                raise ConfigError(f"{key}.train_labels: required for format 'idx'")
            if src.test and not src.test_labels:
                raise ConfigError(f"{key}.test_labels: required for format 'idx' with a test file")
            if src.test_labels and not src.test:
                raise ConfigError(f"{key}.test: required when test_labels is set")
        else:
            for field in ("train_labels", "test_labels"):
                if getattr(src, field):
                    raise ConfigError(f"{key}.{field}: only used by format 'idx'")


# --------------------------------------------------------------------------- building


def _rng(seed: int, source: int, purpose: int) -> np.random.Generator:
    """Independent stream for one (seed, source, purpose); negative seeds are folded."""
    return np.random.default_rng([purpose, source, seed % (1 << 64)])


def _stratified_holdout(
    y: np.ndarray, fraction: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Split indices into (kept, held out) with ``round(fraction * n_c)`` held out per class."""
    held: list[np.ndarray] = []
    for c in np.unique(y):
        members = np.flatnonzero(y == c)
        n_held = round(fraction * len(members))
        held.append(rng.permutation(members)[:n_held])
    mask = np.zeros(len(y), dtype=bool)
    if held:
        mask[np.concatenate(held)] = True
    return np.flatnonzero(~mask), np.flatnonzero(mask)


def _subsample(n: int, fraction: float, max_samples: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted positions of ``max(1, round(fraction * n))`` samples, capped at ``max_samples``."""
    keep = max(1, round(fraction * n)) if n else 0
    if max_samples > 0:
        keep = min(keep, max_samples)
    if keep >= n:
        return np.arange(n)
    return np.sort(rng.choice(n, size=keep, replace=False))


@dataclass(eq=False)
class _Part:
    """Selected samples of one split of one source, still raw."""

    domain: int
    x: np.ndarray
    y: np.ndarray
    index: np.ndarray  # positions into x/y that are used


def _native_channels(x: np.ndarray) -> int:
    return 1 if x.ndim == 3 else 3


def _convert_into(
    out: torch.Tensor, x: np.ndarray, index: np.ndarray, size: tuple[int, int]
) -> None:
    """Write ``x[index]`` as float ``[0, 1]`` ``N×C×H×W`` into ``out``, chunk by chunk.

    Handles channels (RGB -> luminance, grey -> replicated) and bilinear antialiased
    resizing, so no full-size intermediate copies are made.
    """
    channels = out.shape[1]
    per_image = max(1, x.shape[1] * x.shape[2] * 3, size[0] * size[1] * channels)
    step = max(1, _CHUNK_FLOATS // per_image)
    luma = torch.tensor(_LUMA, dtype=torch.float32).view(1, 3, 1, 1)
    for start in range(0, len(index), step):
        rows = index[start : start + step]
        chunk = torch.from_numpy(x[rows]).to(torch.float32).div_(255.0)
        chunk = chunk.unsqueeze(1) if chunk.ndim == 3 else chunk.permute(0, 3, 1, 2)
        if channels == 1 and chunk.shape[1] == 3:
            chunk = (chunk * luma).sum(dim=1, keepdim=True)
        if tuple(chunk.shape[-2:]) != size:
            chunk = F.interpolate(
                chunk, size=size, mode="bilinear", antialias=True, align_corners=False
            ).clamp_(0.0, 1.0)
        out[start : start + len(rows)].copy_(chunk)  # broadcasts 1 -> 3 channels


def _stack(parts: Sequence[_Part], shape: tuple[int, int, int]) -> tuple[torch.Tensor, ...]:
    total = sum(len(p.index) for p in parts)
    xs = torch.empty((total, *shape), dtype=torch.float32)
    ys = torch.empty(total, dtype=torch.int64)
    domains = torch.empty(total, dtype=torch.int64)
    offset = 0
    for part in parts:
        n = len(part.index)
        _convert_into(xs[offset : offset + n], part.x, part.index, (shape[1], shape[2]))
        ys[offset : offset + n] = torch.from_numpy(part.y[part.index])
        domains[offset : offset + n] = part.domain
        offset += n
    return xs, ys, domains


def _channel_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and (population) std of ``N×C×H×W``, accumulated in float64."""
    channels = x.shape[1]
    total = torch.zeros(channels, dtype=torch.float64)
    total_sq = torch.zeros(channels, dtype=torch.float64)
    step = max(1, _CHUNK_FLOATS // max(1, x[0].numel()))
    for start in range(0, len(x), step):
        chunk = x[start : start + step]
        total += chunk.sum(dim=(0, 2, 3), dtype=torch.float64)
        total_sq += chunk.square().sum(dim=(0, 2, 3), dtype=torch.float64)
    count = max(1, len(x) * x.shape[2] * x.shape[3])
    mean = total / count
    std = (total_sq / count - mean.square()).clamp_min(0.0).sqrt()
    std = torch.where(std > 1e-12, std, torch.ones_like(std))  # constant channel: leave it
    return mean.to(torch.float32), std.to(torch.float32)


def build_dataset(cfg: DatasetConfig, seed: int) -> FederatedDataset:
    """Load every source and build one in-memory dataset of float tensors.

    Per source, in this order: sources without a test file give up a stratified
    ``test_fraction`` of their training data as test set (``round(test_fraction * n_c)`` per
    class); then the remaining training data is sub-sampled to ``round(fraction * n)``
    samples, at most ``max_samples``.  The test set therefore does not change when
    ``fraction``/``max_samples`` vary, so accuracies stay comparable.  Both draws are
    deterministic given ``seed`` and the source's position in ``dataset.sources``.

    Images are scaled to ``[0, 1]``, brought to ``dataset.channels`` (RGB -> BT.601
    luminance, grey -> replicated) and ``dataset.image_size`` (bilinear, antialiased), then
    standardised per channel with the training mean/std (population std, over every source
    together) if ``dataset.normalize``.

    Parameters
    ----------
    cfg
        The dataset config; validated here with :func:`validate_dataset`.
    seed
        Run seed.

    Returns
    -------
    FederatedDataset

    Raises
    ------
    ConfigError
        An invalid config value.
    DataError
        A file problem, or sources of different sizes/channel counts while
        ``dataset.image_size``/``dataset.channels`` are 0.
    """
    validate_dataset(cfg)
    data_root = Path(cfg.data_root).expanduser() if cfg.data_root else default_data_root()
    train_parts: list[_Part] = []
    test_parts: list[_Part] = []
    for i, src in enumerate(cfg.sources):
        raw = load_source(src, data_root, key=f"dataset.sources[{i}]", image_size=cfg.image_size)
        if raw.test_x is not None and raw.test_y is not None:
            train_index = np.arange(len(raw.train_y))
            test_parts.append(_Part(i, raw.test_x, raw.test_y, np.arange(len(raw.test_y))))
        else:
            train_index, held = _stratified_holdout(
                raw.train_y, cfg.test_fraction, _rng(seed, i, _STREAM_CARVE)
            )
            test_parts.append(_Part(i, raw.train_x, raw.train_y, held))
        if len(train_index) == 0:
            raise DataError(f"dataset.sources[{i}]: no training samples left after the test split")
        picked = _subsample(
            len(train_index), src.fraction, src.max_samples, _rng(seed, i, _STREAM_SUBSAMPLE)
        )
        train_parts.append(_Part(i, raw.train_x, raw.train_y, train_index[picked]))

    names = [src.name for src in cfg.sources]
    all_parts = train_parts + test_parts
    channels = cfg.channels
    if channels == 0:
        native = {names[p.domain]: _native_channels(p.x) for p in all_parts}
        if len(set(native.values())) > 1:
            listing = ", ".join(f"{n}: {c}" for n, c in native.items())
            raise DataError(
                f"dataset.channels: sources have different channel counts ({listing}); "
                "set dataset.channels to 1 (grey) or 3 (RGB)"
            )
        channels = next(iter(native.values()))
    if cfg.image_size > 0:
        size = (cfg.image_size, cfg.image_size)
    else:
        sizes = {
            f"{names[p.domain]} {kind}": (int(p.x.shape[1]), int(p.x.shape[2]))
            for kind, parts in (("train", train_parts), ("test", test_parts))
            for p in parts
            if len(p.index)
        }
        if len(set(sizes.values())) > 1:
            listing = ", ".join(f"{n} {h}x{w}" for n, (h, w) in sizes.items())
            raise DataError(
                f"dataset.image_size: sources have different image sizes ({listing}); "
                "set dataset.image_size to resize them all to S x S"
            )
        size = next(iter(sizes.values()))
    shape = (channels, size[0], size[1])

    train_x, train_y, train_domain = _stack(train_parts, shape)
    test_x, test_y, test_domain = _stack(test_parts, shape)
    if cfg.normalize:
        mean, std = _channel_stats(train_x)
        for tensor in (train_x, test_x):  # in place: no second copy of the data
            tensor.sub_(mean.view(1, -1, 1, 1)).div_(std.view(1, -1, 1, 1))
    else:  # identity, so that code un-normalising with mean/std needs no special case
        mean, std = torch.zeros(channels), torch.ones(channels)
    max_label = max(int(p.y.max()) for p in all_parts)
    return FederatedDataset(
        train_x=train_x,
        train_y=train_y,
        train_domain=train_domain,
        test_x=test_x,
        test_y=test_y,
        test_domain=test_domain,
        domains=names,
        num_classes=max_label + 1,
        input_shape=shape,
        mean=mean,
        std=std,
        normalized=cfg.normalize,
    )
