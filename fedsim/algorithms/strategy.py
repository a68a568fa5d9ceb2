"""What a fedsim strategy is: the server half of an algorithm, as Flower sees it.

:class:`Algorithm` is the contract between an algorithm's server half and fedsim, beside
Flower's four hooks: its declared capabilities and the few calls fedsim makes (initial
arrays, what goes on the wire, per-round metrics, checkpoint state).
:class:`Strategy` is FedAvg (McMahan et al., 2017, arXiv 1602.05629) on Flower's four hooks
(``configure_train``, ``aggregate_train``, ``configure_evaluate``,
``aggregate_evaluate``) and that contract, with fedsim's typed payloads and a few narrower
hooks to override instead (:meth:`Strategy.train_config`, :meth:`Strategy.aggregate_arrays`,
:meth:`Algorithm.round_metrics`, :meth:`Algorithm.state_dict`).  It knows nothing of
participation, channels, local keys, faults or reply filtering: those wrap *every*
strategy — this one or any ``flwr.serverapp.strategy.Strategy`` — in
:class:`fedsim.algorithms.wrap.server.FedsimStrategy`, so no algorithm can forget them.  The
wrapper hands each hook a grid whose ``get_node_ids()`` are exactly the clients that take
part in the round, sorted, filtered, decoded replies, and the round's global arrays in
:attr:`ServerContext.global_arrays` (the one copy both read).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg as FlowerFedAvg

from fedsim.algorithms.aggregate import weighted_average
from fedsim.algorithms.payloads import EvalIns, Scalar, TrainIns, TrainRes
from fedsim.config import RunConfig
from fedsim.records import arrays_from_numpy, numpy_from_arrays, record_dict


@dataclass
class ServerContext:
    """What a strategy may know about the federation it runs on."""

    cfg: RunConfig
    node_of: dict[int, int] = field(default_factory=dict)  # partition id -> node id
    local_keys: frozenset[str] = frozenset()  # model keys that never leave the clients
    domain_names: list[str] = field(default_factory=list)
    # who takes part is the wrapper's business (fedsim.data.participation): every algorithm
    # sees its outcome only, as the node ids of the grid its hooks receive
    #: the global arrays of the round in progress, every key (local ones included): set by
    #: the wrapper when it configures the round, read by the wrapper and the algorithm
    global_arrays: dict[str, np.ndarray] = field(default_factory=dict)

    _index: NodeIndex | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def partition_of(self) -> NodeIndex:
        """Node id -> partition id (the inverse of :attr:`node_of`), built once per run."""
        if self._index is None or self._index.node_of is not self.node_of:
            self._index = NodeIndex(self.node_of)
        return self._index


class NodeIndex(Mapping[int, int]):
    """The inverse of a ``node_of`` map, built once instead of on every lookup (an O(N)
    pass per round at a million registered clients).  Nodes rediscovered in place
    (``fedsim.engine.nodes.rediscover_nodes``) are caught on the next lookup: a hit is
    checked against ``node_of``, and a stale or missing entry rebuilds the index."""

    def __init__(self, node_of: dict[int, int]) -> None:
        self.node_of = node_of
        self._inverse: dict[int, int] = {}
        self._rebuild()

    def _rebuild(self) -> None:
        self._inverse = {node: pid for pid, node in self.node_of.items()}

    def __getitem__(self, node: int) -> int:
        pid = self._inverse.get(node)
        if pid is None or self.node_of.get(pid) != node:
            self._rebuild()
            pid = self._inverse[node]  # KeyError: no partition runs on that node
        return pid

    def __iter__(self) -> Iterator[int]:
        if len(self._inverse) != len(self.node_of):
            self._rebuild()
        return iter(self._inverse)

    def __len__(self) -> int:
        return len(self.node_of)


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


class Algorithm(ABC):
    """The server half's contract with fedsim, beside Flower's four hooks.

    :class:`fedsim.algorithms.wrap.server.FedsimStrategy` calls exactly these on every algorithm; a
    Flower strategy that is not an ``Algorithm`` runs with
    :class:`fedsim.algorithms.wrap.server.FlowerAlgorithm`'s defaults.  Nothing is looked up by
    name.
    """

    #: capability: the aggregated arrays are a complete model that the server can evaluate
    #: centrally (False for FedBN, whose BN layers stay on the clients, or MASHA)
    has_global_model: ClassVar[bool] = True

    def initial_arrays(self) -> ArrayRecord | None:
        """The round-0 arrays when the strategy, not the backbone, defines them (a task
        without a network, e.g. ``bilinear``); None = the backbone's initial weights."""
        return None

    def check_initial(self, arrays: ArrayRecord) -> None:  # noqa: B027 (optional: none by default)
        """Checks that need the initial arrays (a file to load into them, ...): called at
        preflight, before the run directory is touched, so that a bad value never fails a
        run that already replaced another.  Raise ConfigError naming the key."""

    @abstractmethod
    def shared(self, arrays: ArrayRecord) -> ArrayRecord:
        """The part of the global arrays that goes on the wire."""

    def round_metrics(self, server_round: int, arrays: ArrayRecord) -> dict[str, float]:
        """Strategy-specific scalars logged after each round (slash-namespaced names)."""
        return {}

    def round_stats(self) -> dict[str, float]:
        """The algorithm's own counters of the round just aggregated (``masha/...``),
        logged beside the wrapper's ``sys/`` ones."""
        return {}

    def state_dict(self) -> dict[str, np.ndarray]:
        """Server-side state a checkpoint must keep; NumPy arrays only ({} = stateless)."""
        return {}

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:  # noqa: B027 (stateless default)
        """Restore what :meth:`state_dict` returned."""


