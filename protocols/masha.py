"""MASHA's wire format and options, shared by ``strategies.masha`` (server) and
``clients.masha`` (devices): the four methods' configs, the message keys and the
instruction payload.  Import-light: no Flower at import.  The update maths both sides
apply are in :mod:`protocols.masha_math`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from fedsim.config import StrategyConfig

if TYPE_CHECKING:
    from flwr.app import ArrayRecord

    from fedsim.algorithms.payloads import Scalar, TrainIns

# --------------------------------------------------------------------------- configs


@dataclass
class MashaConfig(StrategyConfig):
    """MASHA1 (unbiased compressors, e.g. ``channel.up=randk``)."""

    name: str = "masha1"
    solves_problems: ClassVar[bool] = True  # it solves scenario.problem (no backbone)
    gamma: float = 0.0  # step size; 0 = the default of the module docstring (bilinear only)
    # c in the default step size: tuned values of docs/results/masha.md that reach 1e-6 at
    # 5% on scenario masha_bilinear (the theory's c = 0.5 is far too conservative)
    gamma_c: float = 2.0
    tau: float = -1.0  # P(no sync) per iteration; < 0 = 1 - 1/beta of the uplink channel
    epsilon: float = 0.3  # adversarial problem: L-inf radius of the shared perturbation
    batch_size: int = 32  # adversarial problem: mini-batch of a step round (0 = full data)


@dataclass
class Masha2Config(MashaConfig):
    """MASHA2 (contractive compressors + error feedback, e.g. ``channel.up=topk``)."""

    name: str = "masha2"
    gamma_c: float = 8.0


@dataclass
class ExtragradientConfig(MashaConfig):
    """Distributed extragradient (MASHA1 with ``tau = 0``); dense with the identity channel."""

    name: str = "eg"
    tau: float = 0.0
    gamma_c: float = 1.0


@dataclass
class NaiveEGConfig(MashaConfig):
    """Extragradient that compresses the operators themselves (no reference point)."""

    name: str = "naive_eg"
    gamma_c: float = 0.5


VARIANTS = {"masha1": "masha1", "masha2": "masha2", "eg": "masha1", "naive_eg": "naive"}

# --------------------------------------------------------------------------- wire payload

PHASE_KEY = "masha-phase"  # what the device computes: sync | step | g | h
COMPUTE_KEY = "masha-compute"  # this device is sampled in a step round
APPLY_KEY = "masha-apply"  # how to apply the broadcast: none | step | g | h
SETW_KEY = "masha-set-w"  # b of the previous step round: w <- z
GAMMA_KEY = "masha-gamma"
TAU_KEY = "masha-tau"
BCAST = "masha.broadcast"  # the previous step round's aggregate (channel.down payload)
FW = "masha.fw"  # dense F(w) after a sync round
RESYNC = "masha.resync"  # the server's mirrors, float64, for a device that missed a round
MIRRORS = ("z", "w", "fw", "zh")  # what RESYNC holds: every vector the broadcasts set


@dataclass(frozen=True)
class MashaIns:
    """Server -> device: the previous round's outcome and this round's task.

    ``resync`` (instead of an outcome to apply) carries the server's mirrors of
    :data:`MIRRORS` to a device that missed a broadcast (it was not selected, dropped
    out, or its reply was lost): it takes them as they are, then computes.
    """

    server_round: int
    phase: str
    compute: bool
    apply: str
    set_w: bool
    gamma: float
    tau: float
    broadcast: ArrayRecord | None = None
    fw: ArrayRecord | None = None
    resync: ArrayRecord | None = None

    def to_ins(self) -> TrainIns:
        from flwr.app import ArrayRecord

        from fedsim.algorithms.payloads import TrainIns

        config: dict[str, Scalar] = {
            PHASE_KEY: self.phase,
            COMPUTE_KEY: self.compute,
            APPLY_KEY: self.apply,
            SETW_KEY: self.set_w,
            GAMMA_KEY: self.gamma,
            TAU_KEY: self.tau,
        }
        extra: dict[str, ArrayRecord] = {}
        if self.broadcast is not None:
            extra[BCAST] = self.broadcast
        if self.fw is not None:
            extra[FW] = self.fw
        if self.resync is not None:
            extra[RESYNC] = self.resync
        return TrainIns(ArrayRecord(), self.server_round, config, extra)

    @classmethod
    def from_ins(cls, ins: TrainIns) -> MashaIns:
        c = ins.config
        return cls(
            ins.server_round,
            str(c[PHASE_KEY]),
            bool(c[COMPUTE_KEY]),
            str(c[APPLY_KEY]),
            bool(c[SETW_KEY]),
            float(c[GAMMA_KEY]),
            float(c[TAU_KEY]),
            ins.extra.get(BCAST),
            ins.extra.get(FW),
            ins.extra.get(RESYNC),
        )
