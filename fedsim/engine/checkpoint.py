"""Checkpoints: everything a run needs to continue, written atomically.

A checkpoint is one ``.npz`` file (no pickle) in ``<run_dir>/checkpoint.npz`` holding

* ``global/<name>``: the global arrays after the last completed round;
* ``strategy/<name>``: the strategy's server state (``FedsimStrategy.state_dict``);
* ``client/<pid>/<record>/<name>``: every client's persistent ``context.state`` arrays
  (FedBN layers, FRAug RTNet/prototypes, optimizer moments, error-feedback memory ...);
* ``meta``: JSON with the round, the config, cumulative counters, the torch RNG state
  and the client states' config/metric records.

Writing goes to a temporary file that is fsync'ed and then renamed over the previous
checkpoint, so a write interrupted at any point (a kill, a full disk) never replaces the
last good checkpoint, and a failed write removes its temporary file.  Randomness in
fedsim derives from ``(seed, round, client)``, so the round number is what makes the
resumed run draw the same samples and batches.
"""

from __future__ import annotations

import contextlib
import json
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from fedsim.atomic import write_atomic
from fedsim.config import upgrade_plain
from fedsim.errors import CheckpointError
from fedsim.records import arrays_from_numpy, numpy_from_arrays

CHECKPOINT_FILE = "checkpoint.npz"
FORMAT = 1
# Keys that may differ between the interrupted run and its resumption.
RESUMABLE_KEYS = {
    "rounds",
    "resume",
    "overwrite",
    "progress",
    "checkpoint_every",
    "output_dir",
    "runtime",
}


@dataclass
class Checkpoint:
    """The state of a run after ``round`` completed rounds."""

    round: int
    config: dict[str, Any]
    global_arrays: dict[str, np.ndarray]
    strategy: dict[str, np.ndarray] = field(default_factory=dict)
    clients: dict[int, RecordDict] = field(default_factory=dict)
    counters: dict[str, float] = field(default_factory=dict)
    torch_rng: np.ndarray | None = None


def fingerprint(config: dict[str, Any]) -> dict[str, Any]:
    """The part of a config that must match for a resume to be the same experiment."""
    return {k: v for k, v in upgrade_plain(config).items() if k not in RESUMABLE_KEYS}


def _encode_state(pid: int, state: RecordDict, arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    other: dict[str, Any] = {}
    for name, rec in state.items():
        if isinstance(rec, ArrayRecord):
            for key, value in numpy_from_arrays(rec).items():
                arrays[f"client/{pid}/{name}/{key}"] = value
            other[name] = {"kind": "arrays", "keys": list(rec.keys())}
        elif isinstance(rec, ConfigRecord):
            other[name] = {"kind": "config", "values": dict(rec)}
        elif isinstance(rec, MetricRecord):
            other[name] = {"kind": "metrics", "values": dict(rec)}
    return other


def save(path: Path, ckpt: Checkpoint) -> None:
    """Write ``ckpt`` to ``path`` atomically (temporary file, fsync, rename)."""
    arrays: dict[str, np.ndarray] = {}
    for k, v in ckpt.global_arrays.items():
        arrays[f"global/{k}"] = v
    for k, v in ckpt.strategy.items():
        arrays[f"strategy/{k}"] = np.asarray(v)
    client_meta = {str(pid): _encode_state(pid, st, arrays) for pid, st in ckpt.clients.items()}
    if ckpt.torch_rng is not None:
        arrays["rng/torch"] = ckpt.torch_rng
    meta = {
        "format": FORMAT,
        "round": ckpt.round,
        "config": ckpt.config,
        "counters": ckpt.counters,
        "clients": client_meta,
        "global_keys": list(ckpt.global_arrays),
    }
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)  # type: ignore[arg-type]  # numpy's stub types **kwds as bool
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:  # a full disk, a signal: no half-written file is left behind
        with contextlib.suppress(OSError):  # a directory that forbids it: the next run does
            tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def save_model(state: dict[str, Any], path: Path) -> None:
    """``torch.save`` of a state dict, written atomically; a failed write raises the
    OSError itself (torch's own file writer would wrap it in a RuntimeError)."""
    import io

    buf = io.BytesIO()
    torch.save(state, buf)
    write_atomic(path, buf.getvalue())


def load(path: Path) -> Checkpoint:
    """Read a checkpoint; a missing, truncated or foreign file is a CheckpointError."""
    if not path.exists():
        raise CheckpointError(
            f"resume: no checkpoint at {path} (run with checkpoint_every=N to write one)"
        )
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
        meta = json.loads(bytes(data.pop("meta")).decode())
        if meta.get("format") != FORMAT:
            raise CheckpointError(
                f"resume: {path} has checkpoint format {meta.get('format')}, expected {FORMAT}"
            )
        glob = {k: data[f"global/{k}"] for k in meta["global_keys"]}
        strategy = {
            k.removeprefix("strategy/"): v for k, v in data.items() if k.startswith("strategy/")
        }
        clients: dict[int, RecordDict] = {}
        for pid_s, records in meta["clients"].items():
            state = RecordDict()
            for name, rec in records.items():
                if rec["kind"] == "arrays":
                    state[name] = arrays_from_numpy(
                        {k: data[f"client/{pid_s}/{name}/{k}"] for k in rec["keys"]}
                    )
                elif rec["kind"] == "config":
                    state[name] = ConfigRecord(rec["values"])
                else:
                    state[name] = MetricRecord(rec["values"])
            clients[int(pid_s)] = state
        return Checkpoint(
            round=int(meta["round"]),
            config=meta["config"],
            global_arrays=glob,
            strategy=strategy,
            clients=clients,
            counters={k: float(v) for k, v in meta["counters"].items()},
            torch_rng=data.get("rng/torch"),
        )
    except CheckpointError:
        raise
    except (
        OSError,
        ValueError,
        KeyError,
        TypeError,
        zipfile.BadZipFile,
        EOFError,
        UnicodeDecodeError,
    ) as e:
        raise CheckpointError(
            f"resume: {path} is not a usable fedsim checkpoint ({type(e).__name__}: {e})"
        ) from None


def check_compatible(ckpt: Checkpoint, config: dict[str, Any], path: Path) -> None:
    """Refuse to resume a checkpoint written by a different experiment."""
    old, new = fingerprint(ckpt.config), fingerprint(config)
    if old != new:
        diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        raise CheckpointError(
            f"resume: {path} was written by a different configuration "
            f"(differs in: {', '.join(diff)}); resume with the same settings, "
            "or start a new run with overwrite=true"
        )
    if ckpt.round >= int(config["rounds"]):
        raise CheckpointError(
            f"resume: {path} already holds round {ckpt.round} of rounds={config['rounds']}; "
            "nothing to resume (raise rounds to continue training)"
        )


def torch_rng_state() -> np.ndarray:
    return torch.get_rng_state().numpy().copy()


def restore_torch_rng(state: np.ndarray | None) -> None:
    if state is not None:
        torch.set_rng_state(torch.from_numpy(state.copy()))
