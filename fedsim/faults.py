"""Fault injection: a scenario's ``faults:`` section makes clients crash, send NaN or stall.

Which client misbehaves in which round is a pure function of ``(seed, round, client)``,
so a fault-injection run is reproducible and identical under every runtime.  The faults
act inside the ClientApp, exactly where a real bug would: a crash raises, a NaN update
is a well-formed reply with poisoned arrays, a delay sleeps (and runs into the round
deadline ``runtime.timeout`` when it is longer).
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
