"""Partitioning a training set over simulated clients.

Every partitioner returns, for each client, a sorted ``int64`` array of indices into one
shared copy of the training data: the data is never copied per client, so 100,000 clients
cost 100,000 small index arrays.  All work is vectorised over samples (``argsort``,
``bincount``, ``repeat``); the only Python loops run over classes, domains or the final
split into per-client arrays.

Schemes (``PartitionConfig.kind``):

``iid``
    A random permutation cut into near-equal parts.
``dirichlet``
    Label skew of Hsu, Qi and Brown, "Measuring the Effects of Non-Identical Data
    Distribution for Federated Visual Classification" (arXiv:1909.06335): for every class,
    client shares are drawn from ``Dir(alpha * 1_K)``.  The retry-until-``min_samples`` loop
    and the optional self-balancing (a client stops receiving once it holds ``N / K``
    samples) follow NIID-Bench, Li et al., "Federated Learning on Non-IID Data Silos: An
    Experimental Study" (arXiv:2102.02079), and FedLab's ``hetero_dir_partition``
    (arXiv:2107.11621).  Deviation: NIID-Bench always balances; here it is ``balance``.
``pathological``
    The shards of McMahan et al., "Communication-Efficient Learning of Deep Networks from
    Decentralized Data" (arXiv:1602.05629): sort by label, cut into ``K * k`` shards, give
    every client ``k`` random shards, so each client sees about ``k`` classes.
``quantity_skew``
    Unequal client sizes with IID labels: sizes proportional to log-normal draws (FedLab's
    ``lognormal_unbalance_split``, arXiv:2107.11621) or to Pareto (power-law) draws, the size
    law LEAF observes in real federations (Caldas et al., arXiv:1812.01097).
``by_domain``
    Feature (domain) skew, as in FedBN, Li et al., "FedBN: Federated Learning on Non-IID
    Features via Local Batch Normalization" (arXiv:2102.07623): each client holds one source,
    or an explicit per-client mixture of sources.

Randomness comes only from the generator passed in (no global seeding): the same
generator state always gives the same partition.  The config's checks are in
:mod:`fedsim.data.partition_checks`.
"""

from __future__ import annotations

import logging

import numpy as np
import numpy.typing as npt

from fedsim.config import PartitionConfig

# per-client holdouts and label statistics live in fedsim.data.holdout; re-exported here
from fedsim.data.holdout import client_label_counts as client_label_counts
from fedsim.data.holdout import holdout_sizes as holdout_sizes
from fedsim.data.holdout import label_skew as label_skew
from fedsim.data.holdout import split_holdout as split_holdout
from fedsim.data.holdout import split_holdouts as split_holdouts
from fedsim.data.partition_checks import _min_size, validate_partition
from fedsim.errors import ConfigError

log = logging.getLogger(__name__)

#: Dirichlet draws tried before giving up on ``min_samples``.
MAX_DIRICHLET_ATTEMPTS = 100

IndexArray = npt.NDArray[np.int64]

# --------------------------------------------------------------------------- helpers


def _group(owner: npt.NDArray[np.int64], num_clients: int) -> list[IndexArray]:
    """Turn ``owner[i]`` (client of sample ``i``, ``-1`` = unused) into per-client arrays.

    A stable argsort keeps the sample order inside every client, so each array is sorted.
    """
    order = np.argsort(owner, kind="stable").astype(np.int64, copy=False)
    assigned = owner[owner >= 0]
    counts = np.bincount(assigned, minlength=num_clients)
    order = order[owner.size - assigned.size :]
    return np.split(order, np.cumsum(counts)[:-1])


def _apportion(total: int, weights: npt.NDArray[np.float64]) -> npt.NDArray[np.int64]:
    """Integer counts proportional to ``weights`` that sum to exactly ``total``.

    Largest-remainder rounding: floor every share, then give the leftover units to the
    largest fractional parts.
    """
    shares = weights / weights.sum() * total
    counts = np.floor(shares).astype(np.int64)
    left = total - int(counts.sum())
    if left > 0:
        top = np.argpartition(-(shares - counts), left - 1)[:left]
        counts[top] += 1
    return counts


def _assign_sizes(
    num_samples: int, sizes: npt.NDArray[np.int64], rng: np.random.Generator
) -> list[IndexArray]:
    """Give client ``k`` the next ``sizes[k]`` samples of a random permutation."""
    owner = np.full(num_samples, -1, dtype=np.int64)
    used = int(sizes.sum())
    perm = rng.permutation(num_samples)[:used]
    owner[perm] = np.repeat(np.arange(sizes.size, dtype=np.int64), sizes)
    return _group(owner, sizes.size)


# --------------------------------------------------------------------------- schemes


