"""The server's round loop: configure -> train -> aggregate -> evaluate, with callbacks.

``run_experiment`` is what the ServerApp's ``main`` calls under every runtime (inline,
Ray simulation, deployment): it only talks to the clients through Flower's ``Grid``.
Tracking (TensorBoard, ``metrics.jsonl``, progress, run status) attaches as callbacks.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid
from torch import nn

from fedsim.algorithms.channels import wire_nbytes
from fedsim.algorithms.client import kept_keys
from fedsim.algorithms.dp import wrap_dp
from fedsim.algorithms.payloads import Identity
from fedsim.algorithms.registry import get
from fedsim.algorithms.schedules import lr_at
from fedsim.algorithms.strategy import ServerContext
from fedsim.algorithms.task import task_of
from fedsim.algorithms.wrap.server import FedsimStrategy
from fedsim.config import RunConfig
from fedsim.config.paths import run_dir_for
from fedsim.data.faults import byzantine_clients
from fedsim.data.federation import Federation
from fedsim.data.participation import ParticipationSampler
from fedsim.engine import checkpoint as ckpt_io
from fedsim.engine.conf import to_plain
from fedsim.engine.context import context_for
from fedsim.engine.selection import Selection, read_metric_rows
from fedsim.errors import Interrupted, RunFailed
from fedsim.models.modelzoo import resolve_device
from fedsim.records import (
    arrays_from_numpy,
    arrays_from_state,
    numpy_from_arrays,
    state_from_arrays,
)
from fedsim.tracking.bytes_axis import BytesAxisCallback
from fedsim.tracking.callbacks import (
    Callback,
    JsonlCallback,
    ProgressCallback,
    StatusCallback,
    TensorBoardCallback,
)
from fedsim.tracking.figures import confusion_image, evaluate_with_confusion
from fedsim.tracking.tb_layout import (
    HPARAM_EXTRA,
    HPARAM_METRICS,
    custom_scalars_layout,
    tag_hparams,
)

log = logging.getLogger(__name__)

__all__ = ["run_dir_for", "run_experiment"]


NODE_WAIT_POLL_S = 0.5  # how often discovery re-reads the connected nodes while waiting


def discover_nodes(
    grid: Grid,
    num_clients: int,
    timeout: float,
    min_clients: int = 1,
    known: dict[int, int] | None = None,
) -> dict[int, int]:
    """Map partition ids to node ids: ask every node which partition it hosts.

    In a deployment SuperNodes connect on their own schedule, so discovery first waits
    (at most ``timeout`` seconds) until ``num_clients`` nodes are connected, then asks
    those present; fewer than ``min_clients`` answers is an error.  With ``known`` (the
    current map) nobody waits and only nodes not in it are asked: a SuperNode that
    restarted has a new node id, and its answer replaces its partition's old node id.
    """
    shortcut = getattr(grid, "node_map", None)
    if callable(shortcut):  # the inline grid knows it without a round trip
        return dict(shortcut())
    nodes = list(grid.get_node_ids())
    deadline = time.monotonic() + timeout
    while known is None and len(nodes) < num_clients and time.monotonic() < deadline:
        time.sleep(NODE_WAIT_POLL_S)
        nodes = list(grid.get_node_ids())
    out: dict[int, int] = dict(known or {})
    new = [n for n in nodes if n not in set(out.values())]
    msgs = [Message(RecordDict(), dst_node_id=n, message_type=MessageType.QUERY) for n in new]
    replies = grid.send_and_receive(msgs, timeout=timeout) if msgs else []
    for r in replies:
        if not r.has_error():
            out[Identity.from_record(r.content).partition_id] = r.metadata.src_node_id
    if known is not None:
        if replies:
            log.info("rediscovered nodes: partition -> node %s", out)
        return out
    missing = num_clients - len(out)
    if missing:
        log.warning("%d of %d clients did not answer the start-up query", missing, num_clients)
    if len(out) < min_clients:
        raise RunFailed(
            f"only {len(out)} of {num_clients} clients answered within {timeout:g} s "
            f"(scenario.participation.min_clients={min_clients}); on a busy machine or a "
            "slow cluster raise runtime.wait_nodes"
        )
    return out


def rediscover_nodes(grid: Grid, node_of: dict[int, int], timeout: float) -> None:
    """Update ``node_of`` in place when nodes unknown to it have connected (restarts).

    Partitions whose node left keep their old node id: messages to it fail or time out
    and are counted in ``sys/failed_clients`` until the partition's SuperNode is back.
    """
    if callable(getattr(grid, "node_map", None)):
        return
    if set(grid.get_node_ids()) - set(node_of.values()):
        node_of.update(discover_nodes(grid, len(node_of), timeout, known=node_of))


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


def partition_report(fed: Federation, run_dir: Path) -> tuple[str, Any]:
    from fedsim.tracking.report import partition_heatmap, partition_table

    parts = fed.all_parts()
    labels = fed.data.train_y.numpy()
    domains = fed.data.train_domain.numpy()
    text = partition_table(parts, labels, domains, fed.data.domains, fed.data.num_classes)
    png = partition_heatmap(
        parts, labels, domains, fed.data.domains, fed.data.num_classes, run_dir / "partition.png"
    )
    from PIL import Image

    image = Image.open(png).convert("RGB")
    import numpy as np

    return text, np.asarray(image)


class ServerEval:
    """Centralised evaluation of the global model on the global test set."""

    def __init__(self, cfg: RunConfig, fed: Federation, model: nn.Module) -> None:
        self.device = resolve_device(cfg.device)
        self.model = model.to(self.device)
        self.x, self.y = fed.data.test_x, fed.data.test_y
        self.num_classes = fed.data.num_classes
        self.precision = cfg.precision
        self.confusion: Any = None  # of the last evaluation (fedsim.tracking.figures)

    def __call__(self, arrays: ArrayRecord) -> dict[str, float]:
        self.model.load_state_dict(state_from_arrays(arrays), strict=True)
        acc, loss, self.confusion = evaluate_with_confusion(
            self.model, self.x, self.y, self.num_classes, self.device, precision=self.precision
        )
        return {"eval/global_acc": acc, "eval/global_loss": loss}

    def figures(self) -> dict[str, Any]:
        """The global model's confusion matrix, as a picture (after an evaluation)."""
        if self.confusion is None:
            return {}
        figures = {"eval/global_confusion": confusion_image(self.confusion)}
        self.confusion = None
        return figures


