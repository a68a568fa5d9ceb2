"""The server's round loop: configure -> train -> aggregate -> evaluate, with callbacks.

``run_experiment`` is what the ServerApp's ``main`` calls under every runtime (inline,
Ray simulation, deployment): it only talks to the clients through Flower's ``Grid``.
Tracking (TensorBoard, ``metrics.jsonl``, progress, run status) attaches as callbacks.
What is built before the first round lives in :mod:`fedsim.engine.experiment`, and which
node hosts which partition in :mod:`fedsim.engine.nodes`.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ConfigRecord
from flwr.serverapp import Grid

from fedsim.algorithms.channels import wire_nbytes
from fedsim.algorithms.schedules import lr_at
from fedsim.algorithms.task import task_of
from fedsim.config import RunConfig
from fedsim.config.paths import run_dir_for
from fedsim.engine import checkpoint as ckpt_io
from fedsim.engine.experiment import Experiment, setup
from fedsim.engine.nodes import rediscover_nodes
from fedsim.engine.selection import Selection, read_metric_rows
from fedsim.errors import Interrupted
from fedsim.records import arrays_from_numpy, numpy_from_arrays, state_from_arrays
from fedsim.tracking.bytes_axis import BytesAxisCallback
from fedsim.tracking.callbacks import (
    Callback,
    JsonlCallback,
    ProgressCallback,
    StatusCallback,
    TensorBoardCallback,
)
from fedsim.tracking.tb_layout import HPARAM_METRICS

log = logging.getLogger(__name__)
#: the run's wall seconds so far, carried across a resume in the checkpoint's counters
ELAPSED = "time/elapsed_s"

__all__ = ["run_dir_for", "run_experiment"]


class StopRequest(threading.Event):
    """Set by SIGINT/SIGTERM; remembers which signal (the exit status is 128 + it)."""

    signum: int = signal.SIGINT


def _install_stop_handlers(stop: StopRequest) -> dict[int, Any]:
    """SIGINT/SIGTERM finish the current round, write a checkpoint and stop the run.

    Only possible in the main thread (the inline runtime); elsewhere the default
    behaviour stays and the last periodic checkpoint is what a resume uses.
    """
    if threading.current_thread() is not threading.main_thread():
        return {}

    def handler(signum: int, frame: Any) -> None:
        if stop.is_set():  # a second signal: stop now
            raise Interrupted(signum)
        log.warning("signal %d: finishing this round, then checkpointing and stopping", signum)
        stop.signum = signum
        stop.set()

    previous: dict[int, Any] = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        previous[sig] = signal.signal(sig, handler)
    return previous


def _restore_handlers(previous: dict[int, Any]) -> None:
    for sig, handler in previous.items():
        signal.signal(sig, handler)


def default_callbacks(cfg: RunConfig, run_dir: Path) -> list[Callback]:
    return [
        StatusCallback(run_dir),
        JsonlCallback(run_dir),
        TensorBoardCallback(run_dir),
        BytesAxisCallback(run_dir, task_of(cfg).summary_metrics),
        ProgressCallback(cfg.rounds, cfg.progress),
    ]


def _prefixed(prefix: str, record: Any) -> dict[str, float]:
    if record is None:
        return {}
    return {f"{prefix}/{k}": float(v) for k, v in record.items() if k != "num-examples"}


def resume(exp: Experiment, grid: Grid) -> None:
    """Continue from the run directory's checkpoint: arrays, strategy, clients, RNG."""
    path = exp.run_dir / ckpt_io.CHECKPOINT_FILE
    resumed = ckpt_io.load(path)
    ckpt_io.check_compatible(resumed, exp.info["config"], path)
    exp.arrays = arrays_from_numpy(resumed.global_arrays)
    exp.strategy.load_state_dict(resumed.strategy)
    restore = getattr(grid, "restore_client_states", None)
    if callable(restore):
        restore(resumed.clients)
    elif resumed.clients:
        log.warning("this runtime cannot restore client state; clients restart empty")
    ckpt_io.restore_torch_rng(resumed.torch_rng)
    exp.totals.update({k: v for k, v in resumed.counters.items() if k in exp.totals})
    exp.elapsed_before = resumed.counters.get(ELAPSED, 0.0)  # 0 for older checkpoints
    exp.start_round = resumed.round + 1
    if exp.selection is not None:  # rebuilt from the rounds already written
        exp.selection = Selection.replay(
            (r for r in read_metric_rows(exp.run_dir) if r["round"] <= resumed.round),
            exp.selection.domain_of,
        )
    log.info("resuming from round %d (%s)", resumed.round, path)


