"""One source's files read by format: :func:`load_source` turns a ``SourceConfig`` into arrays.

Separate from :mod:`fedsim.data.datasets` because dispatching on ``SourceConfig.format``,
resolving paths against the data root and naming the config key in every error is about
*which file to read*, while building a dataset is about tensors; this module needs neither
torch nor the rest of the dataset config.  The readers themselves are in
:mod:`fedsim.data.loaders`, :mod:`fedsim.data.cifar_batches`, :mod:`fedsim.data.image_folder`
and :mod:`fedsim.data.hf_source`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fedsim.config import SourceConfig
from fedsim.data.cifar_batches import load_cifar
from fedsim.data.image_folder import image_folder_classes, load_image_folder
from fedsim.data.loaders import (
    FORMATS,
    RawSource,
    _require_file,
    load_idx,
    load_npz,
    load_sklearn_digits,
)
from fedsim.errors import DataError


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
        if src.format == "hf":  # a Hub name or a local datasets folder, not only a path
            from fedsim.data.hf_source import load_hf

            return load_hf(value, data_root, field, where, image_size)
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
