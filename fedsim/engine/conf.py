"""Hydra plumbing: ConfigStore registration, scenario files, (de)serialisation, composition.

Scenario YAML files are merged into the :class:`~fedsim.config.ScenarioConfig` schema
when registered, so an unknown key or a wrong type is reported with the file's name and
the key path before anything runs.  ``scenario=<path.yaml>`` on the command line works
too: the file is registered under its stem.  What the values must satisfy once composed
is checked by :func:`fedsim.engine.validation.validate`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from fedsim.config import (
    DEFAULTS,
    BackboneConfig,
    RunConfig,
    RuntimeConfig,
    ScenarioConfig,
    upgrade_plain,
)
from fedsim.config.scenario_files import load_scenario_file, omegaconf_message
from fedsim.engine.validation import validate
from fedsim.errors import ConfigError

# the keys of fedsim.models.backbones.BACKBONES (kept here so that conf does not import torch)
BACKBONE_NAMES = (
    "cnn_digits",
    "resnet18",
    "convnext",
    "mlp",
    "logreg",
    "cnn_mnist",
    "mlp_2nn",
    "cnn_cifar",
)
RUNTIME_NAMES = ("inline", "ray")
PRIMARY = "fedsim"


def repo_root() -> Path:
    return Path(__file__).resolve().parents[2]  # fedsim/engine/conf.py -> the repository


def scenarios_dir() -> Path:
    return repo_root() / "scenarios"


def scenario_files() -> dict[str, Path]:
    """Shipped scenario files by name (file stem)."""
    return {p.stem: p for p in sorted(scenarios_dir().glob("*.yaml"))}


def _share_store(self: ConfigStore, memo: dict[int, Any]) -> ConfigStore:
    return self


def _share_config_store() -> None:
    """Let copies of Hydra's config repository share the one ConfigStore.

    Hydra deep-copies its whole config repository, ConfigStore included, each time it
    lists a config group (about 70 times for ``--help``, once per composition): with every
    strategy and scenario stored that was 2.9 million ``deepcopy`` calls and most of the
    start-up time.  The store is a process-wide singleton whose ``load`` already hands out
    a deep copy of the node it returns, so sharing it across repository copies changes
    nothing Hydra relies on (the copies exist to re-initialise their *sources*).
    """
    if getattr(ConfigStore, "__deepcopy__", None) is not _share_store:
        ConfigStore.__deepcopy__ = _share_store  # type: ignore[attr-defined]


def _same(x: Any) -> Any:
    return x


#: (group, name) -> what was stored there by this process (skip unchanged re-registration)
_STORED: dict[tuple[str | None, str], Any] = {}


def _store(
    cs: ConfigStore, group: str | None, name: str, key: Any, node: Callable[[], Any]
) -> None:
    """Store ``node()`` under ``group/name`` unless the same ``key`` is stored there already.

    ``compose`` runs once per job, test or ``fedsim.run`` call; re-reading and re-checking
    every scenario file each time cost about a second.  A scenario file's key is its path,
    modification time and size, so an edited file is read again.
    """
    here = cs.repo if group is None else cs.repo.get(group, {})
    if _STORED.get((group, name)) == key and f"{name}.yaml" in here:
        return
    _STORED.pop((group, name), None)
    cs.store(group=group, name=name, node=node())
    _STORED[(group, name)] = key


def register_configs(
    scenario_paths: dict[str, Path] | None = None, only: set[str] | None = None
) -> dict[str, str]:
    """Fill Hydra's ConfigStore; returns the scenarios that failed to load (name -> error).

    A broken scenario file does not stop the others from being usable; it is reported
    when it is selected.  ``only`` (:func:`selected_scenarios`) limits the shipped files
    read to those names: reading and checking all of them is most of a run's Hydra
    start-up (about 0.4 s of 17 files), and a composition needs only the chosen one.
    """
    from fedsim.algorithms.registry import algorithms

    _share_config_store()
    cs = ConfigStore.instance()
    _store(cs, None, PRIMARY, RunConfig, partial(_same, RunConfig))
    for name, spec in algorithms().items():
        _store(cs, "strategy", name, spec.config, partial(_same, spec.config))
    for name in BACKBONE_NAMES:
        _store(cs, "backbone", name, name, partial(BackboneConfig, name=name))
    for name in RUNTIME_NAMES:
        _store(cs, "runtime", name, name, partial(RuntimeConfig, name=name))
    broken: dict[str, str] = {}
    paths = dict(scenario_files())
    paths.update(scenario_paths or {})
    for name, path in paths.items():
        if only is not None and name not in only and name not in (scenario_paths or {}):
            continue
        try:
            st = path.stat()
            key = (str(path.resolve()), st.st_mtime_ns, st.st_size)
        except OSError:
            key = (str(path), 0, 0)  # load_scenario_file names the problem
        try:
            _store(cs, "scenario", name, key, partial(load_scenario_file, path))
        except ConfigError as e:
            broken[name] = str(e)
    return broken


def selected_scenarios(overrides: list[str]) -> set[str] | None:
    """The scenario names ``overrides`` choose (the default one when none does), or None
    when only Hydra can tell (``glob(...)``, ``choice(...)``): then all are registered."""
    chosen = [o.split("=", 1)[1] for o in overrides if o.lstrip("+~").startswith("scenario=")]
    if not chosen:
        return {d["scenario"] for d in DEFAULTS if isinstance(d, dict) and "scenario" in d}
    names = {v.strip() for value in chosen for v in value.split(",")}
    return names if all(re.fullmatch(r"[\w.\-]+", n) for n in names) else None


def to_plain(cfg: RunConfig | DictConfig) -> dict[str, Any]:
    """A JSON-ready dict of the resolved configuration (no Hydra ``defaults`` list)."""
    if isinstance(cfg, DictConfig):
        plain = OmegaConf.to_container(cfg, resolve=True)
        assert isinstance(plain, dict)
    else:
        plain = asdict(cfg)
    plain = {k: v for k, v in plain.items() if k not in ("defaults", "hydra")}
    return plain  # type: ignore[return-value]


def from_plain(plain: dict[str, Any]) -> RunConfig:
    """Typed :class:`RunConfig` from a plain dict (as written by :func:`to_plain`)."""
    from fedsim.algorithms.registry import get

    plain = upgrade_plain(plain)
    name = plain.get("strategy", {}).get("name", "fedavg")
    schema = OmegaConf.structured(RunConfig)
    schema.strategy = OmegaConf.structured(get(name).config)
    schema.scenario = OmegaConf.structured(ScenarioConfig)
    schema.backbone = OmegaConf.structured(BackboneConfig)
    schema.runtime = OmegaConf.structured(RuntimeConfig)
    try:
        merged = OmegaConf.merge(schema, {k: v for k, v in plain.items() if k != "defaults"})
        obj = OmegaConf.to_object(merged)
    except OmegaConfBaseException as e:
        raise ConfigError(omegaconf_message(e)) from None
    assert isinstance(obj, RunConfig)
    return obj


def to_json(cfg: RunConfig) -> str:
    return json.dumps(to_plain(cfg), sort_keys=True)


def from_json(text: str) -> RunConfig:
    return from_plain(json.loads(text))


def _compose_one(overrides: list[str]) -> RunConfig:
    from hydra import compose as hydra_compose
    from hydra import initialize

    with initialize(version_base=None):
        try:
            cfg = hydra_compose(PRIMARY, overrides=overrides)
        except OmegaConfBaseException as e:
            raise ConfigError(omegaconf_message(e)) from None
        except Exception as e:  # Hydra's own override errors
            raise ConfigError(_hydra_message(e)) from None
    return from_plain(to_plain(cfg))


def _hydra_message(err: Exception) -> str:
    cause = err.__cause__ or err.__context__
    if isinstance(cause, OmegaConfBaseException):
        return omegaconf_message(cause)
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    return " ".join(lines[:2]) if lines else type(err).__name__


def sweep_values(overrides: list[str]) -> dict[int, tuple[str, list[str]]]:
    """Index -> (key, values) of the overrides that are sweeps in Hydra's grammar
    (``seed=0,1``, ``range(3)``, ...); ``key=[0,1]`` is a list value, not a sweep."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except Exception as e:  # Hydra's grammar errors
        raise ConfigError(_hydra_message(e)) from None
    out: dict[int, tuple[str, list[str]]] = {}
    for i, ov in enumerate(parsed):
        if ov.is_sweep_override():
            out[i] = (ov.get_key_element(), list(ov.sweep_string_iterator()))
    return out


