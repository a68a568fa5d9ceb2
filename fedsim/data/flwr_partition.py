"""Flower Datasets partitioners in scenario files.

``partition: {flwr: DirichletPartitioner, alpha: 0.5, partition_by: label}`` splits the
scenario's training set with any sample partitioner of ``flwr_datasets.partitioner``
(Flower Datasets, https://flower.ai/docs/datasets/), by class name, with its own keyword
arguments.  The arguments are checked against the class's signature when the scenario is
loaded; fedsim sets ``num_partitions`` (``scenario.num_clients``) and ``seed`` (derived
from the run seed), and ``partition_by`` defaults to ``label``.

The partitioner sees a ``datasets.Dataset`` with the columns ``label`` (the class),
``domain`` (the index of the sample's source) and ``index`` (its row in fedsim's shared
training set), shuffled first with the run's partition stream as ``FederatedDataset``
shuffles before partitioning; each client's part is read back as sorted indices, so the
images are never copied.  fedsim's own kinds (``fedsim.data.partition``) stay: domain
mixtures and open-world splits have no Flower counterpart.

Flower Datasets is an optional extra (``pip install -e '.[datasets]'``), imported only
by scenarios that name a partitioner.
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any

from fedsim.config import PartitionConfig
from fedsim.errors import ConfigError

if TYPE_CHECKING:  # numpy is not imported by scenario files that only read this module
    import numpy as np
    import numpy.typing as npt

#: arguments fedsim gives every partitioner that takes them
SET_BY_FEDSIM = {"num_partitions": "scenario.num_clients", "seed": "the run seed"}
COLUMNS = ("label", "domain", "index")
INSTALL = "pip install -e '.[datasets]'"


def partitioner_class(name: str) -> type:
    """The ``flwr_datasets.partitioner`` class called ``name``."""
    try:
        import flwr_datasets.partitioner as flp
    except ImportError:
        raise ConfigError(
            f"partition.flwr: {name!r} needs Flower Datasets, which is not installed ({INSTALL})"
        ) from None
    allowed = sorted(
        n
        for n in dir(flp)
        if n.endswith("Partitioner")
        and n != "Partitioner"
        and not n.startswith("Vertical")  # they split columns, not samples
    )
    if name not in allowed:
        raise ConfigError(f"partition.flwr: unknown {name!r} (allowed: {', '.join(allowed)})")
    cls: type = getattr(flp, name)
    return cls


def _arguments(cls: type) -> dict[str, inspect.Parameter]:
    params = list(inspect.signature(cls.__init__).parameters.values())[1:]  # type: ignore[misc]
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return {p.name: p for p in params if p.kind in kinds}


def build_partitioner(cfg: PartitionConfig, num_clients: int, seed: int) -> Any:
    """The configured partitioner, its arguments checked against its signature."""
    cls = partitioner_class(cfg.flwr)
    takes = _arguments(cls)
    args = dict(cfg.args)
    for key in args:
        if key in SET_BY_FEDSIM and key in takes:
            raise ConfigError(f"partition.{key}: set by fedsim from {SET_BY_FEDSIM[key]}")
        if key not in takes:
            raise ConfigError(
                f"partition.{key}: {cfg.flwr} does not take it (it takes: "
                f"{', '.join(k for k in takes if k not in SET_BY_FEDSIM)})"
            )
    if "partition_by" in takes:
        args.setdefault("partition_by", "label")
        if args["partition_by"] not in COLUMNS:
            raise ConfigError(
                f"partition.partition_by: unknown column {args['partition_by']!r} "
                f"(allowed: {', '.join(COLUMNS[:2])})"
            )
    if "num_partitions" in takes:
        args["num_partitions"] = num_clients
    if "seed" in takes:
        args["seed"] = seed
    missing = [k for k, p in takes.items() if p.default is p.empty and k not in args]
    if missing:
        raise ConfigError(f"partition.{missing[0]}: {cfg.flwr} needs it")
    try:
        return cls(**args)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"partition.flwr: {cfg.flwr}: {_first_line(e)}") from None


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def validate_flwr(cfg: PartitionConfig, num_clients: int) -> None:
    """The checks that need no data: the class exists and takes these arguments."""
    if cfg.kind != "iid":  # "iid" is the default, i.e. not given
        raise ConfigError(f"partition.kind: {cfg.kind!r} is not used with partition.flwr")
    build_partitioner(cfg, num_clients, 0)


def flwr_partition(
    labels: npt.NDArray[np.int64],
    domains: npt.NDArray[np.int64] | None,
    num_clients: int,
    cfg: PartitionConfig,
    rng: np.random.Generator,
) -> list[npt.NDArray[np.int64]]:
    """Split sample indices over ``num_clients`` clients with a Flower partitioner.

    Returns ``K`` sorted ``int64`` index arrays into the shared data, as
    :func:`fedsim.data.partition.partition` does; randomness comes only from ``rng``.
    """
    import warnings

    import numpy as np
    from datasets import Dataset

    partitioner = build_partitioner(cfg, num_clients, int(rng.integers(2**31 - 1)))
    order = rng.permutation(labels.size)
    dom = np.zeros_like(labels) if domains is None else domains
    data = Dataset.from_dict({"label": labels[order], "domain": dom[order], "index": order})
    try:
        with warnings.catch_warnings():  # Flower warns on every retried draw; the log says less
            warnings.simplefilter("ignore", UserWarning)
            partitioner.dataset = data
            if partitioner.num_partitions != num_clients:
                raise ConfigError(
                    f"num_clients: {cfg.flwr} makes {partitioner.num_partitions} partitions "
                    f"of this data, but the scenario has {num_clients} clients"
                )
            parts = [
                np.sort(np.asarray(partitioner.load_partition(i)["index"], dtype=np.int64))
                for i in range(num_clients)
            ]
    except (TypeError, ValueError, KeyError, IndexError) as e:
        raise ConfigError(f"partition.flwr: {cfg.flwr} on this data: {_first_line(e)}") from None
    return parts
