"""The pure maths of MASHA1 / MASHA2 (Beznosikov et al., NeurIPS 2022, arXiv 2110.03313)
shared by the server (``strategies.masha``) and the devices (``clients.masha``): the update
steps, error feedback, the theory step sizes, the predicted uplink ratio against
extragradient, and the message-free replay of the round protocol (plus its vectorised,
statistically equivalent variant for large sweeps).  See ``strategies.masha`` for the
algorithm and the protocol.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np

from fedsim.algorithms.channels import Channel, IdentityChannel, Link, SparseChannel, make_channel
from fedsim.config import ChannelSideConfig, RunConfig
from fedsim.errors import ConfigError
from fedsim.seeding import derive_rng

Prox = Callable[[np.ndarray], np.ndarray]

# --------------------------------------------------------------------------- pure maths


def anchor(z: np.ndarray, w: np.ndarray, tau: float) -> np.ndarray:
    """``zbar = tau z + (1 - tau) w``."""
    return tau * z + (1.0 - tau) * w


def half_step(zbar: np.ndarray, fw: np.ndarray, gamma: float, prox: Prox) -> np.ndarray:
    """``z_half = prox(zbar - gamma F(w))`` (MASHA1 step 2, MASHA2 step 1)."""
    return prox(zbar - gamma * fw)


def masha1_update(
    zbar: np.ndarray, fw: np.ndarray, c: np.ndarray, gamma: float, prox: Prox
) -> np.ndarray:
    """``z^{k+1} = prox(zbar - gamma (F(w) + c))`` (MASHA1 step 5)."""
    return prox(zbar - gamma * (fw + c))


def masha2_update(
    zbar: np.ndarray, fw: np.ndarray, c: np.ndarray, gamma: float, prox: Prox
) -> np.ndarray:
    """``z^{k+1} = zbar - gamma F(w) - c`` (MASHA2 step 4; ``gamma`` is inside ``c``)."""
    return prox(zbar - gamma * fw - c)


def error_feedback(
    e: np.ndarray, v: np.ndarray, compress: Callable[[np.ndarray], np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """``u = e + v; c = C(u); e' = u - c``; returns ``(c, e')``."""
    u = e + v
    c = compress(u)
    return c, u - c


def variance_of(ch: Channel, where: str) -> float:
    """The compressor's ``q`` (:meth:`~fedsim.algorithms.channels.Channel.variance`; ``delta`` for a
    contractive one); a compressor that declares none needs ``strategy.gamma`` set."""
    q = ch.variance()
    if q is None:
        raise ConfigError(
            f"strategy.gamma: must be > 0 with {where}={ch.name}, which states no variance "
            "bound to derive the step size from"
        )
    return q


def broadcast_link(down: Link) -> Link:
    """The link of a step round's broadcast: a verbatim (identity) downlink is replaced by
    the lossless sparse one, which sends ``nnz`` float32 values + int32 indices when that is
    smaller than the dense vector and the dense vector otherwise.  The unidirectional
    average of ``M`` sparse uplinks has at most ``M k`` non-zeros (e.g. <= 20 of 200 at
    ``M = 10``, 1%), so this never costs more than dense and saves where it can; decoding
    gives the same float32 vector as the dense channel."""
    return replace(down, channel=SparseChannel()) if down.verbatim else down


def default_tau(cfg: RunConfig) -> float:
    """``1 - 1/beta`` of the uplink's compressor
    (:meth:`~fedsim.algorithms.channels.Channel.compression`)."""
    return 1.0 - 1.0 / make_channel(cfg.channel.up).compression()


def default_gamma(
    variant: str, cfg: RunConfig, tau: float, L: float, Lm: np.ndarray, c: float
) -> float:
    """The spec's theory step sizes (module docstring); constants derived, not verified."""
    q_dev = variance_of(make_channel(cfg.channel.up), "channel.up")
    q_serv = variance_of(make_channel(cfg.channel.down), "channel.down")
    M = len(Lm)
    if variant == "masha1":
        L_hat = math.sqrt(q_serv * (L**2 + (q_dev - 1.0) / M * float(np.mean(Lm**2))))
        return c * math.sqrt(1.0 - tau) / L_hat if tau > 0 else c / L_hat
    if variant == "masha2":
        return c * min(math.sqrt(1.0 - tau), 1.0 / (q_dev * q_serv)) / float(np.max(Lm))
    return c / L


