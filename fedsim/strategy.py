"""What a fedsim strategy is: the server half of an algorithm, as Flower sees it.

:class:`Strategy` is FedAvg (McMahan et al., 2017, arXiv 1602.05629) on Flower's four hooks
(``configure_train``, ``aggregate_train``, ``configure_evaluate``,
``aggregate_evaluate``), with fedsim's typed payloads and a few narrower hooks to
override instead (:meth:`Strategy.train_config`, :meth:`Strategy.aggregate_arrays`,
:meth:`Strategy.round_metrics`, :meth:`Strategy.state_dict`).  It knows nothing of
participation, channels, local keys, faults or reply filtering: those wrap *every*
strategy — this one or any ``flwr.serverapp.strategy.Strategy`` — in
:class:`fedsim.wrap.server.FedsimStrategy`, so no algorithm can forget them.  The
wrapper hands each hook a grid whose ``get_node_ids()`` are exactly the clients that take
part in the round, and sorted, filtered, decoded replies.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg as FlowerFedAvg

from fedsim.aggregate import weighted_average
from fedsim.config import RunConfig
from fedsim.participation import ParticipationSampler
from fedsim.payloads import EvalIns, Scalar, TrainIns, TrainRes
from fedsim.records import arrays_from_numpy, numpy_from_arrays


@dataclass
class ServerContext:
    """What a strategy may know about the federation it runs on."""

    cfg: RunConfig
    node_of: dict[int, int] = field(default_factory=dict)  # partition id -> node id
    local_keys: frozenset[str] = frozenset()  # model keys that never leave the clients
    domain_names: list[str] = field(default_factory=list)
    #: who takes part in which round; the wrapper applies it, an algorithm that must
    #: message every device anyway (MASHA's sync rounds) may read it
    sampler: ParticipationSampler | None = None

    @property
    def partition_of(self) -> dict[int, int]:
        return {node: pid for pid, node in self.node_of.items()}


def flower_defaults() -> dict[str, float | int]:
    """Flower constructor settings under which the node view decides participation:
    every node the wrapper's grid lists takes part, none is waited for."""
    return {
        "fraction_train": 1.0,
        "fraction_evaluate": 1.0,
        "min_train_nodes": 1,
        "min_evaluate_nodes": 1,
        "min_available_nodes": 1,
    }


class Strategy(FlowerFedAvg):
    """Sample-size weighted FedAvg; subclasses override the narrow hooks below."""

    #: False when the aggregated arrays are not a complete model (e.g. FedBN keeps its
    #: BN layers on the clients), so the server cannot evaluate it centrally.
    has_global_model = True

    def __init__(self, ctx: ServerContext) -> None:
        super().__init__(**flower_defaults())  # type: ignore[arg-type]
        self.ctx = ctx
        self._global: dict[str, np.ndarray] = {}

    # ------------------------------------------------------------------ narrow hooks
    def initial_arrays(self) -> ArrayRecord | None:
        """The round-0 arrays when the strategy, not the backbone, defines them (problems
        without a model, e.g. ``fedsim.problems``); None = the backbone's initial weights."""
        return None

    def check_initial(self, arrays: ArrayRecord) -> None:
        """Checks that need the initial arrays (a file to load into them, ...): called at
        preflight, before the run directory is touched, so that a bad value never fails a
        run that already replaced another.  Raise ConfigError naming the key."""

    def shared(self, arrays: ArrayRecord) -> ArrayRecord:
        """The part of the global arrays that goes on the wire (all but local keys)."""
        if not self.ctx.local_keys:
            return arrays
        return ArrayRecord({k: v for k, v in arrays.items() if k not in self.ctx.local_keys})

    def train_config(self, server_round: int) -> dict[str, Scalar]:
        """Extra settings sent to every client with the arrays (FedProx: its mu)."""
        return {}

    def aggregate_arrays(self, results: list[tuple[int, TrainRes]]) -> dict[str, np.ndarray]:
        """Sample-size weighted average of the clients' arrays."""
        updates = [numpy_from_arrays(res.arrays) for _, res in results]
        return weighted_average(updates, [res.num_examples for _, res in results])

    def round_metrics(self, server_round: int, arrays: ArrayRecord) -> dict[str, float]:
        """Strategy-specific scalars logged after each round (slash-namespaced names)."""
        return {}

    def state_dict(self) -> dict[str, np.ndarray]:
        """Server-side state a checkpoint must keep; NumPy arrays only ({} = stateless)."""
        return {}

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        """Restore what :meth:`state_dict` returned."""

    # ------------------------------------------------------------------ Flower hooks
    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self._global = numpy_from_arrays(arrays)
        settings: dict[str, Scalar] = {k: v for k, v in config.items() if isinstance(v, Scalar)}
        settings.update(self.train_config(server_round))
        return [
            Message(
                TrainIns(arrays, server_round, settings).to_record(),
                dst_node_id=node,
                message_type=MessageType.TRAIN,
            )
            for node in grid.get_node_ids()
        ]

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        partition_of = self.ctx.partition_of
        results = [
            (partition_of.get(m.metadata.src_node_id, -1), TrainRes.from_record(m.content))
            for m in replies
        ]
        if not results:
            return None, None
        merged = dict(self._global)
        merged.update(self.aggregate_arrays(results))
        return arrays_from_numpy(merged), MetricRecord(mean_metrics(results))  # type: ignore[arg-type]

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return [
            Message(
                EvalIns(arrays, server_round).to_record(),
                dst_node_id=node,
                message_type=MessageType.EVALUATE,
            )
            for node in grid.get_node_ids()
        ]

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        return None  # the wrapper summarises every strategy's evaluation the same way


def messages_to(record: RecordDict, node_ids: Iterable[int], kind: str) -> list[Message]:
    """One message of ``kind`` per node, each with its own copy of the record dict."""
    return [
        Message(RecordDict(dict(record.items())), dst_node_id=n, message_type=kind)
        for n in node_ids
    ]


def mean_metrics(results: list[tuple[int, TrainRes]]) -> dict[str, float]:
    """Sample-weighted mean of each training metric, plus the total sample count."""
    metrics: dict[str, float] = {"num-examples": float(sum(r.num_examples for _, r in results))}
    for key in sorted(set().union(*(r.metrics.keys() for _, r in results))):
        vals = [(r.metrics[key], r.num_examples) for _, r in results if key in r.metrics]
        metrics[key] = float(sum(v * n for v, n in vals) / max(1, sum(n for _, n in vals)))
    return metrics
