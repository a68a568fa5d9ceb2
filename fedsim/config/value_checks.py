"""Checks every configuration value gets, whatever its section: found by walking the
dataclasses, not by listing keys, so a key added tomorrow is checked too.

* Every float must be finite.  NaN passes every ``x > 0`` test by failing none of the
  comparisons a check forgets, and ``inf`` makes a run that cannot train (a learning
  rate of ``inf`` gives NaN weights) end as ``complete``.  The keys where ``inf`` means
  something are listed in :data:`INFINITY_ALLOWED`, with what it means.
* Names that become parts of the run directory's path (``experiment``, the scenario's and
  the strategy's names, a sweep's ``tag``) hold no path separator and are not ``.`` or
  ``..``: ``experiment=../../x`` would write outside ``output_dir``.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Iterator
from typing import Any

from fedsim.errors import ConfigError

#: Keys whose value may be +inf, and what it means.
INFINITY_ALLOWED = {
    "scenario.problem.similarity": "independent A_m (protocols.masha_problems)",
}

#: Keys whose value becomes one component of the run directory's path.
PATH_NAMES = ("experiment", "scenario.name", "strategy.name", "tag")


def walk(obj: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted key, value) of every leaf of a dataclass tree (lists and dicts included)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        for f in dataclasses.fields(obj):
            yield from walk(getattr(obj, f.name), f"{prefix}{f.name}.")
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from walk(v, f"{prefix}{k}.")
    elif isinstance(obj, list | tuple):
        for i, v in enumerate(obj):
            yield from walk(v, f"{prefix}{i}.")
    else:
        yield prefix.removesuffix("."), obj


def check_finite(cfg: Any) -> None:
    """Every float of ``cfg`` is finite (or +inf where :data:`INFINITY_ALLOWED` says)."""
    for key, value in walk(cfg):
        if not isinstance(value, float) or math.isfinite(value):
            continue
        if value == math.inf and key in INFINITY_ALLOWED:
            continue
        allowed = (
            f"a finite number or inf ({INFINITY_ALLOWED[key]})"
            if key in INFINITY_ALLOWED
            else "a finite number"
        )
        raise ConfigError(f"{key}: must be {allowed}, got {value}")


def check_path_name(key: str, value: str) -> None:
    """A name used as a path component: no separator, not ``.``/``..``, no NUL."""
    separators = {"/", "\\", os.sep} | ({os.altsep} if os.altsep else set())
    bad = [s for s in separators if s in value]
    if bad or value in (".", "..") or "\0" in value:
        raise ConfigError(
            f"{key}: '{value}' cannot name a directory (it becomes part of the run "
            "directory's path: no '/', no '\\', not '.' or '..')"
        )


def check_values(cfg: Any) -> None:
    """The checks of this module on a whole :class:`~fedsim.config.RunConfig`."""
    check_finite(cfg)
    leaves = dict(walk(cfg))
    for key in PATH_NAMES:
        value = leaves.get(key)
        if isinstance(value, str) and value:
            check_path_name(key, value)
