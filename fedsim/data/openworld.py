"""Open-world semi-supervised splits and metrics (FedoSSL, ORCA).

Setting of Zhang et al., "Towards Unbiased Training in Federated Open-world
Semi-supervised Learning" (FedoSSL, ICML 2023, arXiv 2305.00771), after Cao et al.,
"Open-World Semi-Supervised Learning" (ORCA, ICLR 2022, arXiv 2102.03526): the classes
are split into *seen* classes, a fraction of whose samples carry their label, and *unseen*
classes, whose samples are all unlabelled.  Every client holds a given set of classes
(``scenario.open_world.client_classes``); an unseen class held by several clients is
*locally unseen*, one held by exactly one client is *globally unseen*.

:func:`open_world_split` turns labels + :class:`~fedsim.config.OpenWorldConfig` + a generator
into per-client index arrays and one boolean "labelled" mask over the training set (the
training loop sees the label of a sample only where the mask is true).
:func:`open_world_metrics` scores predictions the way ORCA's code does: plain accuracy on
seen classes, Hungarian-matched accuracy (``scipy.optimize.linear_sum_assignment``) on
unseen classes and on all classes, and the unseen accuracy split into locally and globally
unseen classes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from fedsim.config import OpenWorldConfig
from fedsim.errors import ConfigError

IndexArray = npt.NDArray[np.int64]


@dataclass(frozen=True)
class ClassRoles:
    """Seen / locally-unseen / globally-unseen classes of an open-world federation."""

    seen: tuple[int, ...]
    unseen: tuple[int, ...]
    local_unseen: tuple[int, ...]  # unseen classes held by two or more clients
    global_unseen: tuple[int, ...]  # unseen classes held by exactly one client


@dataclass(frozen=True)
class OpenWorldSplit:
    """Per-client sample indices and which training samples carry their label."""

    parts: list[IndexArray]
    labeled: npt.NDArray[np.bool_]  # shape (N,), over the whole training set
    roles: ClassRoles


def class_roles(cfg: OpenWorldConfig, num_classes: int) -> ClassRoles:
    """Seen, unseen, locally unseen and globally unseen classes of ``cfg``.

    Unseen classes are every class of ``range(num_classes)`` not in ``cfg.seen_classes``;
    an unseen class is locally unseen if at least two clients hold it, globally unseen if
    exactly one does (validation rejects unseen classes that no client holds).
    """
    seen = tuple(sorted(set(int(c) for c in cfg.seen_classes)))
    unseen = tuple(c for c in range(num_classes) if c not in seen)
    holders = {c: sum(c in set(cls) for cls in cfg.client_classes) for c in unseen}
    return ClassRoles(
        seen,
        unseen,
        tuple(c for c in unseen if holders[c] >= 2),
        tuple(c for c in unseen if holders[c] == 1),
    )


def validate_open_world(cfg: OpenWorldConfig, num_clients: int, num_classes: int) -> None:
    """Check an open-world config against the federation; ConfigError names the key.

    Parameters
    ----------
    cfg
        ``scenario.open_world``.
    num_clients
        ``scenario.num_clients``; ``client_classes`` must list exactly that many sets.
    num_classes
        Number of classes of the dataset (labels are ``0 .. num_classes - 1``).
    """
    key = "open_world"  # relative to the scenario; callers prefix "scenario."
    if not cfg.seen_classes:
        raise ConfigError(f"{key}.seen_classes: must list at least one class")
    if len(set(cfg.seen_classes)) != len(cfg.seen_classes):
        raise ConfigError(f"{key}.seen_classes: duplicate classes in {list(cfg.seen_classes)}")
    for c in cfg.seen_classes:
        if not 0 <= int(c) < num_classes:
            raise ConfigError(
                f"{key}.seen_classes: class {c} is outside the dataset "
                f"(allowed: 0..{num_classes - 1})"
            )
    if not 0.0 < cfg.labeled_fraction <= 1.0:
        raise ConfigError(f"{key}.labeled_fraction: must be in (0, 1], got {cfg.labeled_fraction}")
    if len(cfg.client_classes) != num_clients:
        raise ConfigError(
            f"{key}.client_classes: lists {len(cfg.client_classes)} class sets but "
            f"scenario.num_clients is {num_clients} (one set per client)"
        )
    for i, classes in enumerate(cfg.client_classes):
        if not classes:
            raise ConfigError(f"{key}.client_classes[{i}]: a client must hold at least one class")
        for c in classes:
            if not 0 <= int(c) < num_classes:
                raise ConfigError(
                    f"{key}.client_classes[{i}]: class {c} is outside the dataset "
                    f"(allowed: 0..{num_classes - 1})"
                )
    held = {int(c) for classes in cfg.client_classes for c in classes}
    missing_seen = sorted(set(int(c) for c in cfg.seen_classes) - held)
    if missing_seen:
        raise ConfigError(
            f"{key}.client_classes: seen classes {missing_seen} are held by no client"
        )
    missing = sorted(set(range(num_classes)) - held)
    if missing:
        raise ConfigError(
            f"{key}.client_classes: unseen classes {missing} are held by no client "
            "(every class of the dataset must be held by at least one client)"
        )
    if len(cfg.seen_classes) >= num_classes:
        raise ConfigError(
            f"{key}.seen_classes: every class is seen; an open-world split needs unseen classes"
        )


def open_world_split(
    labels: npt.ArrayLike,
    cfg: OpenWorldConfig,
    num_classes: int,
    rng: np.random.Generator,
) -> OpenWorldSplit:
    """Spread the training set over clients by class sets and hide labels.

    For every class ``c`` with holders ``H_c`` (clients whose set contains ``c``), its
    samples are shuffled and cut into ``|H_c|`` near-equal chunks.  With ``cfg.disjoint``
    holder ``k`` receives chunk ``k``; without, every holder receives the *same* first
    chunk — what the official code does by re-seeding each client's sampler with 0
    (spec §9.3: clients sharing a class get identical images).  Within each chunk of a
    seen class, ``round(labeled_fraction * size)`` random samples are labelled; samples
    of unseen classes are never labelled.

    Parameters
    ----------
    labels
        ``(N,)`` integer class of every training sample.
    cfg
        The open-world config (validate it first with :func:`validate_open_world`).
    num_classes
        Number of classes of the dataset.
    rng
        Generator for the shuffles (e.g. ``derive_rng(seed, "open_world")``).

    Returns
    -------
    OpenWorldSplit
        Sorted ``int64`` index arrays per client, the ``(N,)`` labelled mask and the
        class roles.
    """
    y = np.asarray(labels, dtype=np.int64)
    num_clients = len(cfg.client_classes)
    seen = {int(c) for c in cfg.seen_classes}
    sets = [{int(c) for c in classes} for classes in cfg.client_classes]
    labeled = np.zeros(y.shape[0], dtype=bool)
    chunks: list[list[IndexArray]] = [[] for _ in range(num_clients)]
    for c in range(num_classes):
        holders = [k for k in range(num_clients) if c in sets[k]]
        members = np.flatnonzero(y == c)
        if not holders or members.size == 0:
            continue
        members = members[rng.permutation(members.size)]
        pieces = np.array_split(members, len(holders))
        for j, k in enumerate(holders):
            piece = pieces[j] if cfg.disjoint else pieces[0]
            chunks[k].append(piece)
            if c in seen and (cfg.disjoint or j == 0):
                n_lab = round(cfg.labeled_fraction * piece.size)
                labeled[piece[rng.permutation(piece.size)[:n_lab]]] = True
    parts = [
        np.sort(np.concatenate(ch)).astype(np.int64) if ch else np.zeros(0, dtype=np.int64)
        for ch in chunks
    ]
    return OpenWorldSplit(parts, labeled, class_roles(cfg, num_classes))


# --------------------------------------------------------------------------- metrics


def hungarian_mapping(pred: npt.ArrayLike, true: npt.ArrayLike) -> dict[int, int]:
    """The one-to-one cluster -> class map maximising the number of matches.

    ``linear_sum_assignment`` on the negated ``pred x true`` count matrix (ORCA's
    ``cluster_acc``).  Clusters left without a class (more clusters than classes) map
    to ``-1``.
    """
    from scipy.optimize import linear_sum_assignment  # scipy only where it is used

    p = np.asarray(pred, dtype=np.int64)
    t = np.asarray(true, dtype=np.int64)
    if p.size == 0:
        return {}
    size = int(max(p.max(), t.max())) + 1
    counts = np.zeros((size, size), dtype=np.int64)
    np.add.at(counts, (p, t), 1)
    rows, cols = linear_sum_assignment(counts.max() - counts)
    mapping = {int(r): int(c) for r, c in zip(rows, cols, strict=True)}
    return {int(k): mapping.get(int(k), -1) for k in np.unique(p)}


def hungarian_accuracy(pred: npt.ArrayLike, true: npt.ArrayLike) -> float:
    """Accuracy after the best one-to-one relabelling of ``pred`` (0.0 when empty)."""
    p = np.asarray(pred, dtype=np.int64)
    t = np.asarray(true, dtype=np.int64)
    if p.size == 0:
        return 0.0
    mapping = hungarian_mapping(p, t)
    return float(np.mean(np.array([mapping[int(v)] for v in p]) == t))


def open_world_metrics(
    pred: npt.ArrayLike,
    true: npt.ArrayLike,
    roles: ClassRoles,
) -> dict[str, float]:
    """Seen / unseen / all accuracy, and unseen accuracy by locally vs globally unseen.

    ``acc_seen`` is plain accuracy on samples of seen classes (the head's seen rows are
    the seen classes); ``acc_unseen`` is Hungarian accuracy on samples of unseen classes;
    ``acc_all`` Hungarian accuracy on every sample; ``acc_unseen_local`` /
    ``acc_unseen_global`` are the accuracies of the *unseen* matching restricted to samples
    of locally / globally unseen classes (so ``acc_unseen`` is their sample-weighted
    mean).  A key is left out when its subset has no sample.
    """
    p = np.asarray(pred, dtype=np.int64)
    t = np.asarray(true, dtype=np.int64)
    out: dict[str, float] = {}
    is_seen = np.isin(t, roles.seen)
    if is_seen.any():
        out["acc_seen"] = float(np.mean(p[is_seen] == t[is_seen]))
    unseen = ~is_seen
    if unseen.any():
        mapping = hungarian_mapping(p[unseen], t[unseen])
        mapped = np.array([mapping[int(v)] for v in p[unseen]])
        hit = mapped == t[unseen]
        out["acc_unseen"] = float(hit.mean())
        for name, classes in (
            ("acc_unseen_local", roles.local_unseen),
            ("acc_unseen_global", roles.global_unseen),
        ):
            sel = np.isin(t[unseen], classes)
            if sel.any():
                out[name] = float(hit[sel].mean())
    if p.size:
        out["acc_all"] = hungarian_accuracy(p, t)
    return out
