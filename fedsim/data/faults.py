"""Fault injection: a scenario's ``faults:`` section makes clients crash, send NaN, stall
or attack.

Which client misbehaves in which round is a pure function of ``(seed, round, client)``,
so a fault-injection run is reproducible and identical under every runtime.  The faults
act inside the ClientApp, exactly where a real bug would: a crash raises, a NaN update
is a well-formed reply with poisoned arrays, a delay sleeps (and runs into the round
deadline ``runtime.timeout`` when it is longer).

Byzantine clients (``byzantine``: a fraction of the clients, the same set for a seed all
run long; :func:`byzantine_clients`) attack in every round they take part in, on the
model arrays of their reply (``received`` = the global arrays they decoded, ``sent`` =
their honest result, ``u = sent - received``):

* ``sign_flip``: send ``received - attack_scale * u`` (Damaskinos et al., 2018, and
  Karimireddy et al., arXiv 2012.10333, use such reversed updates);
* ``scale``: send ``received + attack_scale * u`` (a boosted update);
* ``gaussian``: send ``received + N(0, attack_std^2)`` noise in place of ``u``;
* ``label_flip``: train honestly on flipped labels ``C - 1 - y`` (:mod:`fedsim.data.federation`).
"""

from __future__ import annotations

import logging
import time

import numpy as np
from flwr.app import ArrayRecord

from fedsim.config import FaultConfig
from fedsim.records import arrays_from_numpy, numpy_from_arrays
from fedsim.seeding import derive_rng

log = logging.getLogger(__name__)

NONE, CRASH, NAN, DELAY = "none", "crash", "nan", "delay"
ATTACKS = ("sign_flip", "gaussian", "scale", "label_flip")


class InjectedFault(RuntimeError):
    """Raised by a client that the scenario told to crash."""


def fault_for(faults: FaultConfig, seed: int, server_round: int, pid: int) -> str:
    """The fault (if any) client ``pid`` suffers in ``server_round``."""
    if faults.crash == 0 and faults.nan == 0 and faults.delay == 0:
        return NONE
    u = float(derive_rng(seed, "fault", server_round, pid).random())
    if u < faults.crash:
        return CRASH
    if u < faults.crash + faults.nan:
        return NAN
    if u < faults.crash + faults.nan + faults.delay:
        return DELAY
    return NONE


def before_fit(fault: str, faults: FaultConfig, server_round: int, pid: int) -> None:
    if fault == CRASH:
        log.info("round %d: client %d crashes (injected)", server_round, pid)
        raise InjectedFault(f"injected crash of client {pid} in round {server_round}")
    if fault == DELAY:
        log.info("round %d: client %d stalls %.1f s (injected)", server_round, pid, faults.delay_s)
        time.sleep(faults.delay_s)


def poison(arrays: ArrayRecord) -> ArrayRecord:
    """The same arrays with every floating-point value replaced by NaN."""
    out: dict[str, np.ndarray] = {}
    for k, v in numpy_from_arrays(arrays).items():
        out[k] = np.full_like(v, np.nan) if np.issubdtype(v.dtype, np.floating) else v
    return arrays_from_numpy(out)


def byzantine_clients(faults: FaultConfig, num_clients: int, seed: int) -> frozenset[int]:
    """The attacking clients: ``round(byzantine * num_clients)`` of them, fixed per seed."""
    k = round(faults.byzantine * num_clients)
    if k <= 0:
        return frozenset()
    chosen = derive_rng(seed, "byzantine").choice(num_clients, size=k, replace=False)
    return frozenset(int(p) for p in chosen)


def attacks(faults: FaultConfig, num_clients: int, seed: int, pid: int) -> bool:
    """True when client ``pid`` tampers with its replies (every attack but label_flip)."""
    if faults.byzantine <= 0 or faults.attack == "label_flip":
        return False
    return pid in byzantine_clients(faults, num_clients, seed)


def flips_labels(faults: FaultConfig, num_clients: int, seed: int, pid: int) -> bool:
    """True when client ``pid`` trains on flipped labels."""
    if faults.byzantine <= 0 or faults.attack != "label_flip":
        return False
    return pid in byzantine_clients(faults, num_clients, seed)


def attack(
    faults: FaultConfig, received: ArrayRecord, sent: ArrayRecord, rng: np.random.Generator
) -> ArrayRecord:
    """The model arrays a Byzantine client sends instead of ``sent`` (see module doc)."""
    ref = numpy_from_arrays(received)
    out: dict[str, np.ndarray] = {}
    for k, v in numpy_from_arrays(sent).items():
        if k not in ref or not np.issubdtype(v.dtype, np.floating):
            out[k] = v
            continue
        u = v - ref[k]
        if faults.attack == "sign_flip":
            u = -faults.attack_scale * u
        elif faults.attack == "scale":
            u = faults.attack_scale * u
        else:  # gaussian
            u = rng.normal(0.0, faults.attack_std, size=v.shape)
        out[k] = (ref[k] + u).astype(v.dtype)
    return arrays_from_numpy(out)


def validate_faults(faults: FaultConfig) -> str | None:
    """What is wrong with a ``faults:`` section, or None."""
    if faults.attack not in ATTACKS:
        return f"faults.attack: unknown '{faults.attack}' (allowed: {', '.join(ATTACKS)})"
    if not 0.0 <= faults.byzantine < 1.0:
        return f"faults.byzantine: must be in [0, 1), got {faults.byzantine}"
    if faults.attack_std < 0:
        return f"faults.attack_std: must be >= 0, got {faults.attack_std}"
    return None
