"""The Python API: one experiment from a notebook or a script, as ``fedsim run`` does it.

>>> import fedsim
>>> result = fedsim.run(strategy="fedprox", rounds=20, train__lr=0.01)  # doctest: +SKIP
>>> result.metrics["eval/acc"], result.run_dir  # doctest: +SKIP

Keyword arguments are overrides in the command line's ``key=value`` grammar: a double
underscore stands for a dot (``train__lr=0.01`` is ``train.lr=0.01``,
``scenario__num_clients=4`` is ``scenario.num_clients=4``); ``strategy``, ``scenario``,
``backbone`` and ``runtime`` pick a group as on the command line.  ``overrides=[...]``
takes the command-line strings themselves (``["train.lr=0.01", "channel.up=topk"]``) and
is applied first.  The configuration is composed, validated and run by the same code as
the CLI, so a bad value raises the :class:`~fedsim.errors.ConfigError` /
:class:`~fedsim.errors.UserError` whose message the CLI prints after ``fedsim: error:``.

Importing :mod:`fedsim` stays light: Hydra, torch and Flower are imported by
:func:`run`, not at import.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedsim.errors import ConfigError


@dataclass(frozen=True)
class RunResult:
    """What one run returns: its final metrics, where it wrote them, its configuration."""

    metrics: dict[str, float]  # the run's final scalars (run.json's ``final``)
    run_dir: Path  # metrics.jsonl, run.json, TensorBoard event files, checkpoints
    config: dict[str, Any] = field(default_factory=dict)  # the resolved configuration


def _format(value: Any) -> str:
    """A Python value in Hydra's override grammar."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return "[" + ",".join(_format(v) for v in value) + "]"
    if value is None:
        return "null"
    if isinstance(value, str | Path):
        return str(value)
    return json.dumps(value)


def to_overrides(keys: dict[str, Any]) -> list[str]:
    """``{"train__lr": 0.01, "progress": False}`` -> ``["train.lr=0.01", "progress=false"]``."""
    return [f"{k.replace('__', '.')}={_format(v)}" for k, v in keys.items()]


def run(
    strategy: str | None = None,
    rounds: int | None = None,
    *,
    overrides: Sequence[str] = (),
    **keys: Any,
) -> RunResult:
    """Run one experiment and return its final metrics and run directory.

    Parameters
    ----------
    strategy, rounds
        Shorthands for ``strategy=...`` and ``rounds=...``.
    overrides
        Command-line overrides (``"train.lr=0.01"``), applied before ``keys``.
    **keys
        Further overrides; ``__`` in a name stands for ``.``.

    Raises
    ------
    ConfigError, UserError
        A bad key or value, a missing data file, a complete run in the way (pass
        ``overwrite=True``): the message the CLI would print.
    """
    from fedsim.engine.conf import compose, sweep_values
    from fedsim.engine.context import context_for
    from fedsim.engine.runner import execute

    extra = dict(keys)
    if strategy is not None:
        extra["strategy"] = strategy
    if rounds is not None:
        extra["rounds"] = rounds
    args = [*overrides, *to_overrides(extra)]
    swept = sweep_values(args)
    if swept:
        key, values = next(iter(swept.values()))
        raise ConfigError(
            f"{key}: fedsim.run runs one experiment, got the sweep {','.join(values)} "
            "(loop over the values in Python, or use `fedsim run -m`)"
        )
    cfg = compose(args)
    context_for(cfg).validated = True  # compose validated it: the run does not again
    record = execute(cfg)
    final = {k: float(v) for k, v in record.get("final", {}).items()}
    return RunResult(final, Path(record["run_dir"]), record.get("config", {}))
