"""MASHA1 / MASHA2: Beznosikov, Richtárik, Diskin, Ryabinin, Gasnikov, "Distributed Methods
with Compressed Communication for Solving Variational Inequalities, with Theoretical
Guarantees", NeurIPS 2022, arXiv 2110.03313 — and two baselines (extragradient, naive
compressed extragradient).  Algorithm boxes follow ``shared/specs/masha.md`` (sections 3-5),
which reconstructs them from the paper's summary (no official code exists).

What runs where.  Every device keeps ``z^k``, the reference point ``w^k`` and ``F(w^k)``
(plus MASHA2's error memory ``e_m``) in its client state (``clients.masha``); these only
change through broadcasts, so the server keeps bit-identical mirrors (it applies the same
pure functions below to the same decoded payloads) and logs ``masha/rel_dist`` from them.
One round = one message each way:

* **step round** (sampled devices): ``zbar = tau z + (1 - tau) w``,
  ``z_half = prox(zbar - gamma F(w))``, device ``m`` sends the *compressed operator
  difference* ``Q(F_m(z_half) - F_m(w))`` (MASHA1) or ``C(e_m + gamma (F_m(z_half) - F_m(w)))``
  with error feedback (MASHA2) through ``channel.up``.  The server averages what it
  decoded over the participants and broadcasts it through ``channel.down`` (re-compressed
  when the downlink is lossy = bidirectional compression; MASHA2's server keeps its own
  error ``e`` then), encoded once so every device decodes the same vector.  Then it draws
  ``b_k ~ Bernoulli(1 - tau)``.
* **sync round** (after ``b_k = 1``, every device): ``w = z^{k+1}``; devices send the dense
  ``F_m(w)``, the server broadcasts the dense ``F(w)`` in the next round's message.  The
  first round is a sync round (``z^0 = w^0``).

The downlink of round ``r`` carries the result of round ``r - 1`` (the broadcast and
``b``, or ``F(w)``), so an iteration costs one round, or two when ``b_k = 1`` (spec section
9).  Only the devices that the scenario's participation selects are messaged (the grid
the wrapper hands over lists exactly them); a device that missed a broadcast (not
selected, dropped out, its reply lost) receives the server's mirrors of ``z, w, F(w),
z_half`` instead, dense float64 and counted on the downlink, when it is next selected.

Choices where the spec is unsure (see ``docs/results/masha.md``):

* MASHA2 puts ``gamma`` inside the compressed quantity (standard error-feedback form,
  spec section 4) and has a server error only when the downlink is lossy.
* Defaults: ``tau = 1 - 1/beta`` with ``beta = d / k`` of the uplink (``1 / ratio``; 4 for
  int8 QSGD, 1 for lossless channels); MASHA1 ``gamma = c sqrt(1 - tau) / L_hat`` with
  ``L_hat^2 = q_serv (L^2 + (q_dev - 1)/M mean_m L_m^2)``; MASHA2
  ``gamma = c min(sqrt(1 - tau), 1/(delta_dev delta_serv)) / max_m L_m``; EG and naive EG
  ``gamma = c / L``.  ``L`` and ``L_m`` are known for the bilinear problem only; the
  adversarial problem needs ``strategy.gamma`` set.
* Partial participation: the selected devices, in step and sync rounds alike; every
  average is over the devices that replied.  Deviation: spec section 5 refreshes the
  reference point on every device, so with partial participation fedsim's ``F(w)`` is
  the mean over the devices of that sync round, an estimate of the full operator.
* MASHA2 is analysed without constraints; on the adversarial problem fedsim still
  projects ``delta`` (deviation).
* Naive compressed EG: ``z_half = prox(z - gamma Q(F(z)))``, ``z+ = prox(z - gamma Q(F(z_half)))``,
  each a compressed round trip (2 rounds per iteration), no reference point.
* Uncompressed EG is MASHA1 with ``tau = 0`` (``b_k = 1`` always): its step round sends
  ``F_m(z_half) - F_m(z)`` and its sync round ``F_m(z)``, i.e. exactly extragradient's two
  dense round trips.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord
from flwr.serverapp import Grid

from fedsim.algorithms.channels import IdentityChannel, Link, build_links
from fedsim.algorithms.payloads import TrainRes
from fedsim.algorithms.strategy import ServerContext, Strategy, messages_to
from fedsim.errors import ConfigError
from fedsim.records import arrays_from_numpy, numpy_from_arrays
from fedsim.seeding import derive_rng
from protocols.masha import (
    MIRRORS,
    VARIANTS,
    MashaConfig,
    MashaIns,
)
from protocols.masha_math import (
    anchor,
    broadcast_link,
    default_gamma,
    default_tau,
    derived_gamma,
    masha1_update,
    masha2_update,
)

log = logging.getLogger(__name__)

Prox = Callable[[np.ndarray], np.ndarray]

# --------------------------------------------------------------------------- server


@dataclass
class ViState:
    """The server's mirror of what every device holds (float64 flat vectors)."""

    z: np.ndarray
    w: np.ndarray
    fw: np.ndarray
    zh: np.ndarray  # naive EG: the extrapolated point
    e: np.ndarray  # MASHA2: server error (bidirectional only)
    phase: str = "sync"
    pending_apply: str = "none"
    pending_set_w: bool = False
    pending_broadcast: ArrayRecord | None = None
    pending_fw: ArrayRecord | None = None
    iterations: int = 0
    syncs: int = 0
    extras: dict[str, float] = field(default_factory=dict)
    #: devices whose copies lag the mirrors (they missed a broadcast): sent RESYNC next
    stale: set[int] = field(default_factory=set)
    #: devices messaged in the round being trained, until its replies are aggregated
    reached: list[int] = field(default_factory=list)


