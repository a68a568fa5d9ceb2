"""The checks of the ``partition`` config section against the data it will split.

Separate from :mod:`fedsim.data.partition` because a scenario is validated at load, before
any data exists (:mod:`fedsim.algorithms.classification` passes an upper bound for the
sample count), while the partitioners themselves only run once the dataset is built.
:func:`validate_partition` names the key, the bad value and what is allowed; the schemes
it checks are described in :mod:`fedsim.data.partition`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fedsim.config import PartitionConfig
from fedsim.errors import ConfigError

KINDS = ("by_domain", "dirichlet", "iid", "pathological", "quantity_skew")
QUANTITY_LAWS = ("lognormal", "powerlaw")


def _min_size(cfg: PartitionConfig) -> int:
    """Smallest client size a partition must reach (at least 1 unless ``allow_empty``)."""
    if cfg.kind in ("dirichlet", "quantity_skew"):
        return max(cfg.min_samples, 0 if cfg.allow_empty else 1)
    return 0 if cfg.allow_empty else 1


def validate_partition(
    cfg: PartitionConfig,
    num_clients: int,
    num_samples: int,
    num_domains: int,
    domain_sizes: Sequence[int] | None = None,
) -> None:
    """Check a partition config against the data it will split.

    Parameters
    ----------
    cfg
        The partition section of the scenario.
    num_clients
        ``scenario.num_clients``.
    num_samples
        Number of training samples to split.
    num_domains
        Number of data sources (``len(dataset.sources)``).
    domain_sizes
        Optional training-sample count of every source; enables the ``by_domain`` check
        that each source can feed its clients.

    Raises
    ------
    ConfigError
        With a message that starts with the key path (``partition.alpha: ...``), gives the
        bad value and says what is allowed.
    """
    if num_clients < 1:
        raise ConfigError(f"num_clients: must be >= 1, got {num_clients}")
    if cfg.flwr:  # a Flower Datasets partitioner: its own signature is the check
        from fedsim.data.flwr_partition import validate_flwr

        return validate_flwr(cfg, num_clients)
    if cfg.kind not in KINDS:
        raise ConfigError(f"partition.kind: unknown {cfg.kind!r} (allowed: {', '.join(KINDS)})")
    if not cfg.alpha > 0 or not np.isfinite(cfg.alpha):
        raise ConfigError(f"partition.alpha: must be > 0, got {cfg.alpha}")
    if cfg.min_samples < 0:
        raise ConfigError(f"partition.min_samples: must be >= 0, got {cfg.min_samples}")
    if cfg.classes_per_client < 1:
        raise ConfigError(
            f"partition.classes_per_client: must be >= 1, got {cfg.classes_per_client}"
        )
    if cfg.quantity not in QUANTITY_LAWS:
        raise ConfigError(
            f"partition.quantity: unknown {cfg.quantity!r} (allowed: {', '.join(QUANTITY_LAWS)})"
        )
    if not cfg.sigma > 0 or not np.isfinite(cfg.sigma):
        raise ConfigError(f"partition.sigma: must be > 0, got {cfg.sigma}")
    if not cfg.power > 0 or not np.isfinite(cfg.power):
        raise ConfigError(f"partition.power: must be > 0, got {cfg.power}")
    if cfg.clients_per_domain < 1:
        raise ConfigError(
            f"partition.clients_per_domain: must be >= 1, got {cfg.clients_per_domain}"
        )

    need = _min_size(cfg)
    if cfg.kind == "pathological":
        shards = num_clients * cfg.classes_per_client
        if shards > num_samples:
            raise ConfigError(
                f"partition.classes_per_client: {num_clients} clients x "
                f"{cfg.classes_per_client} shards = {shards} shards but only {num_samples} "
                "training samples (allowed: num_clients x classes_per_client <= samples)"
            )
    elif need > 0 and num_clients * need > num_samples:
        if need == 1:
            raise ConfigError(
                f"num_clients: {num_clients} clients but only {num_samples} training samples "
                "(allowed: at most one client per sample, or set partition.allow_empty=true)"
            )
        raise ConfigError(
            f"partition.min_samples: {num_clients} clients x {need} samples > {num_samples} "
            f"training samples (allowed: min_samples <= {num_samples // num_clients})"
        )

    if cfg.kind == "by_domain":
        _validate_by_domain(cfg, num_clients, num_domains, domain_sizes)


def _validate_by_domain(
    cfg: PartitionConfig,
    num_clients: int,
    num_domains: int,
    domain_sizes: Sequence[int] | None,
) -> None:
    if num_domains < 1:
        raise ConfigError(f"partition.kind: by_domain needs >= 1 data source, got {num_domains}")
    if not cfg.mixture:
        expected = num_domains * cfg.clients_per_domain
        if num_clients != expected:
            raise ConfigError(
                f"num_clients: by_domain without a mixture needs num_sources x "
                f"partition.clients_per_domain = {num_domains} x {cfg.clients_per_domain} = "
                f"{expected} clients, got {num_clients}"
            )
        if domain_sizes is not None and not cfg.allow_empty:
            for d, size in enumerate(domain_sizes):
                if size < cfg.clients_per_domain:
                    raise ConfigError(
                        f"partition.clients_per_domain: {cfg.clients_per_domain} clients per "
                        f"source but source {d} has only {size} training samples (allowed: "
                        f"<= the smallest source size, or set partition.allow_empty=true)"
                    )
        return
    if len(cfg.mixture) != num_clients:
        raise ConfigError(
            f"partition.mixture: expected {num_clients} rows (one weight vector per client), "
            f"got {len(cfg.mixture)}"
        )
    for k, row in enumerate(cfg.mixture):
        if len(row) != num_domains:
            raise ConfigError(
                f"partition.mixture[{k}]: expected {num_domains} weights (one per source), "
                f"got {len(row)}"
            )
        for d, w in enumerate(row):
            if not (np.isfinite(w) and w >= 0):
                raise ConfigError(
                    f"partition.mixture[{k}][{d}]: must be a finite weight >= 0, got {w}"
                )
        if sum(row) <= 0:
            raise ConfigError(
                f"partition.mixture[{k}]: weights sum to 0 (allowed: at least one weight > 0)"
            )
