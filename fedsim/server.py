"""The server's round loop: configure -> train -> aggregate -> evaluate, with callbacks.

``run_experiment`` is what the ServerApp's ``main`` calls under every runtime (inline,
Ray simulation, deployment): it only talks to the clients through Flower's ``Grid``.
Tracking (TensorBoard, ``metrics.jsonl``, progress, run status) attaches as callbacks.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
import yaml
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid

from clients.training import evaluate_model
from fedsim.conf import to_plain
from fedsim.config import RunConfig
from fedsim.federation import Federation, load_federation
from fedsim.modelzoo import initial_model, resolve_device
from fedsim.participation import ParticipationSampler
from fedsim.payloads import Identity
from fedsim.records import arrays_from_state, message_nbytes, state_from_arrays
from fedsim.tracking import (
    Callback,
    JsonlCallback,
    ProgressCallback,
    StatusCallback,
    TensorBoardCallback,
)
from strategies import REGISTRY
from strategies.base import FedsimStrategy, StrategyContext

log = logging.getLogger(__name__)

HPARAM_METRICS = ["eval/acc", "eval/global_acc", "train/loss"]


def run_dir_for(cfg: RunConfig) -> Path:
    """``<output_dir>/<experiment or scenario>/<strategy>/[<tag>/]seed-<S>``."""
    group = cfg.experiment or cfg.scenario.name
    parts = [cfg.output_dir, group, cfg.strategy.name]
    if cfg.tag:
        parts.append(cfg.tag)
    parts.append(f"seed-{cfg.seed}")
    return Path(*parts)


def discover_nodes(grid: Grid, num_clients: int, timeout: float) -> dict[int, int]:
    """Map partition ids to node ids: ask every node which partition it hosts."""
    shortcut = getattr(grid, "node_map", None)
    if callable(shortcut):  # the inline grid knows it without a round trip
        return dict(shortcut())
    nodes = list(grid.get_node_ids())
    msgs = [Message(RecordDict(), dst_node_id=n, message_type=MessageType.QUERY) for n in nodes]
    replies = grid.send_and_receive(msgs, timeout=timeout)
    out: dict[int, int] = {}
    for r in replies:
        if not r.has_error():
            out[Identity.from_record(r.content).partition_id] = r.metadata.src_node_id
    missing = num_clients - len(out)
    if missing:
        log.warning("%d of %d clients did not answer the start-up query", missing, num_clients)
    return out


def default_callbacks(cfg: RunConfig, run_dir: Path) -> list[Callback]:
    return [
        StatusCallback(run_dir),
        JsonlCallback(run_dir),
        TensorBoardCallback(run_dir),
        ProgressCallback(cfg.rounds, cfg.progress),
    ]


def partition_report(fed: Federation, run_dir: Path) -> tuple[str, Any]:
    from fedsim.report import partition_heatmap, partition_table

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

    def __init__(self, cfg: RunConfig, fed: Federation) -> None:
        self.device = resolve_device(cfg.device)
        self.model = initial_model(
            cfg.backbone, fed.data.input_shape, fed.data.num_classes, cfg.seed
        ).to(self.device)
        self.x, self.y = fed.data.test_x, fed.data.test_y
        self.precision = cfg.precision

    def __call__(self, arrays: ArrayRecord) -> dict[str, float]:
        self.model.load_state_dict(state_from_arrays(arrays), strict=True)
        acc, loss = evaluate_model(
            self.model, self.x, self.y, self.device, precision=self.precision
        )
        return {"eval/global_acc": acc, "eval/global_loss": loss}


def _prefixed(prefix: str, record: Any) -> dict[str, float]:
    if record is None:
        return {}
    return {f"{prefix}/{k}": float(v) for k, v in record.items() if k != "num-examples"}


def run_experiment(
    grid: Grid,
    cfg: RunConfig,
    run_dir: Path,
    callbacks: Iterable[Callback] | None = None,
) -> dict[str, float]:
    """Run all rounds of an experiment on ``grid``; returns the final metrics."""
    fed = load_federation(cfg.scenario, cfg.seed)
    spec = REGISTRY[cfg.strategy.name]
    model = initial_model(cfg.backbone, fed.data.input_shape, fed.data.num_classes, cfg.seed)
    local_keys = frozenset(spec.client_class().local_keys(model))
    node_of = discover_nodes(grid, cfg.scenario.num_clients, cfg.runtime.timeout)
    sampler = ParticipationSampler(cfg.scenario.participation, cfg.scenario.num_clients, cfg.seed)
    strategy: FedsimStrategy = spec.server_class()(
        StrategyContext(cfg, sampler, node_of, local_keys, list(fed.data.domains))
    )
    server_eval = (
        ServerEval(cfg, fed)
        if strategy.has_global_model
        and cfg.scenario.evaluation.global_test
        and len(fed.data.test_y)
        else None
    )
    run_dir.mkdir(parents=True, exist_ok=True)
    cbs = list(callbacks) if callbacks is not None else default_callbacks(cfg, run_dir)
    plain = to_plain(cfg)
    text, image = partition_report(fed, run_dir)
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
        },
        "hparam_metrics": [f"hparams/{m}" for m in HPARAM_METRICS],
        "partition_text": text,
        "partition_image": image,
        "start_round": 1,
        "layout": None,
    }
    for cb in cbs:
        cb.on_start(info)

    arrays = arrays_from_state(model.state_dict())
    totals = {"comm/bytes_up_total": 0.0, "comm/bytes_down_total": 0.0}
    last: dict[str, float] = {}
    status = "failed"
    t_run = time.perf_counter()
    try:
        for rnd in range(1, cfg.rounds + 1):
            t0 = time.perf_counter()
            out = list(strategy.configure_train(rnd, arrays, ConfigRecord(), grid))
            replies = list(grid.send_and_receive(out, timeout=cfg.runtime.timeout)) if out else []
            up = message_nbytes(r for r in replies if not r.has_error())
            down = message_nbytes(out)
            new_arrays, train_metrics = strategy.aggregate_train(rnd, replies)
            if new_arrays is not None:
                arrays = new_arrays
            totals["comm/bytes_up_total"] += up
            totals["comm/bytes_down_total"] += down
            metrics: dict[str, float] = {
                **_prefixed("train", train_metrics),
                "comm/bytes_up": float(up),
                "comm/bytes_down": float(down),
                **totals,
                **strategy.stats,
            }
            metrics.pop("train/steps", None)
            metrics.update(strategy.round_metrics(rnd, arrays))
            if rnd % cfg.eval_every == 0 or rnd == cfg.rounds:
                emsgs = list(strategy.configure_evaluate(rnd, arrays, ConfigRecord(), grid))
                ereplies = (
                    list(grid.send_and_receive(emsgs, timeout=cfg.runtime.timeout)) if emsgs else []
                )
                metrics.update(_prefixed("eval", strategy.aggregate_evaluate(rnd, ereplies)))
                if server_eval is not None:
                    metrics.update(server_eval(arrays))
            metrics["time/round_s"] = time.perf_counter() - t0
            metrics["time/elapsed_s"] = time.perf_counter() - t_run
            last.update(metrics)
            for cb in cbs:
                cb.on_round(rnd, metrics)
        torch.save(state_from_arrays(arrays), run_dir / "final_model.pt")
        status = "complete"
    except KeyboardInterrupt:
        status = "interrupted"
        raise
    finally:
        summary = {
            k: v for k, v in last.items() if k in HPARAM_METRICS or k.startswith("comm/bytes_")
        }
        summary["rounds"] = float(cfg.rounds)
        summary["wall_s"] = time.perf_counter() - t_run
        for cb in cbs:
            cb.on_end(summary, status)
    return last
