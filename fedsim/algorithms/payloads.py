"""Typed payloads on the wire: what the server and the clients send each other.

Each payload is a frozen dataclass with ``to_record()`` / ``from_record()``; the record
keys (``arrays``, ``config``, ``metrics``, ``num-examples`` — Flower's defaults, so that
``flwr.serverapp.strategy`` helpers still apply) appear only in this module.  Algorithms
that send more (a generator, centroids, compressed vectors) declare their own payloads
next to their strategy and put extra arrays under their own record names.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from flwr.app import ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from fedsim.records import (
    array_records,
    config_records,
    metric_record,
    metric_records,
    record_dict,
)

ARRAYS = "arrays"
CONFIG = "config"
METRICS = "metrics"
NUM_EXAMPLES = "num-examples"
ROUND = "server-round"

Scalar = int | float | str | bool


@dataclass(frozen=True)
class TrainIns:
    """Server -> client: the shared arrays and the round's settings."""

    arrays: ArrayRecord
    server_round: int
    config: dict[str, Scalar] = field(default_factory=dict)
    extra: dict[str, ArrayRecord] = field(default_factory=dict)

    def to_record(self) -> RecordDict:
        content: dict[str, ArrayRecord | MetricRecord | ConfigRecord] = {
            ARRAYS: self.arrays,
            CONFIG: ConfigRecord({ROUND: self.server_round, **self.config}),
        }
        content.update(self.extra)
        return record_dict(content)

    @classmethod
    def from_record(cls, record: RecordDict) -> TrainIns:
        config = dict(config_records(record)[CONFIG])
        server_round = int(config.pop(ROUND))  # type: ignore[arg-type]  # ConfigRecord values are scalars here
        extra = {k: v for k, v in array_records(record).items() if k != ARRAYS}
        return cls(array_records(record)[ARRAYS], server_round, config, extra)  # type: ignore[arg-type]


@dataclass(frozen=True)
class TrainRes:
    """Client -> server: updated shared arrays, sample count and training metrics."""

    arrays: ArrayRecord
    num_examples: int
    metrics: dict[str, float] = field(default_factory=dict)
    extra: dict[str, ArrayRecord] = field(default_factory=dict)

    def to_record(self) -> RecordDict:
        content: dict[str, ArrayRecord | MetricRecord | ConfigRecord] = {
            ARRAYS: self.arrays,
            METRICS: metric_record({NUM_EXAMPLES: self.num_examples, **self.metrics}),
        }
        content.update(self.extra)
        return record_dict(content)

    @classmethod
    def from_record(cls, record: RecordDict) -> TrainRes:
        metrics = {k: float(v) for k, v in metric_records(record)[METRICS].items()}  # type: ignore[arg-type]
        n = int(metrics.pop(NUM_EXAMPLES))
        extra = {k: v for k, v in array_records(record).items() if k != ARRAYS}
        return cls(array_records(record)[ARRAYS], n, metrics, extra)


@dataclass(frozen=True)
class EvalIns:
    """Server -> client: arrays to evaluate (the client adds its local layers)."""

    arrays: ArrayRecord
    server_round: int

    def to_record(self) -> RecordDict:
        return record_dict({ARRAYS: self.arrays, CONFIG: ConfigRecord({ROUND: self.server_round})})

    @classmethod
    def from_record(cls, record: RecordDict) -> EvalIns:
        rnd = int(config_records(record)[CONFIG][ROUND])  # type: ignore[arg-type]
        return cls(array_records(record)[ARRAYS], rnd)


@dataclass(frozen=True)
class EvalRes:
    """Client -> server: evaluation metrics on the client's held-out split."""

    num_examples: int
    metrics: dict[str, float]

    def to_record(self) -> RecordDict:
        return record_dict(
            {METRICS: metric_record({NUM_EXAMPLES: self.num_examples, **self.metrics})}
        )

    @classmethod
    def from_record(cls, record: RecordDict) -> EvalRes:
        metrics = {k: float(v) for k, v in metric_records(record)[METRICS].items()}  # type: ignore[arg-type]
        return cls(int(metrics.pop(NUM_EXAMPLES)), metrics)


@dataclass(frozen=True)
class Identity:
    """Client -> server at start-up: which partition (virtual client) a node hosts."""

    partition_id: int

    def to_record(self) -> RecordDict:
        return RecordDict({METRICS: MetricRecord({"partition-id": self.partition_id})})

    @classmethod
    def from_record(cls, record: RecordDict) -> Identity:
        return cls(int(metric_records(record)[METRICS]["partition-id"]))  # type: ignore[arg-type]