class Strategy(FlowerFedAvg, Algorithm):
    """Sample-size weighted FedAvg; subclasses override the narrow hooks below."""

    def __init__(self, ctx: ServerContext) -> None:
        super().__init__(**flower_defaults())  # type: ignore[arg-type]
        self.ctx = ctx

    # ------------------------------------------------------------------ narrow hooks
    def shared(self, arrays: ArrayRecord) -> ArrayRecord:
        """The part of the global arrays that goes on the wire (all but local keys)."""
        if not self.ctx.local_keys:
            return arrays
        return ArrayRecord({k: v for k, v in arrays.items() if k not in self.ctx.local_keys})

    def train_config(self, server_round: int) -> dict[str, Scalar]:
        """Extra settings sent to every client with the arrays (FedProx: its mu)."""
        return {}

    def aggregate_arrays(self, results: list[tuple[int, TrainRes]]) -> dict[str, np.ndarray]:
        """Sample-size weighted average of the clients' arrays (the round's global arrays,
        if a rule needs them, are ``self.ctx.global_arrays``)."""
        updates = [numpy_from_arrays(res.arrays) for _, res in results]
        return weighted_average(updates, [res.num_examples for _, res in results])

    # ------------------------------------------------------------------ Flower hooks
    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
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
        # what was aggregated; the wrapper completes it with the global arrays' other keys
        aggregated = arrays_from_numpy(self.aggregate_arrays(results))
        return aggregated, MetricRecord(mean_metrics(results))  # type: ignore[arg-type]

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
    return [Message(record_dict(record), dst_node_id=n, message_type=kind) for n in node_ids]


def mean_metrics(results: list[tuple[int, TrainRes]]) -> dict[str, float]:
    """Sample-weighted mean of each training metric, plus the total sample count."""
    metrics: dict[str, float] = {"num-examples": float(sum(r.num_examples for _, r in results))}
    for key in sorted(set().union(*(r.metrics.keys() for _, r in results))):
        vals = [(r.metrics[key], r.num_examples) for _, r in results if key in r.metrics]
        metrics[key] = float(sum(v * n for v, n in vals) / max(1, sum(n for _, n in vals)))
    return metrics
