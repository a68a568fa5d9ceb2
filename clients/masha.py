"""MASHA1 / MASHA2 devices (Beznosikov et al., NeurIPS 2022, arXiv 2110.03313), and the
devices of the extragradient baselines; the algorithm and the round protocol are described
in :mod:`strategies.masha`, whose pure functions both sides apply.

A device holds, under ``context.state["fedsim.masha"]`` (one float64 array ``vectors``
whose rows are, in this order):

* ``z`` — the iterate ``z^k``; ``w`` — the reference point; ``fw`` — ``F(w)`` as broadcast;
* ``e`` — MASHA2's error-feedback memory ``e_m`` (unchanged in rounds the device sits out);
* ``zh`` — naive EG's extrapolated point.

The device decodes the downlink broadcast, updates its copies exactly as the server's
mirror does (after a round it sat out, it takes the server's mirrors instead), computes
its operator (the same mini-batch at ``z_half`` and ``w``), and encodes its reply on the
uplink: through ``channel.up`` in step rounds, dense float32 in sync rounds.
"""

from __future__ import annotations

import numpy as np
from flwr.app import ArrayRecord

from fedsim.algorithms.channels import IdentityChannel
from fedsim.algorithms.client import Client
from fedsim.algorithms.payloads import EvalIns, EvalRes, TrainIns, TrainRes
from fedsim.records import array_records, arrays_from_numpy, numpy_from_arrays
from fedsim.seeding import torch_generator
from protocols.masha import VARIANTS, MashaIns
from protocols.masha_math import (
    anchor,
    broadcast_link,
    error_feedback,
    half_step,
    masha1_update,
    masha2_update,
)
from protocols.masha_task import VIProblem, client_problem

STATE_KEY = "fedsim.masha"
VECTORS = ("z", "w", "fw", "e", "zh")
Vectors = dict[str, np.ndarray]


class MashaClient(Client):
    """A device of MASHA1/MASHA2/EG/naive EG; no local training loop, one operator call."""

    def _vectors(self, problem: VIProblem) -> dict[str, np.ndarray]:
        if STATE_KEY in array_records(self.state):
            stacked = array_records(self.state)[STATE_KEY]["vectors"].numpy()
            return {k: stacked[i].copy() for i, k in enumerate(VECTORS)}
        z0 = problem.z0()
        zeros = np.zeros_like(z0)
        return {"z": z0, "w": z0.copy(), "fw": zeros, "e": zeros.copy(), "zh": z0.copy()}

    def _save(self, v: dict[str, np.ndarray]) -> None:
        # one stacked array: a single (de)serialisation per message instead of five
        self.state[STATE_KEY] = arrays_from_numpy({"vectors": np.stack([v[k] for k in VECTORS])})

    def fit(self, ins: TrainIns) -> TrainRes:
        msg = MashaIns.from_ins(ins)
        variant = VARIANTS[self.cfg.strategy.name]
        with self.env.lock:
            problem = client_problem(self.cfg, self.env)
            v = self._vectors(problem)
            self._apply(msg, variant, problem, v)
            payload, n = self._compute(msg, variant, problem, v)
            self._save(v)
        return TrainRes(payload, n, {})

    # ---------------------------------------------------------------- downlink
    def _apply(self, msg: MashaIns, variant: str, problem: VIProblem, v: Vectors) -> None:
        layout, prox = problem.layout, problem.prox
        if msg.resync is not None:  # missed a broadcast: the server's mirrors, as they are
            v.update({k: a.copy() for k, a in numpy_from_arrays(msg.resync).items()})
            return
        if msg.fw is not None:
            v["fw"] = layout.join(IdentityChannel().decode(msg.fw, layout.like()))
        if msg.broadcast is None or msg.apply == "none":
            return
        down = broadcast_link(self.env.links.down)
        c = layout.join(down.decode(msg.broadcast, layout.like()))
        if msg.apply == "g":  # naive EG: extrapolate with the compressed F(z)
            v["zh"] = prox(v["z"] - msg.gamma * c)
        elif msg.apply == "h":  # naive EG: update with the compressed F(z_half)
            v["z"] = prox(v["z"] - msg.gamma * c)
        else:
            zbar = anchor(v["z"], v["w"], msg.tau)
            update = masha1_update if variant == "masha1" else masha2_update
            v["z"] = update(zbar, v["fw"], c, msg.gamma, prox)
            if msg.set_w:
                v["w"] = v["z"].copy()

    # ---------------------------------------------------------------- uplink
    def _compute(
        self,
        msg: MashaIns,
        variant: str,
        problem: VIProblem,
        v: Vectors,
    ) -> tuple[ArrayRecord, int]:
        layout = problem.layout
        if msg.phase == "sync":
            fw_m = problem.full(self.pid, v["w"])
            return IdentityChannel().encode(layout.split(fw_m), np.random.default_rng(0)), 1
        if not msg.compute:
            return ArrayRecord(), 0
        up = self.env.links.up
        gen = torch_generator(self.cfg.seed, "masha/batch", msg.server_round, self.pid)
        if variant == "naive":
            point = v["z"] if msg.phase == "g" else v["zh"]
            op = problem.pair(self.pid, point, point, gen)[0]
            return up.encode(layout.split(op), msg.server_round, self.pid), 1
        zbar = anchor(v["z"], v["w"], msg.tau)
        z_half = half_step(zbar, v["fw"], msg.gamma, problem.prox)
        f_half, f_w = problem.pair(self.pid, z_half, v["w"], gen)
        delta = f_half - f_w
        if variant == "masha1":
            return up.encode(layout.split(delta), msg.server_round, self.pid), 1
        sent: list[ArrayRecord] = []

        def compress(u: np.ndarray) -> np.ndarray:
            payload = up.encode(layout.split(u), msg.server_round, self.pid)
            sent.append(payload)
            return layout.join(up.decode(payload, layout.like()))

        _, v["e"] = error_feedback(v["e"], msg.gamma * delta, compress)
        return sent[0], 1

    def evaluate(self, ins: EvalIns) -> EvalRes:
        return EvalRes(0, {"acc": float("nan"), "loss": float("nan"), "domain": 0.0})