def _prefixed(prefix: str, record: Any) -> dict[str, float]:
    if record is None:
        return {}
    return {f"{prefix}/{k}": float(v) for k, v in record.items() if k != "num-examples"}


@dataclass
class Experiment:
    """Everything a run needs, built before the first round (see :func:`setup`)."""

    cfg: RunConfig
    run_dir: Path
    strategy: FedsimStrategy
    node_of: dict[int, int]
    info: dict[str, Any]
    arrays: ArrayRecord
    server_eval: ServerEval | None
    selection: Selection | None = None  # evaluation.validation_fraction > 0
    totals: dict[str, float] = field(
        default_factory=lambda: {"comm/bytes_up_total": 0.0, "comm/bytes_down_total": 0.0}
    )
    start_round: int = 1


def build_strategy(
    cfg: RunConfig, node_of: dict[int, int], model: Any, domains: list[str]
) -> FedsimStrategy:
    """The registered algorithm's server half inside fedsim's wrappers (and Flower's DP
    wrapper when ``dp.kind`` asks for one)."""
    spec = get(cfg.strategy.name)
    local_keys = (
        frozenset(kept_keys(spec.client_class(), model, cfg)) if model is not None else frozenset()
    )
    sampler = ParticipationSampler(cfg.scenario.participation, cfg.scenario.num_clients, cfg.seed)
    ctx = ServerContext(cfg, node_of, local_keys, domains)
    inner = wrap_dp(spec.server_class()(ctx), cfg)
    byzantine = byzantine_clients(cfg.scenario.faults, cfg.scenario.num_clients, cfg.seed)
    return FedsimStrategy(
        inner,
        ctx,
        sampler,
        byzantine=byzantine,
    )


