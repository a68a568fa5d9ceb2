"""Augmentation recipes and the checks of ``train.augment`` (no torch: config-time only).

A recipe is a set of op values keyed by :class:`~fedsim.config.AugmentConfig` field names;
any key set on the command line overrides the recipe's value (:func:`resolve`).  The ops
themselves are in :mod:`fedsim.data.augment`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from fedsim.config import AugmentConfig
from fedsim.errors import ConfigError

# Every op switched off; a recipe changes some of these values.
_OFF: dict[str, Any] = {
    "crop_padding": 0,
    "resized_crop_scale": [],
    "resized_crop_ratio": [],
    "flip": 0.0,
    "brightness": 0.0,
    "contrast": 0.0,
    "saturation": 0.0,
    "hue": 0.0,
    "jitter_p": 1.0,
    "grayscale": 0.0,
}

#: Recipe name -> the value of every op, keyed by :class:`AugmentConfig` field names.
RECIPES: dict[str, dict[str, Any]] = {
    "none": dict(_OFF),
    "cifar": {**_OFF, "crop_padding": 4, "flip": 0.5},
    "fraug_digits": {
        **_OFF,
        "resized_crop_scale": [0.7, 1.0],
        "resized_crop_ratio": [3 / 4, 4 / 3],
        "brightness": 0.3,
        "contrast": 0.3,
        "saturation": 0.3,
        "hue": 0.3,
        "grayscale": 0.1,
    },
    "simclr": {
        **_OFF,
        "resized_crop_scale": [0.08, 1.0],
        "resized_crop_ratio": [3 / 4, 4 / 3],
        "flip": 0.5,
        "brightness": 0.4,
        "contrast": 0.4,
        "saturation": 0.4,
        "hue": 0.1,
        "jitter_p": 0.8,
        "grayscale": 0.2,
    },
}

_DEFAULT_RATIO = (3 / 4, 4 / 3)  # torchvision RandomResizedCrop's default


# --------------------------------------------------------------------------- configuration


def _recipe_name(cfg: AugmentConfig, scenario_default: str, key: str) -> str:
    name = cfg.recipe or scenario_default or "none"
    if name not in RECIPES:
        source = "" if cfg.recipe else ", from the scenario's augment"
        raise ConfigError(
            f"{key}.recipe: unknown {name!r}{source} (allowed: {', '.join(sorted(RECIPES))})"
        )
    return name


def _as_plain(value: Any) -> Any:
    """Lists (also OmegaConf's ListConfig) become plain lists; the rest is kept."""
    if isinstance(value, Sequence) and not isinstance(value, str):
        return list(value)
    return value


def _resolve(cfg: AugmentConfig, scenario_default: str, key: str) -> dict[str, Any]:
    values = {k: _as_plain(v) for k, v in RECIPES[_recipe_name(cfg, scenario_default, key)].items()}
    for name in _OFF:
        override = getattr(cfg, name)
        if override is not None:
            values[name] = _as_plain(override)
    return values


def resolve(cfg: AugmentConfig, scenario_default: str = "") -> dict[str, Any]:
    """The effective value of every op: the recipe's, with ``cfg``'s non-``None`` overrides.

    The recipe is ``cfg.recipe``, else ``scenario_default`` (the scenario's ``augment``),
    else ``none``.  Raises :class:`ConfigError` for an unknown recipe.
    """
    return _resolve(cfg, scenario_default, "train.augment")


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _check_range(
    value: Any, key: str, *, lo: float, hi: float, lo_open: bool, allowed: str
) -> None:
    """``value`` must be ``[]`` or two numbers ``[a, b]`` with ``lo (<|<=) a <= b <= hi``."""
    if value == []:
        return
    ok = (
        isinstance(value, list)
        and len(value) == 2
        and all(_is_number(v) for v in value)
        and (value[0] > lo if lo_open else value[0] >= lo)
        and value[0] <= value[1] <= hi
    )
    if not ok:
        raise ConfigError(f"{key}: invalid {value!r} (allowed: {allowed})")


def validate_augment(
    cfg: AugmentConfig,
    image_size: int | None = None,
    channels: int | None = None,
    key: str = "train.augment",
    scenario_default: str = "",
) -> None:
    """Check ``cfg`` once, at load; raise :class:`ConfigError` with one line naming the key.

    Parameters
    ----------
    cfg : AugmentConfig
        The section to check; the recipe's values are filled in first.
    image_size : int, optional
        The side of the (square) training images, when known: the crop padding must be
        smaller, or a crop could be all padding.
    channels : int, optional
        The images' channel count, when known: contrast, saturation, hue and grayscale
        need 1 or 3 channels.
    key : str
        Where the section sits in the configuration, for messages.
    scenario_default : str
        The scenario's ``augment`` (the recipe when ``cfg.recipe`` is ``""``).
    """
    ops = _resolve(cfg, scenario_default, key)

    def bad(name: str, allowed: str) -> ConfigError:
        return ConfigError(f"{key}.{name}: invalid {ops[name]!r} (allowed: {allowed})")

    pad = ops["crop_padding"]
    if not (isinstance(pad, int) and not isinstance(pad, bool) and pad >= 0):
        raise bad("crop_padding", "an integer >= 0")
    if image_size is not None and pad >= image_size > 0:
        raise bad("crop_padding", f"an integer from 0 to {image_size - 1}, below the image size")
    for name in ("flip", "jitter_p", "grayscale"):
        if not (_is_number(ops[name]) and 0 <= ops[name] <= 1):
            raise bad(name, "a probability in [0, 1]")
    for name in ("brightness", "contrast", "saturation"):
        if not (_is_number(ops[name]) and ops[name] >= 0):
            raise bad(name, "a finite number >= 0")
    if not (_is_number(ops["hue"]) and 0 <= ops["hue"] <= 0.5):
        raise bad("hue", "a number in [0, 0.5]")
    _check_range(
        ops["resized_crop_scale"],
        f"{key}.resized_crop_scale",
        lo=0.0,
        hi=1.0,
        lo_open=True,
        allowed="[] (off) or [min, max] with 0 < min <= max <= 1",
    )
    _check_range(
        ops["resized_crop_ratio"],
        f"{key}.resized_crop_ratio",
        lo=0.0,
        hi=math.inf,
        lo_open=True,
        allowed="[] (3/4 to 4/3) or [min, max] with 0 < min <= max",
    )
    colour = [n for n in ("contrast", "saturation", "hue", "grayscale") if ops[n] > 0]
    if channels is not None and channels not in (1, 3) and colour:
        raise ConfigError(
            f"{key}.{colour[0]}: invalid {ops[colour[0]]!r} for {channels}-channel images "
            "(allowed: 0, or images with 1 or 3 channels)"
        )
