"""Shared server-side machinery: fedsim's participation model on Flower's FedAvg hooks.

Every fedsim strategy is a ``flwr.serverapp.strategy.FedAvg`` subclass, so it keeps
Flower's four hooks (``configure_train``, ``aggregate_train``, ``configure_evaluate``,
``aggregate_evaluate``) and runs unchanged under any Grid (inline, Ray simulation,
deployment).  What fedsim adds here, once for all strategies:

* client selection from the scenario's :class:`~fedsim.participation.ParticipationSampler`
  (deterministic per ``(seed, round)``, availability, dropouts, stragglers), instead of
  Flower's unseeded ``random.sample``;
* keys that stay on the clients (FedBN's BN layers, ...) are neither sent nor aggregated;
* replies that are errors, non-finite or of absurd norm are excluded and counted;
* per-round system statistics (``sys/...``) for the tracking callbacks.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg as FlowerFedAvg

from fedsim.config import RunConfig
from fedsim.participation import ParticipationSampler
from fedsim.payloads import EvalIns, EvalRes, Scalar, TrainIns, TrainRes
from fedsim.records import arrays_from_numpy, numpy_from_arrays
from fedsim.seeding import derive_rng
from strategies.aggregate import is_finite_update, update_norm, weighted_average

log = logging.getLogger(__name__)


@dataclass
class StrategyContext:
    """What a strategy needs to know about the federation it runs on."""

    cfg: RunConfig
    sampler: ParticipationSampler
    node_of: dict[int, int]  # partition id -> Flower node id
    local_keys: frozenset[str] = frozenset()
    domain_names: list[str] = field(default_factory=list)
    max_update_norm: float = 1e6  # replies farther than this from the global model are rejected

    @property
    def partition_of(self) -> dict[int, int]:
        return {node: pid for pid, node in self.node_of.items()}


class FedsimStrategy(FlowerFedAvg):
    """FedAvg (McMahan et al., 2017, arXiv 1602.05629) with fedsim's participation model.

    Subclasses override :meth:`train_config` (extra settings sent with the arrays),
    :meth:`aggregate_arrays` (the maths) or the Flower hooks themselves.
    """

    #: False when the aggregated arrays are not a complete model (e.g. FedBN keeps its
    #: BN layers on the clients), so the server cannot evaluate it centrally.
    has_global_model = True

    def __init__(self, ctx: StrategyContext) -> None:
        part = ctx.cfg.scenario.participation
        super().__init__(min_train_nodes=part.min_clients, min_available_nodes=1)
        self.ctx = ctx
        self._global: dict[str, np.ndarray] = {}
        self.stats: dict[str, float] = {}

    # ------------------------------------------------------------------ helpers
    def shared(self, arrays: ArrayRecord) -> ArrayRecord:
        """The part of the global arrays that goes on the wire."""
        if not self.ctx.local_keys:
            return arrays
        return ArrayRecord({k: v for k, v in arrays.items() if k not in self.ctx.local_keys})

    def train_config(self, server_round: int) -> dict[str, Scalar]:
        """Extra settings sent to every client with the arrays (FedProx: its mu)."""
        return {}

    def round_metrics(self, server_round: int, arrays: ArrayRecord) -> dict[str, float]:
        """Strategy-specific scalars logged after each round (slash-namespaced names)."""
        return {}

    def state_dict(self) -> dict[str, np.ndarray]:
        """Server-side state a checkpoint must keep (optimizer moments, reference
        points, centroids, ...); NumPy arrays only.  Stateless strategies return {}."""
        return {}

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        """Restore what :meth:`state_dict` returned."""

    def aggregate_arrays(self, results: list[tuple[int, TrainRes]]) -> dict[str, np.ndarray]:
        """Sample-size weighted average of the clients' shared arrays."""
        updates = [numpy_from_arrays(res.arrays) for _, res in results]
        return weighted_average(updates, [res.num_examples for _, res in results])

    def _messages(self, record: RecordDict, pids: Iterable[int], kind: str) -> list[Message]:
        return [
            Message(content=record, dst_node_id=self.ctx.node_of[int(p)], message_type=kind)
            for p in pids
        ]

    # ------------------------------------------------------------------ train
    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        plan = self.ctx.sampler.plan(server_round)
        self._global = numpy_from_arrays(arrays)
        gone = set(plan.dropped.tolist()) | set(plan.late.tolist())
        sent = [p for p in plan.selected.tolist() if p not in gone]
        self.stats = {
            "sys/available_clients": float(len(plan.available)),
            "sys/selected_clients": float(len(plan.selected)),
            "sys/dropped_clients": float(len(plan.dropped)),
            "sys/late_clients": float(len(plan.late)),
        }
        if plan.skip:
            log.warning("round %d skipped: %s", server_round, plan.reason)
            self.stats["sys/skipped_round"] = 1.0
            return []
        settings: dict[str, Scalar] = {k: v for k, v in config.items() if isinstance(v, Scalar)}
        settings.update(self.train_config(server_round))
        ins = TrainIns(self.shared(arrays), server_round, settings)
        return self._messages(ins.to_record(), sent, MessageType.TRAIN)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        partition_of = self.ctx.partition_of
        accepted: list[tuple[int, TrainRes]] = []
        failed: list[int] = []
        rejected: list[int] = []
        for msg in replies:
            pid = partition_of.get(msg.metadata.src_node_id, -1)
            if msg.has_error():
                failed.append(pid)
                log.warning("round %d: client %d failed: %s", server_round, pid, msg.error.reason)
                continue
            res = TrainRes.from_record(msg.content)
            update = numpy_from_arrays(res.arrays)
            if not is_finite_update(update):
                rejected.append(pid)
                log.warning(
                    "round %d: client %d sent non-finite values; rejected", server_round, pid
                )
                continue
            norm = update_norm(update, self._global)
            if norm > self.ctx.max_update_norm:
                rejected.append(pid)
                log.warning(
                    "round %d: client %d update norm %.3g > %.3g; rejected",
                    server_round,
                    pid,
                    norm,
                    self.ctx.max_update_norm,
                )
                continue
            accepted.append((pid, res))
        self.stats.update(
            {
                "sys/failed_clients": float(len(failed)),
                "sys/rejected_updates": float(len(rejected)),
                "sys/aggregated_clients": float(len(accepted)),
            }
        )
        minimum = self.ctx.cfg.scenario.participation.min_clients
        if len(accepted) < max(1, minimum):
            if "sys/skipped_round" not in self.stats:
                log.warning(
                    "round %d: only %d usable replies (< min_clients %d); global model kept",
                    server_round,
                    len(accepted),
                    minimum,
                )
                self.stats["sys/skipped_round"] = 1.0
            return None, None
        accepted.sort(key=lambda item: item[0])  # aggregation order independent of arrival order
        merged = dict(self._global)
        merged.update(self.aggregate_arrays(accepted))
        total = sum(res.num_examples for _, res in accepted)
        metrics: dict[str, float] = {"num-examples": float(total)}
        keys = set().union(*(res.metrics.keys() for _, res in accepted))
        for key in sorted(keys):
            vals = [
                (res.metrics[key], res.num_examples) for _, res in accepted if key in res.metrics
            ]
            metrics[key] = float(sum(v * n for v, n in vals) / max(1, sum(n for _, n in vals)))
        return arrays_from_numpy(merged), MetricRecord(metrics)  # type: ignore[arg-type]

    # ------------------------------------------------------------------ evaluate
    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        frac = self.ctx.cfg.scenario.evaluation.fraction
        pids = np.array(sorted(self.ctx.node_of))
        if frac < 1.0:
            rng = derive_rng(self.ctx.cfg.seed, "evaluate", server_round)
            k = max(1, round(frac * len(pids)))
            pids = np.sort(rng.choice(pids, size=k, replace=False))
        ins = EvalIns(self.shared(arrays), server_round)
        return self._messages(ins.to_record(), pids.tolist(), MessageType.EVALUATE)

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        partition_of = self.ctx.partition_of
        per_client: dict[int, EvalRes] = {}
        for msg in replies:
            if msg.has_error():
                log.warning(
                    "round %d: evaluation failed on client %s: %s",
                    server_round,
                    partition_of.get(msg.metadata.src_node_id),
                    msg.error.reason,
                )
                continue
            per_client[partition_of[msg.metadata.src_node_id]] = EvalRes.from_record(msg.content)
        if not per_client:
            return None
        return MetricRecord(summarise_evaluation(per_client, self.ctx.domain_names))  # type: ignore[arg-type]


def summarise_evaluation(
    per_client: dict[int, EvalRes], domain_names: list[str]
) -> dict[str, float]:
    """Mean over clients (unweighted), sample-weighted mean, per client and per domain."""
    accs = {pid: res.metrics["acc"] for pid, res in per_client.items()}
    n = {pid: res.num_examples for pid, res in per_client.items()}
    out: dict[str, float] = {
        "acc": float(np.mean(list(accs.values()))),
        "acc_weighted": float(sum(accs[p] * n[p] for p in accs) / max(1, sum(n.values()))),
        "loss": float(np.mean([res.metrics["loss"] for res in per_client.values()])),
    }
    for pid in sorted(accs):
        out[f"acc_client/{pid}"] = accs[pid]
    by_domain: dict[str, list[float]] = {}
    for pid, res in per_client.items():
        d = int(res.metrics.get("domain", 0))
        name = domain_names[d] if d < len(domain_names) else str(d)
        by_domain.setdefault(name, []).append(accs[pid])
    if len(by_domain) > 1:
        for name, vals in sorted(by_domain.items()):
            out[f"acc_domain/{name}"] = float(np.mean(vals))
    return out