def _iid(num_samples: int, num_clients: int, rng: np.random.Generator) -> list[IndexArray]:
    sizes = np.full(num_clients, num_samples // num_clients, dtype=np.int64)
    sizes[: num_samples % num_clients] += 1
    return _assign_sizes(num_samples, sizes, rng)


def _dirichlet(
    labels: npt.NDArray[np.int64],
    num_clients: int,
    num_classes: int,
    cfg: PartitionConfig,
    rng: np.random.Generator,
) -> list[IndexArray]:
    n = labels.size
    need = _min_size(cfg)
    cap = n / num_clients
    by_class = np.argsort(labels, kind="stable")
    class_sizes = np.bincount(labels, minlength=num_classes)
    class_starts = np.concatenate([[0], np.cumsum(class_sizes)])
    clients = np.arange(num_clients, dtype=np.int64)
    for attempt in range(1, MAX_DIRICHLET_ATTEMPTS + 1):
        owner = np.full(n, -1, dtype=np.int64)
        held = np.zeros(num_clients, dtype=np.int64)
        for c in range(num_classes):
            members = by_class[class_starts[c] : class_starts[c + 1]]
            if members.size == 0:
                continue
            members = rng.permutation(members)
            p = rng.dirichlet(np.full(num_clients, cfg.alpha))
            if cfg.balance:
                p = p * (held < cap)
            total = p.sum()
            if not (np.isfinite(total) and total > 0):
                # Underflow at tiny alpha, or every open client drew ~0: uniform fallback.
                p = (held < cap).astype(np.float64) if cfg.balance else np.ones(num_clients)
                if p.sum() == 0:
                    p = np.ones(num_clients)
                total = p.sum()
            bounds = (np.cumsum(p / total) * members.size).astype(np.int64)
            bounds = np.minimum(bounds, members.size)
            bounds[-1] = members.size
            counts = np.diff(bounds, prepend=0)
            owner[members] = np.repeat(clients, counts)
            held += counts
        smallest = int(held.min())
        if smallest >= need:
            if attempt > 1:
                log.debug("dirichlet partition needed %d attempts", attempt)
            return _group(owner, num_clients)
    raise ConfigError(
        f"partition.min_samples: could not give each of {num_clients} clients >= {need} "
        f"samples with alpha={cfg.alpha} in {MAX_DIRICHLET_ATTEMPTS} attempts "
        "(allowed: raise partition.alpha, lower partition.min_samples or num_clients, or set "
        "partition.balance=true)"
    )


def _pathological(
    labels: npt.NDArray[np.int64], num_clients: int, k: int, rng: np.random.Generator
) -> list[IndexArray]:
    n = labels.size
    num_shards = num_clients * k
    perm = rng.permutation(n)
    # Shuffle first, then stable-sort by label: random order inside every class.
    order = perm[np.argsort(labels[perm], kind="stable")]
    shard_sizes = np.full(num_shards, n // num_shards, dtype=np.int64)
    shard_sizes[: n % num_shards] += 1
    shard_owner = np.empty(num_shards, dtype=np.int64)
    shard_owner[rng.permutation(num_shards)] = np.repeat(np.arange(num_clients), k)
    owner = np.empty(n, dtype=np.int64)
    owner[order] = np.repeat(shard_owner, shard_sizes)
    return _group(owner, num_clients)


def _quantity_skew(
    num_samples: int, num_clients: int, cfg: PartitionConfig, rng: np.random.Generator
) -> list[IndexArray]:
    if cfg.quantity == "lognormal":
        weights = rng.lognormal(mean=0.0, sigma=cfg.sigma, size=num_clients)
    else:  # powerlaw: Pareto with x_m = 1 and shape `power`
        weights = rng.pareto(cfg.power, size=num_clients) + 1.0
    need = _min_size(cfg)
    sizes = need + _apportion(num_samples - need * num_clients, weights)
    return _assign_sizes(num_samples, sizes, rng)


def _by_domain(
    domains: npt.NDArray[np.int64],
    num_clients: int,
    num_domains: int,
    cfg: PartitionConfig,
    rng: np.random.Generator,
) -> list[IndexArray]:
    n = domains.size
    by_domain = np.argsort(domains, kind="stable")
    domain_sizes = np.bincount(domains, minlength=num_domains)
    starts = np.concatenate([[0], np.cumsum(domain_sizes)])
    if cfg.mixture:
        weights = np.asarray(cfg.mixture, dtype=np.float64)
        share = weights / weights.sum(axis=1, keepdims=True)  # client k's mix over sources
        demand = share.sum(axis=0)  # samples of source d per unit of client size
        used = demand > 0
        # Largest common client size that no source runs out of (each sample used once).
        with np.errstate(over="ignore"):  # a tiny demand only makes its bound inf
            size = float(np.min(domain_sizes[used] / demand[used]))
        counts = np.floor(size * share).astype(np.int64)  # (clients, sources)
        if not cfg.allow_empty and counts.sum(axis=1).min() < 1:
            empty = np.flatnonzero(counts.sum(axis=1) == 0)[:5].tolist()
            raise ConfigError(
                f"partition.mixture: the sources cannot give every client a sample (clients "
                f"{empty} would be empty; a client can hold at most {size:.2f} samples); "
                "allowed: fewer clients, weights on larger sources, or partition.allow_empty=true"
            )
    else:
        cpd = cfg.clients_per_domain
        counts = np.zeros((num_clients, num_domains), dtype=np.int64)
        for d in range(num_domains):
            part = np.full(cpd, domain_sizes[d] // cpd, dtype=np.int64)
            part[: domain_sizes[d] % cpd] += 1
            counts[d * cpd : (d + 1) * cpd, d] = part
    owner = np.full(n, -1, dtype=np.int64)
    clients = np.arange(num_clients, dtype=np.int64)
    for d in range(num_domains):
        column = counts[:, d]
        members = rng.permutation(by_domain[starts[d] : starts[d + 1]])[: int(column.sum())]
        owner[members] = np.repeat(clients, column)
    return _group(owner, num_clients)


# --------------------------------------------------------------------------- public API


def partition(
    labels: np.ndarray,
    domains: np.ndarray | None,
    num_clients: int,
    cfg: PartitionConfig,
    rng: np.random.Generator,
    num_classes: int | None = None,
    num_domains: int | None = None,
) -> list[IndexArray]:
    """Split sample indices over ``num_clients`` clients.

    Parameters
    ----------
    labels
        Integer class label of every training sample, shape ``(N,)``.
    domains
        Source index of every training sample, shape ``(N,)``; needed for ``by_domain``
        (``None`` elsewhere is fine).
    num_clients
        Number of clients ``K``.
    cfg
        Which scheme and its parameters (see the module docstring for the sources).
    rng
        The only source of randomness; derive it from the run seed.
    num_classes
        Number of classes ``C``; defaults to ``labels.max() + 1``.
    num_domains
        Number of sources ``D``; defaults to ``domains.max() + 1``.  Pass it when a source
        may have no training samples, so that ``mixture`` rows are checked against it.

    Returns
    -------
    list of numpy.ndarray
        ``K`` sorted ``int64`` index arrays into the shared data.  Every sample appears at
        most once; exactly once for ``iid``, ``dirichlet``, ``pathological``,
        ``quantity_skew`` and ``by_domain`` without ``mixture`` (a mixture may leave samples
        of over-supplied sources unused).  By-domain clients are numbered source by source:
        clients ``d * clients_per_domain ... (d + 1) * clients_per_domain - 1`` hold source
        ``d``.

    Raises
    ------
    ConfigError
        If the config is invalid or cannot be met by this data (see
        :func:`fedsim.data.partition_checks.validate_partition`).
    """
    labels = np.asarray(labels)
    if labels.ndim != 1 or (labels.size and not np.issubdtype(labels.dtype, np.integer)):
        raise ValueError(f"labels must be a 1-D integer array, got {labels.dtype} {labels.shape}")
    labels = labels.astype(np.int64, copy=False)
    n = labels.size
    if labels.size and labels.min() < 0:
        raise ValueError("labels must be >= 0")
    if num_classes is None:
        num_classes = int(labels.max()) + 1 if n else 0
    elif n and labels.max() >= num_classes:
        raise ValueError(f"label {int(labels.max())} >= num_classes={num_classes}")

    dom: npt.NDArray[np.int64] | None = None
    if domains is not None:
        dom = np.asarray(domains).astype(np.int64, copy=False)
        if dom.shape != labels.shape:
            raise ValueError(f"domains shape {dom.shape} != labels shape {labels.shape}")
        if n and dom.min() < 0:
            raise ValueError("domains must be >= 0")
        inferred = int(dom.max()) + 1 if n else 0
        if num_domains is None:
            num_domains = inferred
        elif inferred > num_domains:
            raise ValueError(f"domain {inferred - 1} >= num_domains={num_domains}")
    elif cfg.kind == "by_domain":
        raise ValueError("partition kind by_domain needs the domain index of every sample")
    num_domains = num_domains or 1
    sizes = np.bincount(dom, minlength=num_domains).tolist() if dom is not None else None
    validate_partition(cfg, num_clients, n, num_domains, sizes)

    if cfg.flwr:
        from fedsim.data.flwr_partition import flwr_partition

        return flwr_partition(labels, dom, num_clients, cfg, rng)
    if cfg.kind == "iid":
        return _iid(n, num_clients, rng)
    if cfg.kind == "dirichlet":
        return _dirichlet(labels, num_clients, num_classes, cfg, rng)
    if cfg.kind == "pathological":
        return _pathological(labels, num_clients, cfg.classes_per_client, rng)
    if cfg.kind == "quantity_skew":
        return _quantity_skew(n, num_clients, cfg, rng)
    assert dom is not None  # checked above
    return _by_domain(dom, num_clients, num_domains, cfg, rng)
