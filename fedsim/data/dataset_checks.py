"""The checks of the ``dataset`` config section, made before any file is touched.

Separate from :mod:`fedsim.data.datasets` so that a scenario can be validated at load
without importing torch or reading data: :func:`validate_dataset` looks only at the values
(fractions, sizes, channel counts, each source's format and the files it names), and
:func:`fedsim.data.datasets.build_dataset` calls it again before building.
"""

from __future__ import annotations

from fedsim.config import DatasetConfig
from fedsim.data.loaders import FORMATS
from fedsim.errors import ConfigError


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