def setup(grid: Grid, cfg: RunConfig, run_dir: Path) -> Experiment:
    """Data, model, node map, wrapped strategy, central evaluation and run metadata."""
    # the task's data and model; a task without them (a synthetic problem) leaves the
    # initial arrays and the metrics to its strategy
    ctx = context_for(cfg)
    work = ctx.workload()
    fed, model = work.fed, work.model  # the pristine round-0 model: never trained here
    node_of = discover_nodes(
        grid,
        cfg.scenario.num_clients,
        min(cfg.runtime.timeout, cfg.runtime.wait_nodes),
        cfg.scenario.participation.min_clients,
    )
    strategy = build_strategy(cfg, node_of, model, work.domains)
    server_eval = (
        ServerEval(cfg, fed, ctx.fresh_model())
        if fed is not None
        and model is not None
        and strategy.has_global_model
        and cfg.scenario.evaluation.global_test
        and len(fed.data.test_y)
        else None
    )
    run_dir.mkdir(parents=True, exist_ok=True)
    plain = to_plain(cfg)
    text, image = partition_report(fed, run_dir) if fed is not None else ("", None)
    if fed is not None:
        (run_dir / "partition.txt").write_text(text + "\n")
    info = {
        "config": plain,
        "config_yaml": yaml.safe_dump(plain, sort_keys=False),
        "hparams": {
            "strategy": cfg.strategy.name,
            "scenario": cfg.scenario.name,
            "backbone": cfg.backbone.name,
            "seed": cfg.seed,
            "rounds": cfg.rounds,
            "lr": cfg.train.lr,
            **tag_hparams(cfg.tag),
        },
        "hparam_metrics": [f"hparams/{m}" for m in [*HPARAM_METRICS, *HPARAM_EXTRA]],
        "partition_text": text,
        "partition_image": image,
        "start_round": 1,
        "layout": custom_scalars_layout(),
    }
    initial = strategy.initial_arrays()
    if initial is None:
        assert model is not None, "a problem without a backbone needs strategy.initial_arrays()"
        initial = arrays_from_state(model.state_dict())
    selection = None
    if fed is not None and cfg.scenario.evaluation.validation_fraction > 0:
        selection = Selection(_domain_names(fed))
    return Experiment(cfg, run_dir, strategy, node_of, info, initial, server_eval, selection)


def _domain_names(fed: Federation) -> dict[int, str]:
    """Client id -> its domain's name, when there are several domains (else empty)."""
    if len(fed.data.domains) < 2:
        return {}
    return {pid: fed.data.domains[fed.domain_of(pid)] for pid in range(fed.num_clients)}


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
    exp.start_round = resumed.round + 1
    if exp.selection is not None:  # rebuilt from the rounds already written
        exp.selection = Selection.replay(
            (r for r in read_metric_rows(exp.run_dir) if r["round"] <= resumed.round),
            exp.selection.domain_of,
        )
    log.info("resuming from round %d (%s)", resumed.round, path)


def save_checkpoint(exp: Experiment, grid: Grid, done: int) -> None:
    states = getattr(grid, "client_states", None)
    ckpt_io.save(
        exp.run_dir / ckpt_io.CHECKPOINT_FILE,
        ckpt_io.Checkpoint(
            round=done,
            config=exp.info["config"],
            global_arrays={k: np.array(v) for k, v in numpy_from_arrays(exp.arrays).items()},
            strategy=exp.strategy.state_dict(),
            clients=states() if callable(states) else {},
            counters=dict(exp.totals),
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
            metrics["time/elapsed_s"] = time.perf_counter() - t_run
            last.update(metrics)
            for cb in cbs:
                cb.on_round(rnd, metrics)
            figures = exp.server_eval.figures() if exp.server_eval is not None else {}
            if figures:
                for cb in cbs:
                    cb.on_figures(rnd, figures)
            every = cfg.checkpoint_every
            if stop.is_set() or (every > 0 and (rnd % every == 0 or rnd == cfg.rounds)):
                save_checkpoint(exp, grid, rnd)
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
        summary["wall_s"] = time.perf_counter() - t_run
        for cb in cbs:
            cb.on_end(summary, status)
    return last