def precheck_sweep(overrides: list[str]) -> RunConfig | None:
    """Compose once per swept value so that a bad value fails before any run starts.

    Without a sweep, returns the one configuration it composed and validated (what
    Hydra's job would compose again from the same overrides); None for a sweep.
    """
    sweeps = sweep_values(overrides)
    firsts = list(overrides)
    for i, (key, values) in sweeps.items():
        firsts[i] = f"{key}={values[0]}"
    for i, (key, values) in sweeps.items():
        for v in values:
            trial = list(firsts)
            trial[i] = f"{key}={v}"
            validate(_compose_one(trial))
    if sweeps:
        return None
    cfg = _compose_one(firsts)
    validate(cfg)
    return cfg


def compose(overrides: list[str]) -> RunConfig:
    """Compose a run configuration the way ``fedsim run`` does (for tests and ``flwr run``)."""
    extra = _path_scenarios(overrides)
    overrides = [_rewrite_scenario(o, extra) for o in overrides]
    # as `fedsim run` does: only the chosen scenario files are read
    broken = register_configs(extra, selected_scenarios(overrides))
    check_overrides(overrides, broken)
    run_cfg = _compose_one(overrides)
    apply_scenario_rounds(run_cfg, overrides)
    validate(run_cfg)
    return run_cfg


