"""Which clients take part in a round: availability, sampling, dropout and stragglers.

:class:`ParticipationSampler` turns a :class:`~fedsim.config.ParticipationConfig` into one
:class:`RoundPlan` per round.  A plan depends only on ``(seed, round)``: every random
decision draws from its own stream ``np.random.default_rng([seed, round, salt])``, so plans
can be made in any order, by any process, and changing one knob (say ``dropout``) does not
reshuffle who is selected.  The straggler set and the per-client diurnal phases are drawn
once from ``[seed, salt]``.

Model (after the system-heterogeneity set-ups of FedProx, Li et al., "Federated
Optimization in Heterogeneous Networks", arXiv:1812.06127, and the diurnal availability
observed in production federations, Bonawitz et al., "Towards Federated Learning at Scale:
System Design", arXiv:1902.01046):

availability
    Client ``i`` is reachable in round ``t`` with probability ``p_i(t)``, independently.
    Without ``diurnal_period``: ``p_i(t) = availability``.  With period ``P > 0``::

        p_i(t) = a + A * cos(2 * pi * t / P + phi_i),   A = min(a, 1 - a)

    with ``a = availability`` and a per-client phase ``phi_i ~ U[0, 2 pi)`` (its "time
    zone").  The mean over a period is ``a`` and ``p_i`` stays in ``[0, 1]``; with
    ``a = 1`` there is no cycle (everyone is always reachable), with ``a = 0.5`` it swings
    from 0 to 1.
selection
    ``clients_per_round`` if > 0 else ``max(1, round(fraction * num_clients))``, raised to
    ``min_clients``, capped by the number available; drawn uniformly without replacement
    from the available clients.
dropout
    Each selected client independently drops out mid-round with probability ``dropout``.
stragglers
    A fixed set of ``round(straggler_fraction * num_clients)`` clients has speed factor
    ``straggler_slowdown``; everyone else has 1.0.
simulated time and deadline
    ``time = speed * (1 + jitter)`` with ``jitter ~ U[0, 0.1)`` drawn per selected client
    from the round's stream (:data:`JITTER`).  With ``deadline > 0`` a selected client that
    did not drop out is *late* when ``time > deadline``: a normal client needs 1 to 1.1
    time units, a straggler ``straggler_slowdown`` times as long.
skip
    The round is skipped when fewer than ``min_clients`` selected clients can report
    (neither dropped nor late); ``reason`` says why.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import numpy.typing as npt

from fedsim.config import ParticipationConfig
from fedsim.errors import ConfigError

#: Width of the uniform jitter on a client's simulated round time.
JITTER = 0.1

# Stream salts: one independent random stream per decision.
_AVAILABLE, _SELECT, _DROPOUT, _JITTER, _STRAGGLERS, _PHASE = range(6)

IdArray = npt.NDArray[np.int64]


def validate_participation(cfg: ParticipationConfig, num_clients: int) -> None:
    """Check a participation config; raise :class:`ConfigError` naming the key path.

    Raises
    ------
    ConfigError
        E.g. ``participation.fraction: must be in (0, 1], got 1.5``.
    """
    if num_clients < 1:
        raise ConfigError(f"num_clients: must be >= 1, got {num_clients}")
    if not 0 < cfg.fraction <= 1:
        raise ConfigError(f"participation.fraction: must be in (0, 1], got {cfg.fraction}")
    if not 0 <= cfg.clients_per_round <= num_clients:
        raise ConfigError(
            f"participation.clients_per_round: must be in [0, num_clients={num_clients}] "
            f"(0 = use fraction), got {cfg.clients_per_round}"
        )
    if not 1 <= cfg.min_clients <= num_clients:
        raise ConfigError(
            f"participation.min_clients: must be in [1, num_clients={num_clients}], "
            f"got {cfg.min_clients}"
        )
    if not 0 < cfg.availability <= 1:
        raise ConfigError(
            f"participation.availability: must be a probability in (0, 1], got {cfg.availability}"
        )
    if cfg.diurnal_period < 0:
        raise ConfigError(
            f"participation.diurnal_period: must be >= 0 (0 = no cycle), got {cfg.diurnal_period}"
        )
    if not 0 <= cfg.dropout < 1:
        raise ConfigError(
            f"participation.dropout: must be a probability in [0, 1), got {cfg.dropout}"
        )
    if not 0 <= cfg.straggler_fraction <= 1:
        raise ConfigError(
            f"participation.straggler_fraction: must be in [0, 1], got {cfg.straggler_fraction}"
        )
    if not 1 <= cfg.straggler_slowdown < np.inf:
        raise ConfigError(
            f"participation.straggler_slowdown: must be a finite factor >= 1, "
            f"got {cfg.straggler_slowdown}"
        )
    if not (cfg.deadline == 0 or 1 + JITTER <= cfg.deadline < np.inf):
        raise ConfigError(
            f"participation.deadline: must be 0 (no deadline) or >= {1 + JITTER} (a normal "
            f"client needs 1 to {1 + JITTER} time units), got {cfg.deadline}"
        )


@dataclass(frozen=True, eq=False)
class RoundPlan:
    """Who takes part in one round; all id arrays are sorted, read-only ``int64``.

    Attributes
    ----------
    round
        The round number.
    available
        Clients reachable this round.
    selected
        Clients asked to train (a subset of ``available``).
    dropped
        Selected clients that drop out mid-round and never reply.
    speed
        Slow-down factor of each selected client (aligned with ``selected``): 1.0 or
        ``straggler_slowdown``.
    time
        Simulated round time of each selected client, ``speed * (1 + jitter)``.
    late
        Selected, not dropped clients with ``time > deadline`` (empty without a deadline).
    skip
        True when fewer than ``min_clients`` selected clients can report.
    reason
        Why the round is skipped ("" otherwise).
    """

    round: int
    available: IdArray
    selected: IdArray
    dropped: IdArray
    speed: npt.NDArray[np.float64]
    time: npt.NDArray[np.float64]
    late: IdArray
    skip: bool
    reason: str = ""

    @property
    def reporting(self) -> IdArray:
        """Selected clients expected to reply in time (neither dropped nor late)."""
        gone = np.union1d(self.dropped, self.late)
        return self.selected[~np.isin(self.selected, gone)]

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RoundPlan):
            return NotImplemented
        return all(
            np.array_equal(getattr(self, f.name), getattr(other, f.name)) for f in fields(self)
        )

    __hash__ = None  # type: ignore[assignment]  # mutable-looking arrays: not hashable


def _frozen(a: np.ndarray) -> np.ndarray:
    a.setflags(write=False)
    return a


class ParticipationSampler:
    """Deterministic per-round participation plans.

    Parameters
    ----------
    cfg
        The participation section of the scenario (validated here).
    num_clients
        Number of clients in the federation.
    seed
        Run seed (>= 0); with the round number it fixes every plan.

    Notes
    -----
    ``plan`` costs O(num_clients) vectorised work when availability is random and
    O(selected) otherwise (every client available: ``available`` is one read-only
    ``arange`` built once and shared by every plan, and the selection draws indices
    without materialising a population); it keeps no state between calls.
    """

    def __init__(self, cfg: ParticipationConfig, num_clients: int, seed: int) -> None:
        validate_participation(cfg, num_clients)
        if seed < 0:
            raise ConfigError(f"seed: must be >= 0, got {seed}")
        self.cfg = cfg
        self.num_clients = num_clients
        self.seed = seed
        n_slow = round(cfg.straggler_fraction * num_clients)
        slow = np.zeros(num_clients, dtype=bool)
        if n_slow:
            pick = np.random.default_rng([seed, _STRAGGLERS]).choice(
                num_clients, n_slow, replace=False
            )
            slow[pick] = True
        self._slow = _frozen(slow)
        self._everyone: IdArray | None = None  # arange(num_clients), built on first use
        self._phase: npt.NDArray[np.float64] | None = None
        if cfg.diurnal_period > 0 and cfg.availability < 1:
            phase_rng = np.random.default_rng([seed, _PHASE])
            self._phase = _frozen(phase_rng.uniform(0.0, 2 * np.pi, num_clients))

    @property
    def stragglers(self) -> IdArray:
        """The fixed, sorted ids of slow clients."""
        return np.flatnonzero(self._slow).astype(np.int64)

    @property
    def target(self) -> int:
        """Clients to select when enough are available."""
        cfg = self.cfg
        n = cfg.clients_per_round or max(1, round(cfg.fraction * self.num_clients))
        return max(n, cfg.min_clients)

    def availability(self, round: int) -> npt.NDArray[np.float64]:
        """Per-client availability probability ``p_i(round)`` (see the module docstring)."""
        a = self.cfg.availability
        if self._phase is None:
            return np.full(self.num_clients, a)
        amp = min(a, 1.0 - a)
        angle = 2 * np.pi * round / self.cfg.diurnal_period + self._phase
        return np.clip(a + amp * np.cos(angle), 0.0, 1.0)

    def _rng(self, round: int, salt: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, round, salt])

    def plan(self, round: int) -> RoundPlan:
        """The participation plan of ``round`` (>= 0); a pure function of (seed, round)."""
        if round < 0:
            raise ValueError(f"round must be >= 0, got {round}")
        cfg = self.cfg
        everyone = cfg.availability >= 1
        if everyone:
            if self._everyone is None:
                self._everyone = _frozen(np.arange(self.num_clients, dtype=np.int64))
            available = self._everyone
        else:
            draw = self._rng(round, _AVAILABLE).random(self.num_clients)
            available = np.flatnonzero(draw < self.availability(round)).astype(np.int64)

        n_sel = min(self.target, available.size)
        if n_sel == available.size:
            selected = available.copy()
        else:
            # choice(n, k) draws the same indices as choice(arange(n), k), in O(k)
            pop: IdArray | int = available.size if everyone else available
            selected = np.sort(self._rng(round, _SELECT).choice(pop, n_sel, replace=False))

        if cfg.dropout > 0:
            gone = self._rng(round, _DROPOUT).random(n_sel) < cfg.dropout
        else:
            gone = np.zeros(n_sel, dtype=bool)
        speed = np.where(self._slow[selected], cfg.straggler_slowdown, 1.0)
        time = speed * (1.0 + JITTER * self._rng(round, _JITTER).random(n_sel))
        late = ~gone & (time > cfg.deadline) if cfg.deadline > 0 else np.zeros(n_sel, bool)

        can_report = n_sel - int(gone.sum()) - int(late.sum())
        reason = ""
        if available.size < cfg.min_clients:
            reason = f"only {available.size} clients available, min_clients={cfg.min_clients}"
        elif can_report < cfg.min_clients:
            reason = (
                f"only {can_report} of {n_sel} selected clients can report "
                f"({int(gone.sum())} dropped, {int(late.sum())} late), "
                f"min_clients={cfg.min_clients}"
            )
        return RoundPlan(
            round=round,
            available=_frozen(available),
            selected=_frozen(selected),
            dropped=_frozen(selected[gone]),
            speed=_frozen(speed),
            time=_frozen(time),
            late=_frozen(selected[late]),
            skip=bool(reason),
            reason=reason,
        )
