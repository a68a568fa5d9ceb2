"""Semantic checks of a composed run configuration: one error naming the key, before a run.

Composition (:mod:`fedsim.engine.conf`) makes sure every key exists and has the right
type; what is left is whether the values make sense together: ranges, known names, the
task and the strategy agreeing.  Kept apart because it asks every layer for its own
section's checks (schedules, augmentation, channels, participation, shifts, faults,
differential privacy, the task and the algorithm), while composition needs only Hydra.
"""

from __future__ import annotations

from fedsim.config import RunConfig, ScenarioConfig
from fedsim.errors import ConfigError


def validate(cfg: RunConfig) -> None:
    """Semantic checks of the whole configuration; raises ConfigError naming the key."""
    from fedsim.config.value_checks import check_values

    check_values(cfg)  # every float finite, names that become paths (fedsim.config.value_checks)

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
    from fedsim.algorithms.schedules import validate_train

    validate_train(t)
    from fedsim.data.augment_recipes import validate_augment

    image = cfg.scenario.dataset.image_size or None
    validate_augment(t.augment, image_size=image, scenario_default=cfg.scenario.augment)
    need(cfg.backbone.width > 0, f"backbone.width: must be > 0, got {cfg.backbone.width}")
    need(cfg.runtime.workers >= 0, f"runtime.workers: must be >= 0, got {cfg.runtime.workers}")
    need(cfg.runtime.threads >= 0, f"runtime.threads: must be >= 0, got {cfg.runtime.threads}")
    need(cfg.runtime.timeout > 0, f"runtime.timeout: must be > 0, got {cfg.runtime.timeout}")
    from fedsim.engine.runtime_checks import validate_runtime

    bad_runtime = validate_runtime(cfg.runtime)
    need(bad_runtime is None, bad_runtime or "")
    from fedsim.algorithms.vectorize import check_config

    check_config(cfg)
    from fedsim.algorithms.channels import validate_channel

    for side in ("up", "down"):
        bad = validate_channel(getattr(cfg.channel, side), f"channel.{side}")
        need(bad is None, bad or "")
    from fedsim.algorithms.task import task_of

    try:
        validate_scenario(cfg.scenario)
        task_of(cfg).validate(cfg)  # the task's own keys (problem.*, dataset, partition)
    except ConfigError as e:  # name the file the scenario came from
        where = cfg.scenario.file or f"scenario '{cfg.scenario.name}'"
        raise ConfigError(f"{where}: scenario.{e}") from None
    _check_task_strategy(cfg)
    from fedsim.algorithms.dp import validate_dp

    validate_dp(cfg.dp)
    cfg.strategy.validate(cfg)  # the algorithm's own checks, before anything is built


def _check_task_strategy(cfg: RunConfig) -> None:
    """A task may need a kind of strategy (``bilinear`` one that solves variational
    inequalities): refused here, before anything is built, rather than mid-start."""
    from fedsim.algorithms.task import task_of

    why = task_of(cfg).check_strategy(cfg)
    if why is not None:
        where = cfg.scenario.file or f"scenario '{cfg.scenario.name}'"
        raise ConfigError(
            f"strategy: '{cfg.strategy.name}' cannot run scenario.task='{cfg.scenario.task}' "
            f"of {where}: {why}"
        )


def validate_scenario(s: ScenarioConfig) -> None:
    """Checks of a scenario that need no data; messages start with the key path in the file.

    Runs before anything is loaded.  What depends on the data (a source file that is
    missing, more clients than samples, a source too small for its clients, open-world
    classes the dataset lacks) is checked when the federation is built
    (:func:`fedsim.data.federation.build_federation`), still before the run directory exists.
    """
    from fedsim.data.participation import validate_participation
    from fedsim.data.shift import validate_shift

    def need(cond: bool, msg: str) -> None:
        if not cond:
            raise ConfigError(msg)

    need(s.num_clients >= 1, f"num_clients: must be >= 1, got {s.num_clients}")
    ev = s.evaluation
    need(
        0 <= ev.holdout_fraction < 1,
        f"evaluation.holdout_fraction: must be in [0, 1), got {ev.holdout_fraction}",
    )
    need(
        0 <= ev.validation_fraction < 1,
        f"evaluation.validation_fraction: must be in [0, 1), got {ev.validation_fraction}",
    )
    need(
        ev.test in ("holdout", "domain_file"),
        f"evaluation.test: unknown '{ev.test}' (allowed: domain_file, holdout)",
    )
    need(
        0 <= ev.fraction <= 1,
        f"evaluation.fraction: must be in [0, 1] (0 = no federated evaluation), got {ev.fraction}",
    )
    for name in ("crash", "nan", "delay"):
        p = getattr(s.faults, name)
        need(0 <= p <= 1, f"faults.{name}: must be a probability in [0, 1], got {p}")
    need(s.faults.delay_s >= 0, f"faults.delay_s: must be >= 0, got {s.faults.delay_s}")
    from fedsim.data.faults import validate_faults

    bad = validate_faults(s.faults)
    need(bad is None, bad or "")
    need(s.rounds >= 0, f"rounds: must be >= 0 (0 = the run's rounds), got {s.rounds}")
    validate_participation(s.participation, s.num_clients)
    validate_shift(s.shift, s.num_clients)
