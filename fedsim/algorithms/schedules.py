"""Per-round learning-rate schedules and the checks of the optimiser keys of ``train``.

A federated run changes the clients' learning rate between rounds, not within a client's
local run: FedBN and FRAug decay it exponentially per round, FL papers on CIFAR use a
cosine over the run's rounds, often after a short linear warm-up.  The rate of round
``t`` (1-based) of ``R`` rounds is a pure function of the configuration, so the server
logs exactly what every client used (``train/lr``) without asking them.
"""

from __future__ import annotations

import math

from fedsim.config import TrainConfig
from fedsim.errors import ConfigError

SCHEDULES = ("constant", "cosine", "exponential", "step")


def lr_at(cfg: TrainConfig, server_round: int, rounds: int) -> float:
    """The clients' learning rate in round ``server_round`` (1-based) of ``rounds``.

    * ``constant``: ``lr``;
    * ``exponential``: ``lr * lr_decay ** (t - 1)``;
    * ``step``: ``lr * lr_decay ** floor((t - 1) / lr_step)``;
    * ``cosine``: ``lr_min + (lr - lr_min) * (1 + cos(pi * (t - 1) / (R - 1))) / 2``, from
      ``lr`` at the first round to ``lr_min`` at the last (``lr`` when ``R == 1``);

    then, for ``t <= warmup_rounds``, multiplied by ``t / warmup_rounds`` (linear warm-up
    from ``lr / warmup_rounds``).  The decay clock starts at round 1, warm-up or not.
    """
    t = max(1, server_round)
    if cfg.schedule == "exponential":
        rate = cfg.lr * cfg.lr_decay ** (t - 1)
    elif cfg.schedule == "step":
        rate = cfg.lr * cfg.lr_decay ** ((t - 1) // cfg.lr_step)
    elif cfg.schedule == "cosine":
        frac = (t - 1) / (rounds - 1) if rounds > 1 else 0.0
        rate = cfg.lr_min + (cfg.lr - cfg.lr_min) * (1 + math.cos(math.pi * min(frac, 1.0))) / 2
    else:
        rate = cfg.lr
    if cfg.warmup_rounds > 0 and t <= cfg.warmup_rounds:
        rate *= t / cfg.warmup_rounds
    return rate


def validate_train(t: TrainConfig) -> None:
    """One-line :class:`ConfigError` for an optimiser, schedule or loss key out of range."""

    def need(cond: bool, msg: str) -> None:
        if not cond:
            raise ConfigError(msg)

    need(
        t.schedule in SCHEDULES,
        f"train.schedule: unknown '{t.schedule}' (allowed: {', '.join(SCHEDULES)})",
    )
    need(
        math.isfinite(t.lr_decay) and t.lr_decay > 0,
        f"train.lr_decay: must be a finite number > 0, got {t.lr_decay}",
    )
    need(
        t.schedule not in ("exponential", "step") or t.lr_decay <= 1,
        f"train.lr_decay: a decay must be <= 1 for train.schedule={t.schedule}, got {t.lr_decay}",
    )
    need(t.lr_step >= 1, f"train.lr_step: must be >= 1, got {t.lr_step}")
    need(
        math.isfinite(t.lr_min) and 0 <= t.lr_min <= t.lr,
        f"train.lr_min: must be in [0, train.lr={t.lr}], got {t.lr_min}",
    )
    need(t.warmup_rounds >= 0, f"train.warmup_rounds: must be >= 0, got {t.warmup_rounds}")
    need(
        math.isfinite(t.clip_norm) and t.clip_norm >= 0,
        f"train.clip_norm: must be >= 0 (0 = no clipping), got {t.clip_norm}",
    )
    need(
        0 <= t.label_smoothing < 1,
        f"train.label_smoothing: must be in [0, 1), got {t.label_smoothing}",
    )
    need(
        not t.nesterov or (t.optimizer == "sgd" and t.momentum > 0),
        "train.nesterov: needs train.optimizer=sgd and train.momentum > 0, got "
        f"optimizer={t.optimizer} momentum={t.momentum}",
    )
    for i, prefix in enumerate(t.trainable):
        need(
            isinstance(prefix, str) and prefix.strip() != "",
            f"train.trainable[{i}]: must be a module-name prefix such as layer4, got '{prefix}'",
        )
