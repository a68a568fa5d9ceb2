"""Hydra plumbing: ConfigStore registration, scenario files, (de)serialisation, validation.

Scenario YAML files are merged into the :class:`~fedsim.config.ScenarioConfig` schema
when registered, so an unknown key or a wrong type is reported with the file's name and
the key path before anything runs.  ``scenario=<path.yaml>`` on the command line works
too: the file is registered under its stem.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import yaml
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from fedsim.config import BackboneConfig, RunConfig, RuntimeConfig, ScenarioConfig
from fedsim.errors import ConfigError

BACKBONE_NAMES = ("cnn_digits", "resnet18", "convnext", "mlp", "logreg")
RUNTIME_NAMES = ("inline", "ray")
PRIMARY = "fedsim"


def repo_root() -> Path:
    return Path(__file__).resolve().parents[1]


def scenarios_dir() -> Path:
    return repo_root() / "scenarios"


def scenario_files() -> dict[str, Path]:
    """Shipped scenario files by name (file stem)."""
    return {p.stem: p for p in sorted(scenarios_dir().glob("*.yaml"))}


def _omegaconf_message(err: OmegaConfBaseException) -> str:
    key = getattr(err, "full_key", "") or ""
    msg = str(err).splitlines()[0]
    if "Key '" in msg and "not in" in msg:
        return f"{key}: unknown key" if key else msg
    if "Value '" in msg and "could not be converted" in msg:
        return f"{key}: {msg}"
    if "Missing mandatory value" in msg:
        return f"{key}: a value is required"
    return f"{key}: {msg}" if key else msg


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
        raw = yaml.safe_load(text)
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
        return OmegaConf.merge(OmegaConf.structured(ScenarioConfig), raw)  # type: ignore[return-value]
    except OmegaConfBaseException as e:
        raise ConfigError(f"{where}: {_omegaconf_message(e)}") from None
    except ValueError as e:  # e.g. a list where a mapping belongs
        raise ConfigError(f"{where}: {e}") from None


def register_configs(scenario_paths: dict[str, Path] | None = None) -> dict[str, str]:
    """Fill Hydra's ConfigStore; returns the scenarios that failed to load (name -> error).

    A broken scenario file does not stop the others from being usable; it is reported
    when it is selected.
    """
    from strategies import REGISTRY

    cs = ConfigStore.instance()
    cs.store(name=PRIMARY, node=RunConfig)
    for name, spec in REGISTRY.items():
        cs.store(group="strategy", name=name, node=spec.config)
    for name in BACKBONE_NAMES:
        cs.store(group="backbone", name=name, node=BackboneConfig(name=name))
    for name in RUNTIME_NAMES:
        cs.store(group="runtime", name=name, node=RuntimeConfig(name=name))
    broken: dict[str, str] = {}
    paths = dict(scenario_files())
    paths.update(scenario_paths or {})
    for name, path in paths.items():
        try:
            cs.store(group="scenario", name=name, node=load_scenario_file(path))
        except ConfigError as e:
            broken[name] = str(e)
    return broken


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
    from strategies import REGISTRY

    name = plain.get("strategy", {}).get("name", "fedavg")
    if name not in REGISTRY:
        raise ConfigError(f"strategy: unknown '{name}' (allowed: {', '.join(sorted(REGISTRY))})")
    schema = OmegaConf.structured(RunConfig)
    schema.strategy = OmegaConf.structured(REGISTRY[name].config)
    schema.scenario = OmegaConf.structured(ScenarioConfig)
    schema.backbone = OmegaConf.structured(BackboneConfig)
    schema.runtime = OmegaConf.structured(RuntimeConfig)
    try:
        merged = OmegaConf.merge(schema, {k: v for k, v in plain.items() if k != "defaults"})
        obj = OmegaConf.to_object(merged)
    except OmegaConfBaseException as e:
        raise ConfigError(_omegaconf_message(e)) from None
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
            raise ConfigError(_omegaconf_message(e)) from None
        except Exception as e:  # Hydra's own override errors
            raise ConfigError(_hydra_message(e)) from None
    return from_plain(to_plain(cfg))


def _hydra_message(err: Exception) -> str:
    cause = err.__cause__ or err.__context__
    if isinstance(cause, OmegaConfBaseException):
        return _omegaconf_message(cause)
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    return " ".join(lines[:2]) if lines else type(err).__name__


def precheck_sweep(overrides: list[str]) -> None:
    """Compose once per swept value so that a bad value fails before any run starts."""
    firsts = [o if "," not in o.partition("=")[2] else o.split(",", 1)[0] for o in overrides]
    checked = False
    for i, o in enumerate(overrides):
        key, _, value = o.partition("=")
        if "," not in value:
            continue
        for v in value.split(","):
            trial = list(firsts)
            trial[i] = f"{key}={v}"
            validate(_compose_one(trial))
            checked = True
    if not checked:
        validate(_compose_one(firsts))


def compose(overrides: list[str]) -> RunConfig:
    """Compose a run configuration the way ``fedsim run`` does (for tests and ``flwr run``)."""
    extra = _path_scenarios(overrides)
    broken = register_configs(extra)
    overrides = [_rewrite_scenario(o, extra) for o in overrides]
    check_overrides(overrides, broken)
    run_cfg = _compose_one(overrides)
    validate(run_cfg)
    return run_cfg


def _path_scenarios(overrides: list[str]) -> dict[str, Path]:
    """Scenario overrides that name a file path: register them under their stem."""
    out: dict[str, Path] = {}
    for o in overrides:
        if o.startswith("scenario="):
            for value in o.split("=", 1)[1].split(","):
                if value.endswith((".yaml", ".yml")) or "/" in value:
                    out[Path(value).stem] = Path(value).resolve()
    return out


def _rewrite_scenario(override: str, extra: dict[str, Path]) -> str:
    if not override.startswith("scenario=") or not extra:
        return override
    values = override.split("=", 1)[1].split(",")
    return "scenario=" + ",".join(
        Path(v).stem if (v.endswith((".yaml", ".yml")) or "/" in v) else v for v in values
    )


def check_overrides(overrides: list[str], broken: dict[str, str]) -> None:
    """Friendly one-line errors for the group choices Hydra would report verbosely."""
    from strategies import REGISTRY

    groups = {
        "strategy": sorted(REGISTRY),
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


def validate(cfg: RunConfig) -> None:
    """Semantic checks of the whole configuration; raises ConfigError naming the key."""
    from fedsim.participation import validate_participation
    from fedsim.shift import validate_shift

    def need(cond: bool, msg: str) -> None:
        if not cond:
            raise ConfigError(msg)

    need(cfg.rounds >= 1, f"rounds: must be >= 1, got {cfg.rounds}")
    need(cfg.eval_every >= 1, f"eval_every: must be >= 1, got {cfg.eval_every}")
    need(cfg.checkpoint_every >= 0, f"checkpoint_every: must be >= 0, got {cfg.checkpoint_every}")
    need(
        cfg.precision in ("fp32", "bf16"),
        f"precision: unknown '{cfg.precision}' (allowed: bf16, fp32)",
    )
    t = cfg.train
    need(t.batch_size >= 1, f"train.batch_size: must be >= 1, got {t.batch_size}")
    need(
        t.local_epochs >= 1 or t.local_steps >= 1,
        f"train.local_epochs: must be >= 1 (or set train.local_steps), got {t.local_epochs}",
    )
    need(t.local_steps >= 0, f"train.local_steps: must be >= 0, got {t.local_steps}")
    need(t.lr > 0, f"train.lr: must be > 0, got {t.lr}")
    need(0 <= t.momentum < 1, f"train.momentum: must be in [0, 1), got {t.momentum}")
    need(t.weight_decay >= 0, f"train.weight_decay: must be >= 0, got {t.weight_decay}")
    need(
        t.optimizer in ("sgd", "adam"),
        f"train.optimizer: unknown '{t.optimizer}' (allowed: adam, sgd)",
    )
    need(cfg.backbone.width > 0, f"backbone.width: must be > 0, got {cfg.backbone.width}")
    need(cfg.runtime.workers >= 0, f"runtime.workers: must be >= 0, got {cfg.runtime.workers}")
    need(cfg.runtime.threads >= 0, f"runtime.threads: must be >= 0, got {cfg.runtime.threads}")
    need(cfg.runtime.timeout > 0, f"runtime.timeout: must be > 0, got {cfg.runtime.timeout}")
    s = cfg.scenario
    need(s.num_clients >= 1, f"scenario.num_clients: must be >= 1, got {s.num_clients}")
    ev = s.evaluation
    need(
        0 <= ev.holdout_fraction < 1,
        f"scenario.evaluation.holdout_fraction: must be in [0, 1), got {ev.holdout_fraction}",
    )
    need(
        0 < ev.fraction <= 1, f"scenario.evaluation.fraction: must be in (0, 1], got {ev.fraction}"
    )
    for name in ("crash", "nan", "delay"):
        p = getattr(s.faults, name)
        need(0 <= p <= 1, f"scenario.faults.{name}: must be a probability in [0, 1], got {p}")
    need(s.faults.delay_s >= 0, f"scenario.faults.delay_s: must be >= 0, got {s.faults.delay_s}")
    try:
        validate_participation(s.participation, s.num_clients)
        validate_shift(s.shift)
    except ConfigError as e:
        raise ConfigError(f"scenario.{e}") from None