def apply_scenario_rounds(cfg: RunConfig, overrides: list[str]) -> None:
    """A scenario's ``rounds:`` (> 0) is the run's default; ``rounds=`` on the command
    line still wins."""
    given = any(o.lstrip("+~").split("=", 1)[0] == "rounds" for o in overrides)
    if cfg.scenario.rounds > 0 and not given:
        cfg.rounds = cfg.scenario.rounds


def _path_scenarios(overrides: list[str]) -> dict[str, Path]:
    """Scenario overrides that name a file path: register them under their stem."""
    out: dict[str, Path] = {}
    for o in overrides:
        if o.startswith("scenario="):
            for value in o.split("=", 1)[1].split(","):
                if value.endswith((".yaml", ".yml")) or "/" in value:
                    out[Path(value).stem] = Path(value).resolve()
    return out


CHANNEL_SHORTHANDS = ("channel.up=", "channel.down=", "+channel.up=", "+channel.down=")


def rewrite_channel(override: str) -> str:
    """``channel.up=randk`` (a name given to the ``channel.up`` section) means
    ``channel.up.name=randk``; Hydra cannot assign a string to a structured section."""
    if override.startswith(CHANNEL_SHORTHANDS):
        key, _, value = override.partition("=")
        return f"{key.lstrip('+')}.name={value}"
    return override


def _rewrite_scenario(override: str, extra: dict[str, Path]) -> str:
    """Scenario paths -> their registered stem; also expands the channel shorthand
    (:func:`rewrite_channel`), since the CLI and :func:`compose` both call this."""
    override = rewrite_channel(override)
    if not override.startswith("scenario=") or not extra:
        return override
    values = override.split("=", 1)[1].split(",")
    return "scenario=" + ",".join(
        Path(v).stem if (v.endswith((".yaml", ".yml")) or "/" in v) else v for v in values
    )


def check_overrides(overrides: list[str], broken: dict[str, str]) -> None:
    """Friendly one-line errors for the group choices Hydra would report verbosely."""
    from fedsim.algorithms.registry import algorithms

    groups = {
        "strategy": sorted(algorithms()),
        "backbone": sorted(BACKBONE_NAMES),
        "runtime": sorted(RUNTIME_NAMES),
        "scenario": sorted(set(scenario_files()) | set(broken)),
    }
    for o in overrides:
        if "=" not in o:
            raise ConfigError(f"override '{o}': expected key=value (e.g. rounds=5)")
        key, value = o.split("=", 1)
        key = key.lstrip("+~")
        if key in groups:
            for v in value.split(","):
                v = v.strip()
                if key == "scenario" and v in broken:
                    raise ConfigError(broken[v])
                if key == "scenario" and (v.endswith((".yaml", ".yml")) or "/" in v):
                    continue
                if v not in groups[key] and not (
                    key == "scenario" and v in _registered_scenarios()
                ):
                    raise ConfigError(f"{key}: unknown '{v}' (allowed: {', '.join(groups[key])})")


def _registered_scenarios() -> set[str]:
    repo = ConfigStore.instance().repo.get("scenario", {})
    return {name.removesuffix(".yaml") for name in repo}
