"""What a run builds before its first round: data, model, node map, strategy, evaluation.

:func:`setup` turns a validated configuration into an :class:`Experiment`, the state the
round loop (:mod:`fedsim.engine.server`) then advances.  It is separate from the loop
because it runs once and touches everything else (the task's workload, the registry, the
run directory's metadata and partition picture), while the loop only talks to the clients
through Flower's ``Grid``; :func:`build_strategy` is also what the runner uses on its own.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from flwr.app import ArrayRecord
from flwr.serverapp import Grid
from torch import nn

from fedsim.algorithms.client import kept_keys
from fedsim.algorithms.dp import wrap_dp
from fedsim.algorithms.registry import get
from fedsim.algorithms.strategy import ServerContext
from fedsim.algorithms.wrap.server import FedsimStrategy
from fedsim.config import RunConfig
from fedsim.data.faults import byzantine_clients
from fedsim.data.federation import Federation
from fedsim.data.participation import ParticipationSampler
from fedsim.engine.conf import to_plain
from fedsim.engine.context import context_for
from fedsim.engine.nodes import discover_nodes
from fedsim.engine.selection import Selection
from fedsim.models.modelzoo import resolve_device
from fedsim.records import arrays_from_state, state_from_arrays
from fedsim.tracking.figures import confusion_image, evaluate_with_confusion
from fedsim.tracking.tb_layout import (
    HPARAM_EXTRA,
    HPARAM_METRICS,
    custom_scalars_layout,
    tag_hparams,
)


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
    #: wall seconds of the rounds before ``start_round`` (a resumed run's earlier
    #: processes), so ``time/elapsed_s`` counts the whole run, not the last process
    elapsed_before: float = 0.0


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