def derived_gamma(
    variant: str, cfg: RunConfig, tau: float, L: float, Lm: np.ndarray, c: float
) -> float:
    """The step a run takes when ``strategy.gamma`` is 0: :func:`default_gamma`, capped at
    extragradient's stability edge ``1/L``.  Compression only adds variance, and the tuned
    ``gamma_c`` of a compressed setting would otherwise diverge on a lossless channel
    (``masha2`` with ``channel.up=identity``).  The regime sweep tunes ``c`` through the
    uncapped :func:`default_gamma`."""
    return min(default_gamma(variant, cfg, tau, L, Lm, c), 1.0 / L)


# --------------------------------------------------------------------------- replay


def _roundtrip32(ch: Channel, v: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, int]:
    """What a one-array layout sends and decodes: float32 on the wire, bytes of the parts."""
    parts = ch.encode_vector(v.astype(np.float32), rng)
    out = ch.decode_vector(parts, v.size).astype(np.float32).astype(np.float64)
    return out, sum(int(np.asarray(p).nbytes) for p in parts.values())


def replay(
    problem: Any,
    variant: str,
    up: Channel,
    down: Channel,
    gamma: float,
    tau: float,
    rounds: int,
    seed: int,
    stop: float = 0.0,
) -> list[dict[str, float]]:
    """The round protocol of :class:`Masha` and ``clients.masha`` without messages.

    Full participation on a one-array problem (the bilinear one), the same random streams
    and the same float32 wire rounding, so it reproduces a fedsim run's
    ``masha/rel_dist`` and ``comm/bytes_*`` round by round (``tests/test_masha.py`` checks
    this) at a small fraction of the cost; used for the step-size and compressor sweeps of
    ``scripts/masha_results.py``.  Stops after the round where ``rel_dist <= stop``.
    """
    M = problem.problem.num_clients
    uplink, downlink = Link("up", up, seed), Link("down", down, seed)
    bcast = broadcast_link(downlink)
    z0 = problem.z0()
    z, w, fw, zh = z0.copy(), z0.copy(), np.zeros_like(z0), z0.copy()
    e_dev = [np.zeros_like(z0) for _ in range(M)]
    e_srv = np.zeros_like(z0)
    phase = "g" if variant == "naive" else "sync"
    pending_down = 0  # bytes of the broadcast every device receives in the next round
    it = 0
    totals = {"up": 0.0, "down": 0.0}
    rows: list[dict[str, float]] = []
    dense = IdentityChannel()
    for rnd in range(1, rounds + 1):
        totals["down"] += M * pending_down
        up_bytes = 0
        if phase == "sync":
            vecs = []
            for m in range(M):
                v, nb = _roundtrip32(dense, problem.full(m, w), np.random.default_rng(0))
                vecs.append(v)
                up_bytes += nb
            fw, pending_down = _roundtrip32(dense, np.mean(vecs, axis=0), np.random.default_rng(0))
            phase = "step"
        else:
            vecs = []
            for m in range(M):
                rng = uplink.rng(rnd, m)
                if variant == "naive":
                    point = z if phase == "g" else zh
                    c_m, nb = _roundtrip32(up, problem.full(m, point), rng)
                else:
                    zbar = anchor(z, w, tau)
                    z_half = half_step(zbar, fw, gamma, problem.prox)
                    delta = problem.full(m, z_half) - problem.full(m, w)
                    if variant == "masha1":
                        c_m, nb = _roundtrip32(up, delta, rng)
                    else:
                        u = e_dev[m] + gamma * delta
                        c_m, nb = _roundtrip32(up, u, rng)
                        e_dev[m] = u - c_m
                vecs.append(c_m)
                up_bytes += nb
            a = np.mean(vecs, axis=0)
            drng = downlink.rng(rnd)
            if variant == "masha2" and not downlink.lossless:
                u = e_srv + a
                c, pending_down = _roundtrip32(down, u, drng)
                e_srv = u - c
            else:
                c, pending_down = _roundtrip32(bcast.channel, a, drng)
            if variant == "naive":
                if phase == "g":
                    zh, phase = problem.prox(z - gamma * c), "h"
                else:
                    z, phase = problem.prox(z - gamma * c), "g"
                    it += 1
            else:
                zbar = anchor(z, w, tau)
                update = masha1_update if variant == "masha1" else masha2_update
                z = update(zbar, fw, c, gamma, problem.prox)
                it += 1
                if derive_rng(seed, "masha/sync", rnd).random() < 1.0 - tau:
                    w = z.copy()
                    phase = "sync"
        totals["up"] += up_bytes
        rd = problem.metrics(z, z0)["masha/rel_dist"]
        rows.append(
            {
                "round": float(rnd),
                "masha/iterations": float(it),
                "masha/rel_dist": rd,
                "comm/bytes_up_total": totals["up"],
                "comm/bytes_down_total": totals["down"],
            }
        )
        if rd <= stop or not np.isfinite(rd) or rd > 1e3:
            break
    return rows


