"""Per-client holdouts (``evaluation.holdout_fraction``) and label statistics of a partition.

Split out of :mod:`fedsim.data.partition`, which re-exports every name.  The holdouts take
their randomness only from the generator passed in.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from fedsim.errors import ConfigError

IndexArray = npt.NDArray[np.int64]


def holdout_sizes(sizes: np.ndarray, fraction: float) -> npt.NDArray[np.int64]:
    """Held-out samples of clients with ``sizes`` samples each.

    ``round(fraction * n)``, but at least 1 when ``fraction > 0`` and ``n >= 2``, and never
    the whole client (one sample always stays for training).
    """
    n = np.asarray(sizes, dtype=np.int64)
    if fraction <= 0:
        return np.zeros_like(n)
    h = np.clip(np.rint(fraction * n).astype(np.int64), 1, np.maximum(n - 1, 1))
    return np.where(n >= 2, h, 0)


def _check_fraction(fraction: float) -> None:
    if not 0 <= fraction < 1:
        raise ConfigError(f"evaluation.holdout_fraction: must be in [0, 1), got {fraction}")


def split_holdout(
    indices: np.ndarray, fraction: float, rng: np.random.Generator
) -> tuple[IndexArray, IndexArray]:
    """Split one client's indices into a training part and a held-out evaluation part.

    Parameters
    ----------
    indices
        The client's sample indices (any order).
    fraction
        ``evaluation.holdout_fraction`` in ``[0, 1)``; see :func:`holdout_sizes`.
    rng
        Generator for this client, e.g. derived from ``(seed, client_id)``.

    Returns
    -------
    tuple of numpy.ndarray
        ``(train_idx, holdout_idx)``, both sorted ``int64``, disjoint, union = ``indices``.
    """
    _check_fraction(fraction)
    idx = np.asarray(indices, dtype=np.int64)
    h = int(holdout_sizes(np.array([idx.size]), fraction)[0])
    perm = rng.permutation(idx.size)
    return np.sort(idx[perm[h:]]), np.sort(idx[perm[:h]])


def split_holdouts(
    partitions: Sequence[np.ndarray], fraction: float, rng: np.random.Generator
) -> list[tuple[IndexArray, IndexArray]]:
    """:func:`split_holdout` for every client at once, vectorised over all samples.

    Each client holds out the :func:`holdout_sizes` samples with the smallest random keys,
    which is a uniform random subset; one ``lexsort`` serves all clients, so 100,000 clients
    cost no Python loop over samples.

    Returns
    -------
    list of tuple of numpy.ndarray
        ``(train_idx, holdout_idx)`` per client, both sorted ``int64``.
    """
    _check_fraction(fraction)
    sizes = np.array([len(p) for p in partitions], dtype=np.int64)
    if sizes.size == 0:
        return []
    flat = np.concatenate([np.asarray(p, dtype=np.int64) for p in partitions])
    owner = np.repeat(np.arange(sizes.size), sizes)
    keys = rng.random(flat.size)
    order = np.lexsort((keys, owner))  # by client, then by key
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    rank = np.empty(flat.size, dtype=np.int64)
    rank[order] = np.arange(flat.size) - np.repeat(starts, sizes)
    h = holdout_sizes(sizes, fraction)
    held = rank < np.repeat(h, sizes)
    # Sort each client's indices once; the mask follows the same permutation.
    within = np.lexsort((flat, owner))
    flat, held, owner = flat[within], held[within], owner[within]
    train = np.split(flat[~held], np.cumsum(sizes - h)[:-1])
    holdout = np.split(flat[held], np.cumsum(h)[:-1])
    return list(zip(train, holdout, strict=True))


def client_label_counts(
    partitions: Sequence[np.ndarray], labels: np.ndarray
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Sparse (client, label, count) triples of every non-zero client/label pair.

    Memory is O(samples), not O(clients x classes), so it scales to 100,000 clients.
    """
    labels = np.asarray(labels, dtype=np.int64)
    sizes = np.array([len(p) for p in partitions], dtype=np.int64)
    if sizes.sum() == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty
    flat = np.concatenate([np.asarray(p, dtype=np.int64) for p in partitions])
    owner = np.repeat(np.arange(sizes.size, dtype=np.int64), sizes)
    width = int(labels.max()) + 1
    keys, counts = np.unique(owner * width + labels[flat], return_counts=True)
    return keys // width, keys % width, counts.astype(np.int64)


def label_skew(partitions: Sequence[np.ndarray], labels: np.ndarray, num_classes: int) -> float:
    """Mean total-variation distance between client and global label distributions.

    ``TV_k = 1/2 sum_c |p_k(c) - p(c)|`` with ``p`` the label distribution of all assigned
    samples; averaged over non-empty clients.  0 for IID clients, close to
    ``1 - max_c p(c)`` when every client holds a single class.  Computed sparsely (only
    classes a client holds), so it scales to many clients and classes.
    """
    client, label, count = client_label_counts(partitions, labels)
    if count.size == 0:
        return 0.0
    sizes = np.bincount(client, weights=count, minlength=len(partitions))
    glob = np.bincount(label, weights=count, minlength=num_classes) / count.sum()
    p = count / sizes[client]
    g = glob[label]
    # Absent classes contribute g each; sum_c g = 1, so TV = (1 + sum_present(|p-g| - g)) / 2.
    per_client = np.bincount(client, weights=np.abs(p - g) - g, minlength=len(partitions))
    nonempty = sizes > 0
    return float(np.mean((1.0 + per_client[nonempty]) / 2.0))