def save_checkpoint(exp: Experiment, grid: Grid, done: int, elapsed: float) -> None:
    """The state after round ``done``; ``elapsed``: the run's wall seconds up to it."""
    states = getattr(grid, "client_states", None)
    ckpt_io.save(
        exp.run_dir / ckpt_io.CHECKPOINT_FILE,
        ckpt_io.Checkpoint(
            round=done,
            config=exp.info["config"],
            global_arrays={k: np.array(v) for k, v in numpy_from_arrays(exp.arrays).items()},
            strategy=exp.strategy.state_dict(),
            clients=states() if callable(states) else {},
            counters={**exp.totals, ELAPSED: elapsed},
            torch_rng=ckpt_io.torch_rng_state(),
        ),
    )


def run_round(exp: Experiment, grid: Grid, rnd: int) -> dict[str, float]:
    """One round: configure -> train -> aggregate -> (evaluate); returns its metrics."""
    cfg, strategy = exp.cfg, exp.strategy
    if rnd > 1:
        rediscover_nodes(grid, exp.node_of, cfg.runtime.timeout)
    out = list(strategy.configure_train(rnd, exp.arrays, ConfigRecord(), grid))
    replies = list(grid.send_and_receive(out, timeout=cfg.runtime.timeout)) if out else []
    up = wire_nbytes(r for r in replies if not r.has_error())
    down = wire_nbytes(out)
    new_arrays, train_metrics = strategy.aggregate_train(rnd, replies)
    if len(replies) < len(out):  # no reply within runtime.timeout: failed too
        lost = len(out) - len(replies)
        log.warning("round %d: %d clients did not reply in time", rnd, lost)
        strategy.stats["sys/failed_clients"] = strategy.stats.get("sys/failed_clients", 0.0) + lost
    if new_arrays is not None:
        exp.arrays = new_arrays
    exp.totals["comm/bytes_up_total"] += up
    exp.totals["comm/bytes_down_total"] += down
    metrics: dict[str, float] = {
        **_prefixed("train", train_metrics),
        "comm/bytes_up": float(up),
        "comm/bytes_down": float(down),
        **exp.totals,
        **strategy.stats,
    }
    metrics.pop("train/steps", None)
    metrics["train/lr"] = lr_at(cfg.train, rnd, cfg.rounds)
    metrics.update(strategy.round_metrics(rnd, exp.arrays))
    if rnd % cfg.eval_every == 0 or rnd == cfg.rounds:
        emsgs = list(strategy.configure_evaluate(rnd, exp.arrays, ConfigRecord(), grid))
        ereplies = list(grid.send_and_receive(emsgs, timeout=cfg.runtime.timeout)) if emsgs else []
        metrics.update(_prefixed("eval", strategy.aggregate_evaluate(rnd, ereplies)))
        if exp.server_eval is not None:
            metrics.update(exp.server_eval(exp.arrays))
        if exp.selection is not None:
            metrics.update(exp.selection.update(rnd, metrics))
    return metrics


def run_experiment(
    grid: Grid,
    cfg: RunConfig,
    run_dir: Path,
    callbacks: Iterable[Callback] | None = None,
) -> dict[str, float]:
    """Run all rounds of an experiment on ``grid``; returns the final metrics."""
    exp = setup(grid, cfg, run_dir)
    if cfg.resume:
        resume(exp, grid)
    exp.info["start_round"] = exp.start_round
    cbs = list(callbacks) if callbacks is not None else default_callbacks(cfg, run_dir)
    for cb in cbs:
        cb.on_start(exp.info)
    stop = StopRequest()
    previous = _install_stop_handlers(stop)
    last: dict[str, float] = {}
    status = "failed"
    t_run = time.perf_counter()
    try:
        for rnd in range(exp.start_round, cfg.rounds + 1):
            t0 = time.perf_counter()
            metrics = run_round(exp, grid, rnd)
            metrics["time/round_s"] = time.perf_counter() - t0
            metrics[ELAPSED] = exp.elapsed_before + time.perf_counter() - t_run
            last.update(metrics)
            for cb in cbs:
                cb.on_round(rnd, metrics)
            figures = exp.server_eval.figures() if exp.server_eval is not None else {}
            if figures:
                for cb in cbs:
                    cb.on_figures(rnd, figures)
            every = cfg.checkpoint_every
            if stop.is_set() or (every > 0 and (rnd % every == 0 or rnd == cfg.rounds)):
                save_checkpoint(exp, grid, rnd, metrics[ELAPSED])
            if stop.is_set() and rnd < cfg.rounds:
                raise Interrupted(stop.signum, f"signal {stop.signum} after round {rnd}")
        ckpt_io.save_model(state_from_arrays(exp.arrays), run_dir / "final_model.pt")
        status = "complete"
    except KeyboardInterrupt:
        status = "interrupted"
        raise
    finally:
        _restore_handlers(previous)
        summary = {
            k: v
            for k, v in last.items()
            if k in HPARAM_METRICS
            or k.startswith(("comm/bytes_", "eval/"))
            or k in task_of(cfg).summary_metrics
        }
        summary["rounds"] = float(cfg.rounds)
        summary["wall_s"] = exp.elapsed_before + time.perf_counter() - t_run
        for cb in cbs:
            cb.on_end(summary, status)
    return last