# --------------------------------------------------------------------------- prediction


def message_bytes(side: ChannelSideConfig, D: int) -> float:
    """Bytes of one compressed vector of ``D`` coordinates as ``fedsim.channels`` sends it
    (:meth:`~fedsim.algorithms.channels.Channel.vector_nbytes`): RandK ``4k + 8`` (values + seed),
    TopK ``8k`` (values + int32 indices), dense ``4D``."""
    return make_channel(side).vector_nbytes(D)


def predicted_up_ratio(
    up: ChannelSideConfig, down: ChannelSideConfig, D: int, M: int, L: float, mu: float,
    rho: float,
) -> float:  # fmt: skip
    """Predicted uplink bytes per device MASHA / EG to reach a fixed accuracy.

    From the spec's analysis (``shared/specs/masha.md`` section 3, the loopless VR-EG rate):
    EG needs ``K_EG ~ (L / mu) log(1/eps)`` iterations of two dense uplinks (``8 D``
    bytes).  MASHA1 with ``p = 1 - tau = k / D`` and ``gamma ~ sqrt(p) / L_hat``,
    ``L_hat^2 = q_serv L^2 (1 + (1/p - 1) rho / M)``, ``rho = mean_m L_m^2 / L^2``, needs
    ``K_M ~ max(L_hat / (sqrt(p) mu), 1 / p) log(1/eps)`` iterations (the second term: the
    reference point must be refreshed a few times), each sending one compressed vector
    (``message_bytes``) plus, with probability ``p``, a dense ``4 D``.  So

        ratio = [message_bytes + 4 p D] K_M / (8 D K_EG)
              ~ max( sqrt(q_serv (p + (1 - p) rho / M)), mu / L )   (ideal byte counts),

    i.e. a saving of ``1 / sqrt(k/d + (1 - k/d) rho / M)`` capped by ``L / mu``
    (unidirectional, ``q_serv = 1``); bidirectional RandK has ``q_serv = 1 / p`` and is
    predicted to lose on the uplink.  The same log factor and the same step-size constant
    are assumed for both methods, so this is an order of magnitude, not a bound.  The spec
    gives no comparable rate for MASHA2: its prediction reuses MASHA1's with TopK's bytes.
    """
    up_ch, down_ch = make_channel(up), make_channel(down)
    if not up_ch.sparsifier:
        return 1.0
    p = up_ch.kept(D) / D
    q_serv = 1.0 / p if down_ch.sparsifier else 1.0
    l_hat_over_l = math.sqrt(q_serv * (1.0 + (1.0 / p - 1.0) * rho / M))
    k_masha = max(L * l_hat_over_l / (math.sqrt(p) * mu), 1.0 / p)
    k_eg = L / mu
    return (message_bytes(up, D) + 4.0 * p * D) * k_masha / (8.0 * D * k_eg)


# --------------------------------------------------------------------------- fast sweep