class Masha(Strategy):
    """MASHA1 / MASHA2 / EG / naive compressed EG on a :mod:`protocols.masha_problems` problem."""

    has_global_model = False

    def __init__(self, ctx: ServerContext) -> None:
        super().__init__(ctx)
        from protocols.masha_task import server_problem

        cfg = ctx.cfg
        scfg = cfg.strategy
        assert isinstance(scfg, MashaConfig)
        self.variant = VARIANTS[scfg.name]
        self.problem = server_problem(cfg)
        self.dense = IdentityChannel()
        # MASHA is a compression method: it applies the run's links itself
        # (AlgorithmSpec.native_channels), the wrappers pass its messages through
        links = build_links(cfg)
        self.up, self.down = links.up, links.down
        self.stats: dict[str, float] = {}
        self.tau = 0.0 if scfg.name == "eg" else (scfg.tau if scfg.tau >= 0 else default_tau(cfg))
        if self.variant == "naive":
            self.tau = 0.0
        if scfg.gamma > 0:
            self.gamma = float(scfg.gamma)
        else:
            lips = self.problem.lipschitz()
            if lips is None:
                raise ConfigError(
                    f"strategy.gamma: must be > 0 for scenario.task={cfg.scenario.task} "
                    "(no Lipschitz constant to derive it from)"
                )
            args = (self.variant, cfg, self.tau, lips[0], lips[1], scfg.gamma_c)
            self.gamma = derived_gamma(*args)
            if self.gamma < default_gamma(*args):
                log.info("%s: derived gamma capped at 1/L = %.4g", scfg.name, self.gamma)
        z0 = self.problem.z0()
        zeros = np.zeros_like(z0)
        self.st = ViState(z0.copy(), z0.copy(), zeros.copy(), z0.copy(), zeros.copy())
        if self.variant == "naive":
            self.st.phase = "g"
        self.z0 = z0
        log.info("%s: gamma=%.4g tau=%.4g", scfg.name, self.gamma, self.tau)

    # ------------------------------------------------------------------ seams
    def initial_arrays(self) -> ArrayRecord:
        return self._arrays()

    def _arrays(self) -> ArrayRecord:
        return self.dense.encode(self.problem.layout.split(self.st.z), np.random.default_rng(0))

    def state_dict(self) -> dict[str, np.ndarray]:
        """The vectors and the phase machine (pending broadcasts included), so that a
        resumed run continues exactly where the checkpoint was taken."""
        s = self.st
        out: dict[str, np.ndarray] = {"z": s.z, "w": s.w, "fw": s.fw, "zh": s.zh, "e": s.e}
        out["phase"] = np.array(s.phase)
        out["pending_apply"] = np.array(s.pending_apply)
        out["pending_set_w"] = np.array(s.pending_set_w)
        out["counters"] = np.array([s.iterations, s.syncs], dtype=np.int64)
        out["extras_keys"] = np.array(sorted(s.extras), dtype=str)
        out["extras_values"] = np.array([s.extras[k] for k in sorted(s.extras)], dtype=np.float64)
        for tag, rec in (("pending_broadcast", s.pending_broadcast), ("pending_fw", s.pending_fw)):
            if rec is not None:
                for key, value in numpy_from_arrays(rec).items():
                    out[f"{tag}/{key}"] = np.array(value)
        out["stale"] = np.array(sorted(s.stale | set(s.reached)), dtype=np.int64)
        return out

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        s = self.st
        for k in ("z", "w", "fw", "zh", "e"):
            setattr(s, k, np.asarray(state[k], dtype=np.float64))
        if "phase" not in state:  # a checkpoint with the vectors only: restart with a sync
            return
        s.phase = str(state["phase"])
        s.pending_apply = str(state["pending_apply"])
        s.pending_set_w = bool(state["pending_set_w"])
        s.iterations, s.syncs = (int(v) for v in state["counters"])
        s.extras = dict(
            zip(state["extras_keys"].tolist(), state["extras_values"].tolist(), strict=True)
        )
        for tag in ("pending_broadcast", "pending_fw"):
            part = {k.split("/", 1)[1]: v for k, v in state.items() if k.startswith(tag + "/")}
            setattr(s, tag, arrays_from_numpy(part) if part else None)
        # before "stale" was kept every device received every broadcast: none lags
        s.stale = set(state["stale"].tolist()) if "stale" in state else set()
        s.reached = []

    # ------------------------------------------------------------------ train
    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        s = self.st
        s.stale.update(s.reached)  # a round whose replies were never aggregated: unknown
        partition_of = self.ctx.partition_of
        s.reached = sorted(partition_of[node] for node in grid.get_node_ids())
        self.stats = {"masha/sync_round": float(s.phase == "sync")}
        current = MashaIns(
            server_round,
            s.phase,
            True,
            s.pending_apply,
            s.pending_set_w,
            self.gamma,
            self.tau,
            s.pending_broadcast,
            s.pending_fw,
        )
        lagging = (
            replace(current, apply="none", set_w=False, broadcast=None, fw=None,
                    resync=self._mirrors())
            if s.stale.intersection(s.reached)
            else current
        )  # fmt: skip
        out: list[Message] = []
        for pid in s.reached:
            ins = lagging if pid in s.stale else current
            out.extend(
                messages_to(ins.to_ins().to_record(), [self.ctx.node_of[pid]], MessageType.TRAIN)
            )
        return out

    def _mirrors(self) -> ArrayRecord:
        """What a device holds once it applied every broadcast so far (float64)."""
        return arrays_from_numpy({k: np.asarray(getattr(self.st, k)) for k in MIRRORS})

    def _decoded(
        self, replies: Iterable[Message], link: Link | IdentityChannel
    ) -> list[np.ndarray]:
        layout = self.problem.layout
        like = layout.like()
        partition_of = self.ctx.partition_of
        out: list[tuple[int, np.ndarray]] = []
        for msg in replies:
            if msg.has_error():
                log.warning("masha: client %s failed", partition_of.get(msg.metadata.src_node_id))
                continue
            res = TrainRes.from_record(msg.content)
            if res.num_examples == 0:
                continue  # not sampled this round
            vec = layout.join(link.decode(res.arrays, like))
            out.append((partition_of[msg.metadata.src_node_id], vec))
        out.sort(key=lambda item: item[0])
        return [v for _, v in out]

    def _broadcast(self, a: np.ndarray, server_round: int) -> tuple[ArrayRecord, np.ndarray]:
        """Encode the aggregate once on the downlink; return (payload, what devices decode)."""
        layout = self.problem.layout
        down = broadcast_link(self.down)
        payload = down.encode(layout.split(a), server_round)
        return payload, layout.join(down.decode(payload, layout.like()))

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        s = self.st
        replies = list(replies)
        prox = self.problem.prox
        if s.phase == "sync":
            vecs = self._decoded(replies, self.dense)
            if not vecs:
                raise RuntimeError(f"round {server_round}: no device answered the sync round")
            fw = np.mean(vecs, axis=0)
            layout = self.problem.layout
            s.pending_fw = self.dense.encode(layout.split(fw), np.random.default_rng(0))
            s.fw = layout.join(self.dense.decode(s.pending_fw, layout.like()))
            s.pending_broadcast, s.pending_apply, s.pending_set_w = None, "none", False
            s.syncs += 1
            s.phase = "step"
        else:
            vecs = self._decoded(replies, self.up)
            a = np.mean(vecs, axis=0) if vecs else np.zeros_like(s.z)
            if self.variant == "masha2" and not self.down.lossless:
                u = s.e + a
                payload, c = self._broadcast(u, server_round)
                s.e = u - c
            else:
                payload, c = self._broadcast(a, server_round)
            s.pending_fw = None
            s.pending_broadcast = payload
            if self.variant == "naive":
                if s.phase == "g":
                    s.zh = prox(s.z - self.gamma * c)
                    s.pending_apply, s.phase = "g", "h"
                else:
                    s.z = prox(s.z - self.gamma * c)
                    s.pending_apply, s.phase = "h", "g"
                    s.iterations += 1
                s.pending_set_w = False
            else:
                zbar = anchor(s.z, s.w, self.tau)
                update = masha1_update if self.variant == "masha1" else masha2_update
                s.z = update(zbar, s.fw, c, self.gamma, prox)
                s.iterations += 1
                rng = derive_rng(self.ctx.cfg.seed, "masha/sync", server_round)
                b = bool(rng.random() < 1.0 - self.tau)
                s.pending_apply, s.pending_set_w = "step", b
                if b:
                    s.w = s.z.copy()
                    s.phase = "sync"
        partition_of = self.ctx.partition_of
        replied = {partition_of[m.metadata.src_node_id] for m in replies if not m.has_error()}
        s.stale = set(self.ctx.node_of) - replied  # the others missed this round's outcome
        s.reached = []
        return self._arrays(), MetricRecord({"num-examples": float(len(vecs))})

    def round_stats(self) -> dict[str, float]:
        return dict(self.stats)

    # ------------------------------------------------------------------ metrics
    def round_metrics(self, server_round: int, arrays: ArrayRecord) -> dict[str, float]:
        out = {
            "masha/iterations": float(self.st.iterations),
            "masha/syncs": float(self.st.syncs),
            "masha/gamma": self.gamma,
            "masha/tau": self.tau,
        }
        every = self.ctx.cfg.eval_every
        if server_round % every == 0 or server_round == self.ctx.cfg.rounds:
            out.update(self.problem.metrics(self.st.z, self.z0))
        return out

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return []  # the server evaluates (round_metrics); devices only answer operators


class Masha1(Masha):
    """MASHA1: unbiased compression of operator differences (use ``channel.up=randk``)."""


class Masha2(Masha):
    """MASHA2: contractive compression + error feedback (use ``channel.up=topk``)."""


class Extragradient(Masha):
    """Distributed extragradient (Korpelevich 1976) = MASHA1 with ``tau = 0``."""


class NaiveCompressedEG(Masha):
    """Extragradient that compresses ``F_m(z)`` and ``F_m(z_half)`` directly."""
