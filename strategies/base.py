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
* the communication channels (``channel.up`` / ``channel.down``, :mod:`fedsim.channels`):
  the downlink is encoded per message (a fresh RandK mask per client), and a lossy uplink
  carries the client's *update* (its arrays minus the arrays it decoded), which the server
  decodes and adds back before aggregating.  A lossy downlink compresses the model
  itself (FedAvg has no downlink reference point).  With both channels ``identity`` the
  messages are exactly those of a run without channels;
* per-round system statistics (``sys/...``) for the tracking callbacks.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field, replace

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg as FlowerFedAvg

from fedsim.channels import make_channel
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
        self.up = make_channel(ctx.cfg.channel.up)
        self.down = make_channel(ctx.cfg.channel.down)
        self._received: dict[int, dict[str, np.ndarray]] = {}  # what each client decoded

    def initial_arrays(self) -> ArrayRecord | None:
        """The round-0 arrays when the strategy, not the backbone, defines them (problems
        without a model, e.g. ``fedsim.problems``); None = the backbone's initial weights."""
        return None

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
        """One message per client that some node hosts; the others count as unreachable."""
        pids = [int(p) for p in pids]
        hosted = [p for p in pids if p in self.ctx.node_of]
        if kind == MessageType.TRAIN:
            self.stats["sys/unreachable_clients"] = float(len(pids) - len(hosted))
        return [
            Message(content=record, dst_node_id=self.ctx.node_of[p], message_type=kind)
            for p in hosted
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
        if self.down.name == "identity" and self.up.name == "identity":
            ins = TrainIns(self.shared(arrays), server_round, settings)
            return self._messages(ins.to_record(), sent, MessageType.TRAIN)
        return self._encoded_messages(server_round, self.shared(arrays), settings, sent)

    def _encoded_messages(
        self, server_round: int, shared: ArrayRecord, settings: dict[str, Scalar], pids: list[int]
    ) -> list[Message]:
        """One message per client through ``channel.down``; remember what each decodes."""
        like = numpy_from_arrays(shared)
        self._received = {}
        out: list[Message] = []
        hosted = [p for p in pids if p in self.ctx.node_of]
        unreachable = float(len(pids) - len(hosted))
        for pid in hosted:
            payload = shared
            self._received[pid] = like
            if self.down.name != "identity":
                rng = derive_rng(self.ctx.cfg.seed, "channel/down", server_round, pid)
                payload = self.down.encode(like, rng)
                self._received[pid] = self.down.decode(payload, like)
            ins = TrainIns(payload, server_round, settings)
            out.extend(self._messages(ins.to_record(), [pid], MessageType.TRAIN))
        self.stats["sys/unreachable_clients"] = unreachable
        return out

    def _decode_update(self, pid: int, res: TrainRes) -> TrainRes:
        """A lossy uplink carries ``arrays - received``: add back what the client decoded."""
        ref = self._received.get(pid)
        if self.up.name == "identity" or ref is None:
            return res
        delta = self.up.decode(res.arrays, ref)
        full = {
            k: (ref[k] + d).astype(ref[k].dtype) if np.issubdtype(d.dtype, np.floating) else d
            for k, d in delta.items()
        }
        return replace(res, arrays=arrays_from_numpy(full))

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
            res = self._decode_update(pid, TrainRes.from_record(msg.content))
            update = numpy_from_arrays(res.arrays)
            norm = update_norm(update, self._global)  # non-finite if any NaN/Inf it covers
            uncovered = {k: v for k, v in update.items() if k not in self._global}
            if not np.isfinite(norm) or not is_finite_update(uncovered):
                rejected.append(pid)
                log.warning(
                    "round %d: client %d sent non-finite values; rejected", server_round, pid
                )
                continue
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
        if frac == 0.0:
            return []
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
    per_client = dict(sorted(per_client.items()))  # arrival order must not change the sums
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