def simulate(
    problem: Any,
    variant: str,
    up: ChannelSideConfig,
    down: ChannelSideConfig,
    gamma: float,
    tau: float,
    rounds: int,
    seed: int,
    stop: float = 0.0,
) -> list[dict[str, float]]:
    """:func:`replay` vectorised over the devices, for sweeps with ``M = 100``.

    The same protocol, byte counts (including the sparse unidirectional broadcast), float32
    wire rounding, sync bits (``derive_rng(seed, "masha/sync", round)``) and stopping rule
    as :func:`replay`.  Every device's vector goes through the compressor at once
    (:meth:`~fedsim.algorithms.channels.Channel.roundtrip_rows`): the RandK masks come from one
    generator per run instead of one per device and round, so RandK runs are statistically
    equivalent, not bit-identical (TopK and dense runs agree with :func:`replay` up to
    float rounding; ``tests/test_masha.py`` checks both).  MASHA1 / MASHA2 / EG only, full
    participation, bilinear problem.
    """
    bp = problem.problem
    d, lam, M = bp.d, bp.lam, bp.num_clients
    A = np.ascontiguousarray(bp.A).reshape(M * d, d)  # one gemv for all devices
    At = np.ascontiguousarray(bp.A.transpose(0, 2, 1)).reshape(M * d, d)

    def ops(z: np.ndarray) -> np.ndarray:  # (M, 2d): every F_m(z)
        x, y = z[:d], z[d:]
        ay, atx = (A @ y).reshape(M, d), (At @ x).reshape(M, d)
        return np.concatenate([ay + bp.a + lam * x, -atx - bp.b + lam * y], axis=1)

    D = 2 * d
    z0 = problem.z0()
    z, w = z0.copy(), z0.copy()
    fw = np.zeros_like(z0)
    fw_m = fw_w = np.zeros((M, D))
    e_dev = np.zeros((M, D))
    e_srv = np.zeros(D)
    up_ch, down_ch = make_channel(up), make_channel(down)
    rng = derive_rng(seed, "masha/simulate")
    phase, pending_down, it = "sync", 0.0, 0
    tot_up = tot_down = 0.0
    rows: list[dict[str, float]] = []
    for rnd in range(1, rounds + 1):
        tot_down += M * pending_down
        if phase == "sync":
            fw_w = ops(w)
            fw_m = fw_w.astype(np.float32).astype(np.float64)
            fw = np.mean(fw_m, axis=0).astype(np.float32).astype(np.float64)
            tot_up += M * 4.0 * D
            pending_down, phase = 4.0 * D, "step"
        else:
            zbar = tau * z + (1.0 - tau) * w
            z_half = zbar - gamma * fw
            delta = ops(z_half) - fw_w  # F_m(w) changes only at a sync: cached
            if variant == "masha1":
                C, nb = up_ch.roundtrip_rows(delta, rng)
            else:
                U = e_dev + gamma * delta
                C, nb = up_ch.roundtrip_rows(U, rng)
                e_dev = U - C
            tot_up += M * nb
            a = np.mean(C, axis=0)
            if not down_ch.lossless:
                u = e_srv + a if variant == "masha2" else a
                c2, pending_down = down_ch.roundtrip_rows(u[None, :], rng)
                c = c2[0]
                if variant == "masha2":
                    e_srv = u - c
            else:  # the lossless sparse broadcast
                c = a.astype(np.float32).astype(np.float64)
                pending_down = min(8.0 * np.count_nonzero(c), 4.0 * D)
            update = masha1_update if variant == "masha1" else masha2_update
            z = update(zbar, fw, c, gamma, problem.prox)
            it += 1
            if derive_rng(seed, "masha/sync", rnd).random() < 1.0 - tau:
                w = z.copy()
                phase = "sync"
        rd = problem.metrics(z, z0)["masha/rel_dist"]
        rows.append(
            {
                "round": float(rnd),
                "masha/iterations": float(it),
                "masha/rel_dist": rd,
                "comm/bytes_up_total": tot_up,
                "comm/bytes_down_total": tot_down,
            }
        )
        if rd <= stop or not np.isfinite(rd) or rd > 1e3:
            break
    return rows
