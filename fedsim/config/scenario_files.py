"""Scenario files: read a YAML file and check its keys and types against
:class:`~fedsim.config.ScenarioConfig`, naming the file and the key path on any error."""

from __future__ import annotations

from dataclasses import is_dataclass
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from fedsim.config import ScenarioConfig
from fedsim.errors import ConfigError


def omegaconf_message(err: OmegaConfBaseException) -> str:
    key = getattr(err, "full_key", "") or ""
    msg = str(err).splitlines()[0]
    if "Key '" in msg and "not in" in msg:
        return f"{key}: unknown key" if key else msg
    if "Value '" in msg and "could not be converted" in msg:
        return f"{key}: {msg}"
    if "Missing mandatory value" in msg:
        return f"{key}: a value is required"
    return f"{key}: {msg}" if key else msg


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML loader that refuses a key given twice in one mapping (PyYAML keeps the last)."""


def _construct_unique_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> Any:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node)
        if key in seen:
            mark = key_node.start_mark
            raise ConfigError(
                f"{key}: given twice (line {mark.line + 1}); each key may appear once per section"
            )
        seen.add(key)
    return loader.construct_mapping(node)


_UniqueKeyLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_unique_mapping
)


def _show(value: Any) -> str:
    if value is None:
        return "an empty value"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return f"{value!r} ({type(value).__name__})"


def _schema_check(value: Any, hint: Any, path: str) -> Any:
    """Check a value read from YAML against the schema type ``hint``; return it normalised.

    Reports, with the full key path and what is allowed, what OmegaConf reports without
    a usable path (an unknown key inside a list of sources, a list where a section
    belongs), and turns integers into floats where floats belong, which OmegaConf refuses
    inside nested lists (``mixture: [[1, 0], [0, 1]]``).  YAML 1.1 reads ``1e-3`` as a
    string, so numeric strings are accepted for numbers.
    """
    if is_dataclass(hint):
        hints = get_type_hints(hint)
        allowed = ", ".join(hints)
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: must be a section with keys {allowed}; got {_show(value)}")
        out = {}
        for key, item in value.items():
            sub = f"{path}.{key}" if path else str(key)
            if key not in hints:
                raise ConfigError(f"{sub}: unknown key (allowed: {allowed})")
            out[key] = _schema_check(item, hints[key], sub)
        return out
    if get_origin(hint) is list:
        (inner,) = get_args(hint)
        if not isinstance(value, list):
            raise ConfigError(f"{path}: must be a list, got {_show(value)}")
        return [_schema_check(v, inner, f"{path}[{i}]") for i, v in enumerate(value)]
    if hint is bool and not isinstance(value, bool):
        raise ConfigError(f"{path}: must be true or false, got {_show(value)}")
    if hint in (int, float):
        number = value
        if isinstance(value, str):
            try:
                number = hint(value.strip())
            except ValueError:
                number = None
        if isinstance(number, bool) or not isinstance(number, int if hint is int else int | float):
            kind = "an integer" if hint is int else "a number"
            raise ConfigError(f"{path}: must be {kind}, got {_show(value)}")
        return hint(number)
    if hint is str:
        if value is None or isinstance(value, dict | list | bool):
            raise ConfigError(f"{path}: must be a string, got {_show(value)}")
        return str(value)
    return value


def load_scenario_file(path: Path) -> DictConfig:
    """Read a scenario file and validate its keys and types against the schema."""
    where = str(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"scenario: file not found: {where}") from None
    except OSError as e:
        raise ConfigError(f"scenario: cannot read {where}: {e.strerror}") from None
    try:
        raw = yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader subclass: safe
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = getattr(e, "problem", None) or "invalid YAML"
        raise ConfigError(f"{where}: not valid YAML{at}: {problem}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(
            f"{where}: a scenario file must be a mapping of keys, got {type(raw).__name__}"
        )
    raw.setdefault("name", path.stem)
    raw["file"] = where
    try:
        if "partition" in raw:  # {flwr: X, alpha: ...}: the partitioner's own arguments
            raw["partition"] = fold_flat_keys(raw["partition"])
        raw = _schema_check(raw, ScenarioConfig, "")
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None
    try:
        return OmegaConf.merge(OmegaConf.structured(ScenarioConfig), raw)  # type: ignore[return-value]
    except OmegaConfBaseException as e:
        raise ConfigError(f"{where}: {omegaconf_message(e)}") from None
    except ValueError as e:  # e.g. a list where a mapping belongs
        raise ConfigError(f"{where}: {e}") from None


def fold_flat_keys(section: Any) -> Any:
    """``{flwr: X, alpha: 0.5}`` (a scenario file's partition section) -> ``{flwr: X,
    args: {alpha: 0.5}}``: next to ``flwr`` every key is the partitioner's."""
    if not isinstance(section, dict) or "flwr" not in section:
        return section
    flat = {k: v for k, v in section.items() if k not in ("flwr", "args")}
    given = section.get("args") or {}
    if not isinstance(given, dict):
        return section  # the schema check reports it
    both = sorted(set(flat) & set(given))
    if both:
        raise ConfigError(f"partition.{both[0]}: given twice (flat and under args)")
    return {"flwr": section["flwr"], "args": {**given, **flat}}
