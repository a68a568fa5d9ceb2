"""Hugging Face datasets as scenario sources (``format: hf``).

``train:`` (and ``test:``) name either a dataset on the Hugging Face Hub (``ylecun/mnist``,
``uoft-cs/cifar10``), read with ``datasets.load_dataset``, or a local copy: a
``save_to_disk`` folder (a ``Dataset`` or a ``DatasetDict``), a ``.parquet`` file, or an
image folder (``root/<class>/*.png``, read by the ``imagefolder`` builder).  A split is
chosen with a ``:split`` suffix (``ylecun/mnist:test``); by default ``train:`` reads the
``train`` split and ``test:`` the ``test`` split.  Relative local paths resolve against
``dataset.data_root`` like every other source.

The image column is the one typed ``Image`` (else ``image`` or ``img``), the label column
``label`` (else the only ``ClassLabel``, else ``fine_label`` or ``labels``); images become
the same ``uint8`` arrays as fedsim's other loaders (:mod:`fedsim.data.loaders`): grey ``N×H×W``
or RGB ``N×H×W×3``.  ``datasets`` is an optional extra (``pip install -e '.[datasets]'``),
imported only by scenarios with such a source.  Without a network a Hub name fails at
once with one line (the Hub's host does not resolve) instead of retrying.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np

from fedsim.errors import DataError

INSTALL = "pip install -e '.[datasets]'"
IMAGE_NAMES = ("image", "img")
LABEL_NAMES = ("label", "fine_label", "labels")
_GREY = frozenset({"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"})


def split_ref(value: str, default_split: str) -> tuple[str, str]:
    """``name_or_path[:split]`` -> (name_or_path, split)."""
    ref, sep, split = value.rpartition(":")
    if sep and split and "/" not in split and ref:
        return ref, split
    return value, default_split


def _first_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return text[:300] if text else type(err).__name__


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """No progress bars and no retry warnings from datasets / huggingface_hub: a user
    error stays one line."""
    import datasets
    from huggingface_hub.utils import logging as hub_logging

    datasets.disable_progress_bars()
    before = (datasets.logging.get_verbosity(), hub_logging.get_verbosity())
    datasets.logging.set_verbosity_error()
    hub_logging.set_verbosity_error()
    try:
        yield
    finally:
        datasets.logging.set_verbosity(before[0])
        hub_logging.set_verbosity(before[1])


def _hub_reachable() -> str | None:
    """None if the Hub's host resolves (or offline mode is on); else why not."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return None  # datasets answers from its cache, or says it is offline
    host = urlparse(constants.ENDPOINT).hostname or ""
    try:
        socket.getaddrinfo(host, 443)
    except OSError as e:
        return f"the Hub ({host}) cannot be reached: {e.strerror or e}"
    return None


def _open(ref: str, split: str, data_root: Path, where: str) -> Any:
    """The ``datasets.Dataset`` of one split of a Hub name or a local copy."""
    import datasets

    path = Path(ref).expanduser()
    path = path if path.is_absolute() else data_root / path
    if path.is_dir() and (path / "dataset_dict.json").is_file():
        splits = datasets.load_from_disk(str(path))
        if split not in splits:
            raise DataError(f"{where}: no split {split!r} in {path} (splits: {', '.join(splits)})")
        return splits[split]
    if path.is_dir() and (path / "state.json").is_file():
        return datasets.load_from_disk(str(path))
    if path.is_file() and path.suffix == ".parquet":
        return datasets.Dataset.from_parquet(str(path))
    if path.is_dir():
        return datasets.load_dataset("imagefolder", data_dir=str(path), split=split)
    if ref.startswith(("/", ".", "~")) or ref.endswith(".parquet") or ref.count("/") > 1:
        raise DataError(f"{where}: not found: {path}")
    why = _hub_reachable()
    if why is not None:
        raise DataError(f"{where}: Hugging Face dataset {ref!r}: {why}")
    return datasets.load_dataset(ref, split=split)


def _column(features: dict[str, Any], typed: str, names: tuple[str, ...]) -> str | None:
    of_type = [k for k, f in features.items() if type(f).__name__ == typed]
    if typed == "ClassLabel" and "label" in of_type:
        return "label"
    if len(of_type) == 1:
        return of_type[0]
    return next((n for n in names if n in features), None)


def _pixels(image: Any, size: int) -> np.ndarray:
    if size and image.size != (size, size):
        from PIL import Image

        image = image.resize((size, size), Image.Resampling.BILINEAR)
    grey = image.mode in _GREY
    return np.asarray(image.convert("L" if grey else "RGB"), dtype=np.uint8)


def to_arrays(data: Any, where: str, size: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Images and labels of a ``datasets.Dataset`` as ``uint8`` / ``int64`` arrays."""
    features = dict(data.features)
    image_col = _column(features, "Image", IMAGE_NAMES)
    label_col = _column(features, "ClassLabel", LABEL_NAMES)
    if image_col is None or label_col is None:
        what = "an image" if image_col is None else "a label"
        raise DataError(f"{where}: found no {what} column (columns: {', '.join(features)})")
    plain = data.with_format(None)
    images = [_pixels(im, size) for im in plain[image_col]]
    shapes = {im.shape for im in images}
    if len(shapes) > 1:
        raise DataError(
            f"{where}: images of {len(shapes)} sizes or modes (e.g. {sorted(shapes)[:2]}); "
            "set dataset.image_size to resize them"
        )
    if not images:
        raise DataError(f"{where}: holds no samples")
    labels = np.asarray(list(plain[label_col]))
    if labels.dtype.kind not in "iu":  # e.g. class names: numbered in sorted order
        _, labels = np.unique(labels, return_inverse=True)
    return np.stack(images), labels.astype(np.int64)


def load_hf(
    value: str, data_root: Path, default_split: str, where: str, image_size: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """One split of a ``format: hf`` source as ``(x, y)`` arrays (see the module docstring)."""
    from fedsim.data.loaders import _check_xy

    try:
        import datasets  # noqa: F401 - fails here when the extra is not installed
    except ImportError:
        raise DataError(f"{where}: format 'hf' needs the datasets package ({INSTALL})") from None
    ref, split = split_ref(value, default_split)
    with _quiet():
        try:
            data = _open(ref, split, data_root, where)
        except DataError:
            raise
        except Exception as e:  # the library's many errors (no such dataset, split, file)
            raise DataError(
                f"{where}: cannot load {ref!r} split {split!r}: {_first_line(e)}"
            ) from None
        x, y = to_arrays(data, where, image_size)
    return _check_xy(x, y, where)
