"""The server-side wrapper every strategy runs in, fedsim's own or Flower's.

:class:`FedsimStrategy` is itself a ``flwr.serverapp.strategy.Strategy`` that wraps any
other one (as Flower's differential-privacy strategies do) and adds, once for all:

* participation: the scenario's :class:`~fedsim.data.participation.ParticipationSampler`
  (deterministic per ``(seed, round)``: availability, dropouts, stragglers, deadlines)
  decides who trains; the wrapped strategy sees a grid (:class:`NodeView`) that lists
  exactly those clients, so Flower's own samplers (``fraction_train=1``) take them all;
* keys that stay on the clients: never sent, never aggregated;
* the channels (``channel.up`` / ``channel.down``): the server's end of the run's links
  (:func:`fedsim.algorithms.channels.build_links`, built once per run).  Every
  floating-point array record of a training message is encoded per client on the
  downlink; on the uplink a record the client also received travels as the *update*
  ``sent - received`` (decoded and added back here), any other record uncompressed.  With
  both channels ``identity`` the messages are exactly those of a run without channels;
* reply filtering: errors, non-finite values and updates of absurd norm are left out
  and counted, and replies reach the wrapped strategy sorted by client id;
* per-round system statistics (``sys/...``) and the evaluation summary.

Algorithms that *are* a compression method (MASHA: ``AlgorithmSpec.native_channels``)
apply the same links themselves; their messages pass through unencoded.

The wrapper calls the algorithm through its declared contract,
:class:`fedsim.algorithms.strategy.Algorithm`, found by type (:func:`algorithm_of`, also inside
Flower's differential-privacy wrappers; Flower's own strategies get
:class:`FlowerAlgorithm`'s defaults), never by probing attribute names.  It keeps the
round's global arrays once, in ``ctx.global_arrays``, which the algorithm reads too, and
completes an aggregate with the keys the algorithm did not aggregate.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterable
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy as FlowerStrategy

from fedsim.algorithms.aggregate import is_finite_update, update_norm
from fedsim.algorithms.channels import Links, build_links
from fedsim.algorithms.payloads import ARRAYS, EvalRes
from fedsim.algorithms.strategy import Algorithm, ServerContext
from fedsim.algorithms.wrap.state import flower_state, load_flower_state, wrapped_strategy
from fedsim.data.participation import ParticipationSampler
from fedsim.records import array_records, arrays_from_numpy, numpy_from_arrays, record_dict
from fedsim.seeding import derive_rng

log = logging.getLogger(__name__)

#: Evaluation metrics of a wrapped strategy's own summary that fedsim's summary replaces.
NOT_SUMMARISED = frozenset({"domain", "num-examples"})


class NodeView(Grid):
    """A grid that lists only ``node_ids``; everything else is the wrapped grid's."""

    def __init__(self, grid: Grid, node_ids: list[int]) -> None:
        self._grid = grid
        self._nodes = list(node_ids)

    def get_node_ids(self) -> Iterable[int]:
        return list(self._nodes)

    def set_run(self, run: Any) -> None:
        self._grid.set_run(run)

    @property
    def run(self) -> Any:
        return self._grid.run

    def create_message(self, *args: Any, **kwargs: Any) -> Message:
        return self._grid.create_message(*args, **kwargs)

    def push_messages(self, messages: Iterable[Message], *a: Any, **k: Any) -> Iterable[str]:
        return self._grid.push_messages(messages, *a, **k)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self._grid.pull_messages(message_ids)

    def send_and_receive(self, messages: Iterable[Message], *a: Any, **k: Any) -> Any:
        return self._grid.send_and_receive(messages, *a, **k)


class FlowerAlgorithm(Algorithm):
    """fedsim's contract for a Flower strategy that does not implement it (FedAdam, Krum,
    ...): the defaults, and on the wire only the floating-point arrays that are not local
    (Flower's maths casts integer buffers such as BatchNorm's ``num_batches_tracked`` to
    float; the clients keep their own).  Their state is :mod:`fedsim.algorithms.wrap.state`'s."""

    def __init__(self, ctx: ServerContext) -> None:
        self.ctx = ctx

    def shared(self, arrays: ArrayRecord) -> ArrayRecord:
        local = self.ctx.local_keys
        return ArrayRecord(
            {
                k: v
                for k, v in arrays.items()
                if k not in local and np.issubdtype(np.dtype(v.dtype), np.floating)
            }
        )


def algorithm_of(inner: FlowerStrategy, ctx: ServerContext) -> Algorithm:
    """The algorithm inside ``inner`` (inside Flower's differential-privacy wrappers, if
    any), or the defaults for a Flower strategy."""
    core = wrapped_strategy(inner)
    return core if isinstance(core, Algorithm) else FlowerAlgorithm(ctx)


