"""What ``fedsim tune`` searches: the tuned keys and the candidate settings of each strategy.

A tuning is fair when every strategy gets the same number of trials and the same candidate
values for the keys they all have (``train.lr``); a strategy's own keys
(``strategy.mu``) come from a stream of their own, so a strategy's candidates do not
depend on which other strategies are tuned.  Two fixed designs keep that fairness:

``random``
    Seeded random search (Bergstra & Bengio, "Random search for hyper-parameter
    optimization", JMLR 2012), the draws of fedsim's earlier hand-written search.
``qmc``
    A scrambled Sobol sequence (``scipy.stats.qmc.Sobol``, the generator behind Optuna's
    ``QMCSampler``), which covers the space more evenly than independent draws.

Both are enqueued into the Optuna study as fixed trials (:mod:`fedsim.analysis.tune_study`), so
a resumed or shared study runs exactly these candidates.  Values are rounded to three
significant digits: they name run directories.
"""

from __future__ import annotations

import math
import warnings
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedsim.errors import ConfigError

DISTRIBUTIONS = ("log", "uniform", "int", "choice")


@dataclass(frozen=True)
class Space:
    """One tuned key: ``KEY=log:A:B`` (log-uniform), ``uniform:A:B``, ``int:A:B``
    (integers A..B) or ``choice:X:Y:...``; ``STRATEGY:KEY=...`` tunes it for one strategy."""

    key: str
    kind: str
    args: tuple[str, ...]
    strategy: str = ""  # "" = every strategy

    def draw(self, rng: np.random.Generator) -> Any:
        """One value drawn at random."""
        if self.kind == "choice":
            return self.args[int(rng.integers(len(self.args)))]
        low, high = float(self.args[0]), float(self.args[1])
        if self.kind == "int":
            return int(rng.integers(int(low), int(high) + 1))
        if self.kind == "log":
            return self._readable(math.exp(rng.uniform(math.log(low), math.log(high))))
        return self._readable(rng.uniform(low, high))

    def at(self, u: float) -> Any:
        """The value at ``u`` in [0, 1) of the unit interval (for low-discrepancy designs)."""
        if self.kind == "choice":
            return self.args[min(int(u * len(self.args)), len(self.args) - 1)]
        low, high = float(self.args[0]), float(self.args[1])
        if self.kind == "int":
            return min(int(low) + int(u * (int(high) - int(low) + 1)), int(high))
        if self.kind == "log":
            return self._readable(math.exp(math.log(low) + u * (math.log(high) - math.log(low))))
        return self._readable(low + u * (high - low))

    def _readable(self, value: float) -> float:
        """Three significant digits (readable folder names), kept inside [LOW, HIGH]."""
        low, high = float(self.args[0]), float(self.args[1])
        return min(max(float(f"{value:.3g}"), low), high)

    def distribution(self) -> Any:
        """The matching Optuna distribution (what the study records for this key)."""
        from optuna.distributions import (
            CategoricalDistribution,
            FloatDistribution,
            IntDistribution,
        )

        if self.kind == "choice":
            return CategoricalDistribution(list(self.args))
        low, high = float(self.args[0]), float(self.args[1])
        if self.kind == "int":
            return IntDistribution(int(low), int(high))
        return FloatDistribution(low, high, log=self.kind == "log")


def parse_space(text: str) -> Space:
    """``[STRATEGY:]KEY=KIND:ARG:ARG...`` -> :class:`Space` (a ConfigError if malformed)."""
    where = f"tune: --space {text!r}"
    left, sep, right = text.partition("=")
    kind, _, rest = right.partition(":")
    strategy, _, key = left.rpartition(":")
    args = tuple(a for a in rest.split(":") if a) if rest else ()
    if not sep or not key or kind not in DISTRIBUTIONS:
        raise ConfigError(
            f"{where}: expected [STRATEGY:]KEY=KIND:ARGS with KIND one of "
            f"{', '.join(DISTRIBUTIONS)} (e.g. train.lr=log:0.01:0.3, fedprox:strategy.mu="
            "log:0.001:1, train.optimizer=choice:sgd:adam)"
        )
    if kind == "choice":
        if not args:
            raise ConfigError(f"{where}: choice needs at least one value")
        return Space(key, kind, args, strategy)
    try:
        low, high = (float(a) for a in args)
    except ValueError:
        raise ConfigError(f"{where}: {kind} needs two numbers LOW:HIGH") from None
    if not low <= high or (kind == "log" and low <= 0):
        raise ConfigError(f"{where}: needs LOW <= HIGH" + (" and LOW > 0" if kind == "log" else ""))
    return Space(key, kind, args, strategy)


def _own_stream(seed: int, name: str) -> list[int]:
    """The entropy of a strategy's own keys: depends on its name, not on the list's order."""
    return [seed, 1, zlib.crc32(name.encode())]


def draw_settings(
    strategies: Sequence[str], spaces: Sequence[Space], trials: int, seed: int
) -> dict[str, list[dict[str, Any]]]:
    """``trials`` random settings per strategy; shared keys take the same values for all."""
    shared_rng = np.random.default_rng([seed, 0])
    shared = [{s.key: s.draw(shared_rng) for s in spaces if not s.strategy} for _ in range(trials)]
    out: dict[str, list[dict[str, Any]]] = {}
    for name in strategies:
        own_rng = np.random.default_rng(_own_stream(seed, name))
        own = [s for s in spaces if s.strategy == name]
        out[name] = [{**shared[t], **{s.key: s.draw(own_rng) for s in own}} for t in range(trials)]
    return out


def _sobol(dims: int, n: int, entropy: list[int]) -> np.ndarray:
    from scipy.stats import qmc

    if dims == 0:
        return np.zeros((n, 0))
    sampler = qmc.Sobol(d=dims, scramble=True, seed=np.random.default_rng(entropy))
    with warnings.catch_warnings():  # n need not be a power of two for a tuning budget
        warnings.simplefilter("ignore", UserWarning)
        return np.asarray(sampler.random(n))


def sobol_settings(
    strategies: Sequence[str], spaces: Sequence[Space], trials: int, seed: int
) -> dict[str, list[dict[str, Any]]]:
    """``trials`` quasi-random (scrambled Sobol) settings per strategy; shared keys take
    the same values for every strategy, a strategy's own keys follow a sequence of their own."""
    common = [s for s in spaces if not s.strategy]
    points = _sobol(len(common), trials, [seed, 0])
    shared = [{s.key: s.at(float(u)) for s, u in zip(common, row, strict=True)} for row in points]
    out: dict[str, list[dict[str, Any]]] = {}
    for name in strategies:
        own = [s for s in spaces if s.strategy == name]
        mine = _sobol(len(own), trials, _own_stream(seed, name))
        out[name] = [
            {**shared[t], **{s.key: s.at(float(u)) for s, u in zip(own, mine[t], strict=True)}}
            for t in range(trials)
        ]
    return out


def tag_of(setting: dict[str, Any]) -> str:
    """A setting as a run-directory level: ``strategy.mu=0.01,train.lr=0.05``."""
    return ",".join(f"{k}={v}" for k, v in sorted(setting.items()))
