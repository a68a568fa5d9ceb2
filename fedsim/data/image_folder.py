"""Class-per-folder images: ``root/<class_name>/*.png`` decoded with PIL into raw arrays.

Separate from :mod:`fedsim.data.loaders` because this format alone decodes image files
(PIL), picks grey or RGB from the images' modes and can resize while decoding.  The arrays
follow the loaders' convention (``uint8`` ``N×H×W`` or ``N×H×W×3``, ``int64`` labels) and a
bad file is a one-line :class:`~fedsim.errors.DataError`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from fedsim.data.loaders import _one_line, _require_dir
from fedsim.errors import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
"""File suffixes (case-insensitive) that :func:`load_image_folder` reads."""

_GREY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"})


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