class FedsimStrategy(FlowerStrategy):
    """Participation, channels, local keys and reply filtering around ``inner``."""

    def __init__(
        self,
        inner: FlowerStrategy,
        ctx: ServerContext,
        sampler: ParticipationSampler,
        *,
        byzantine: frozenset[int] = frozenset(),
        max_update_norm: float = 1e6,
    ) -> None:
        self.inner = inner
        self.ctx = ctx
        self.sampler = sampler
        self.byzantine = byzantine
        self.max_update_norm = max_update_norm
        self.links: Links = build_links(ctx.cfg)  # the algorithm's spec: native, exact records
        self.algorithm = algorithm_of(inner, ctx)
        self.stats: dict[str, float] = {}
        self._received: dict[int, dict[str, dict[str, np.ndarray]]] = {}  # pid -> record -> arrays

    # ------------------------------------------------------------------ the contract
    @property
    def has_global_model(self) -> bool:
        return self.algorithm.has_global_model

    def initial_arrays(self) -> ArrayRecord | None:
        return self.algorithm.initial_arrays()

    def check_initial(self, arrays: ArrayRecord) -> None:
        """The algorithm's checks that need the initial arrays (run at preflight)."""
        self.algorithm.check_initial(arrays)

    def shared(self, arrays: ArrayRecord) -> ArrayRecord:
        return self.algorithm.shared(arrays)

    def round_metrics(self, server_round: int, arrays: ArrayRecord) -> dict[str, float]:
        return self.algorithm.round_metrics(server_round, arrays)

    def state_dict(self) -> dict[str, np.ndarray]:
        """The algorithm's ``state_dict`` plus what Flower's strategies keep in attributes
        (moments, momentum, a clipping norm: :mod:`fedsim.algorithms.wrap.state`)."""
        out = flower_state(self.inner)
        out.update(self.algorithm.state_dict())
        return out

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        load_flower_state(self.inner, state)
        self.algorithm.load_state_dict(state)

    def summary(self) -> None:
        self.inner.summary()

    # ------------------------------------------------------------------ train
    def _nodes(self, pids: Iterable[int]) -> list[int]:
        return [self.ctx.node_of[p] for p in pids if p in self.ctx.node_of]

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        plan = self.sampler.plan(server_round)
        self.ctx.global_arrays = numpy_from_arrays(arrays)
        gone = set(plan.dropped.tolist()) | set(plan.late.tolist())
        sent = [p for p in plan.selected.tolist() if p not in gone]
        nodes = self._nodes(sent)
        self.stats = {
            "sys/available_clients": float(len(plan.available)),
            "sys/selected_clients": float(len(plan.selected)),
            "sys/dropped_clients": float(len(plan.dropped)),
            "sys/late_clients": float(len(plan.late)),
            "sys/unreachable_clients": float(len(sent) - len(nodes)),
        }
        if plan.skip or not nodes:
            log.warning("round %d skipped: %s", server_round, plan.reason or "no client")
            self.stats["sys/skipped_round"] = 1.0
            return []
        out = list(
            self.inner.configure_train(
                server_round, self.shared(arrays), config, NodeView(grid, nodes)
            )
        )
        if not self.links.coded:
            return out
        self._received = {}
        return [self._encode_down(server_round, m) for m in out]

    def _encode_down(self, server_round: int, msg: Message) -> Message:
        """One client's message through ``channel.down``; remember what it decodes."""
        pid = self.ctx.partition_of[msg.metadata.dst_node_id]
        sent = self.links.down.send(array_records(msg.content), server_round, pid)
        _, self._received[pid] = self.links.delivered(sent)
        content = record_dict(msg.content)
        for name, record in sent.items():
            content[name] = record
        return Message(
            content, dst_node_id=msg.metadata.dst_node_id, message_type=msg.metadata.message_type
        )

    def _decode_up(self, pid: int, msg: Message) -> Message:
        """The reply with the full arrays put back, if it came through ``channel.up``
        (a copy: the message as it travelled stays as it was)."""
        # copies down to the record mappings: some of Flower's strategies pop arrays out
        content = record_dict(
            {k: _shallow(v) if isinstance(v, ArrayRecord) else v for k, v in msg.content.items()}
        )
        decoded = copy.copy(msg)
        decoded.__dict__["_content"] = content
        if not self.links.coded or self.links.up.verbatim:
            return decoded
        travelled = dict(array_records(msg.content))
        received = self.links.up.receive(travelled, reference=self._received.get(pid, {}))
        for name, record in received.items():
            if record is not travelled[name]:  # decoded; the others stay the copies above
                content[name] = record
        return decoded

    def _usable(self, server_round: int, pid: int, msg: Message) -> bool:
        """False (and logged) for replies with non-finite values or an absurd update."""
        records = {n: numpy_from_arrays(r) for n, r in array_records(msg.content).items()}
        model = records.pop(ARRAYS, {})
        current = self.ctx.global_arrays
        norm = update_norm(model, current)  # non-finite if any NaN/Inf it covers
        rest = {f"{n}/{k}": v for n, arrs in records.items() for k, v in arrs.items()}
        rest.update({k: v for k, v in model.items() if k not in current})
        if not np.isfinite(norm) or not is_finite_update(rest):
            log.warning("round %d: client %d sent non-finite values; rejected", server_round, pid)
            return False
        if self.links.native:
            return True  # not a model update (MASHA's operators): finiteness is the check
        if norm > self.max_update_norm:
            log.warning(
                "round %d: client %d update norm %.3g > %.3g; rejected",
                server_round,
                pid,
                norm,
                self.max_update_norm,
            )
            return False
        return True

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        partition_of = self.ctx.partition_of
        accepted: list[tuple[int, Message]] = []
        failed = rejected = 0
        for msg in replies:
            pid = partition_of.get(msg.metadata.src_node_id, -1)
            if msg.has_error():
                failed += 1
                log.warning("round %d: client %d failed: %s", server_round, pid, msg.error.reason)
                continue
            msg = self._decode_up(pid, msg)
            if self._usable(server_round, pid, msg):
                accepted.append((pid, msg))
            else:
                rejected += 1
        accepted.sort(key=lambda item: item[0])  # aggregation order independent of arrival
        self.stats.update(
            {
                "sys/failed_clients": float(failed),
                "sys/rejected_updates": float(rejected),
                "sys/aggregated_clients": float(len(accepted)),
            }
        )
        if self.byzantine:
            self.stats["sys/byzantine_clients"] = float(
                sum(pid in self.byzantine for pid, _ in accepted)
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
        arrays, metrics = self.inner.aggregate_train(server_round, [m for _, m in accepted])
        if arrays is None:
            return None, metrics
        self.stats.update(self.algorithm.round_stats())
        merged = dict(self.ctx.global_arrays)  # the keys the algorithm did not aggregate
        merged.update(numpy_from_arrays(arrays))
        return arrays_from_numpy(merged), metrics

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
        view = NodeView(grid, self._nodes(pids.tolist()))
        return self.inner.configure_evaluate(server_round, self.shared(arrays), config, view)

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        replies = list(replies)
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
        extra = self.inner.aggregate_evaluate(
            server_round, [m for m in replies if not m.has_error()]
        )
        if not per_client:
            return None
        out = summarise_evaluation(per_client, self.ctx.domain_names)
        for key, value in (extra or {}).items():  # what the strategy adds (FedoSSL: open world)
            if key not in out and key not in NOT_SUMMARISED:
                out[key] = float(value)  # type: ignore[arg-type]
        return MetricRecord(out)  # type: ignore[arg-type]


def summarise_evaluation(
    per_client: dict[int, EvalRes], domain_names: list[str]
) -> dict[str, float]:
    """Mean over clients (unweighted), sample-weighted mean, per client and per domain;
    any other metric the clients report is averaged over clients too."""
    per_client = dict(sorted(per_client.items()))  # arrival order must not change the sums
    accs = {pid: res.metrics["acc"] for pid, res in per_client.items()}
    n = {pid: res.num_examples for pid, res in per_client.items()}
    values = np.array(list(accs.values()))
    out: dict[str, float] = {
        "acc": float(np.mean(values)),
        "acc_weighted": float(sum(accs[p] * n[p] for p in accs) / max(1, sum(n.values()))),
        "loss": float(np.mean([res.metrics["loss"] for res in per_client.values()])),
        # the spread FL papers report beside the mean: 10th percentile and worst client
        "acc_p10": float(np.percentile(values, 10)),
        "acc_min": float(values.min()),
    }
    for pid in sorted(accs):
        out[f"acc_client/{pid}"] = accs[pid]
    vals = {
        pid: res.metrics["val_acc"] for pid, res in per_client.items() if "val_acc" in res.metrics
    }
    if vals:  # evaluation.validation_fraction: the selection split (fedsim.engine.selection)
        out["val_acc"] = float(np.mean(list(vals.values())))
        for pid in sorted(vals):
            out[f"val_acc_client/{pid}"] = vals[pid]
    by_domain: dict[str, list[float]] = {}
    for pid, res in per_client.items():
        d = int(res.metrics.get("domain", 0))
        name = domain_names[d] if d < len(domain_names) else str(d)
        by_domain.setdefault(name, []).append(accs[pid])
    if len(by_domain) > 1:
        for name, dom_accs in sorted(by_domain.items()):
            out[f"acc_domain/{name}"] = float(np.mean(dom_accs))
    return out


def _shallow(record: ArrayRecord) -> ArrayRecord:
    """A new ArrayRecord holding the same Array objects (``ArrayRecord(dict)`` would
    rebuild every Array once more)."""
    out = ArrayRecord()
    for name, arr in record.items():
        out[name] = arr
    return out
