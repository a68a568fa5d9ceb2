"""FedoSSL's pure maths (Zhang et al., ICML 2023, arXiv 2305.00771): suppression weights,
Sinkhorn-Knopp balancing and Orchestra's local / global clustering (Lubana et al., ICML 2022,
arXiv 2205.11506), centroid alignment and the pseudo-label measurement.

No federation state here; the strategy (``strategies.fedossl``) and the client
(``clients.fedossl``) call these functions.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
import torch.nn.functional as F

from fedsim.algorithms import optim
from fedsim.data.openworld import hungarian_accuracy


def suppression_weights(counts: torch.Tensor, beta: float) -> torch.Tensor:
    """``w_c = beta^(1 - N_c / N_max)``: 1 for the most predicted class, ``beta`` for unpredicted.

    All ones when nothing was counted.
    """
    counts = counts.to(torch.float32)
    top = float(counts.max()) if counts.numel() else 0.0
    if top <= 0:
        return torch.ones_like(counts)
    return torch.pow(torch.full_like(counts, beta), 1.0 - counts / top)


@torch.no_grad()
def sinkhorn(scores: torch.Tensor, lam: float = 25.0, iters: int = 100) -> torch.Tensor:
    """Balanced soft assignments of ``N`` samples to ``K`` clusters (Orchestra's ``sknopp``).

    Starts from ``softmax(lam * scores)`` and alternately rescales clusters (each to total
    mass ``N / K``) and samples (each row to sum 1); stops early when the sample scaling
    changes by less than 1 %.

    Parameters
    ----------
    scores : torch.Tensor
        ``N x K`` similarities.
    lam : float
        Inverse temperature of the initial softmax.
    iters : int
        Maximum number of scaling rounds.

    Returns
    -------
    torch.Tensor
        ``N x K``, rows sum to 1, columns to about ``N / K``.
    """
    n, k = scores.shape
    # NumPy float64: the loop is thousands of tiny products per global-clustering call,
    # where torch's per-op overhead dominates.
    logits = scores.detach().double().cpu().numpy() * lam
    logits -= logits.max(axis=1, keepdims=True)
    probs = np.exp(logits)
    probs = (probs / probs.sum(axis=1, keepdims=True)).T  # K x N
    r = np.full(k, 1.0 / k)
    c = np.full(n, 1.0 / n)
    for it in range(iters):
        r = (1.0 / k) / np.maximum(probs @ c, 1e-300)
        c_new = (1.0 / n) / np.maximum(r @ probs, 1e-300)
        err = float(np.nansum(np.abs(c / c_new - 1))) if it % 10 == 0 else 1.0
        c = c_new
        if err < 1e-2:
            break
    out = (probs * c[None, :]).T * r[None, :] * n
    return torch.from_numpy(out).to(dtype=torch.float32, device=scores.device)


@torch.no_grad()
def local_kmeans(
    bank: torch.Tensor,
    k: int,
    iters: int,
    gen: torch.Generator,
    lam: float = 25.0,
    sk_iters: int = 10,
) -> torch.Tensor:
    """SK-balanced spherical k-means of the memory bank (Orchestra's ``local_clustering``).

    Centroids start from ``k`` random rows (with replacement if the bank is smaller), are
    reassigned ``iters`` times by :func:`sinkhorn`; an empty cluster takes a random row.
    Returns ``k x D`` L2-normalised centroids.
    """
    z = F.normalize(bank.float(), dim=1)
    n = z.shape[0]
    replace = n < k
    pick = (
        torch.randint(n, (k,), generator=gen) if replace else torch.randperm(n, generator=gen)[:k]
    )
    cent = z[pick].clone()
    for _ in range(iters):
        owner = sinkhorn(z @ cent.T, lam, sk_iters).argmax(1)
        for j in range(k):
            members = z[owner == j]
            if members.shape[0] == 0:
                members = z[torch.randint(n, (1,), generator=gen)]
            cent[j] = F.normalize(members.mean(0), dim=0)
    return cent


def global_clustering(
    centroids: torch.Tensor,
    z: torch.Tensor,
    steps: int,
    lr: float = 0.01,
    temperature: float = 0.1,
    lam: float = 25.0,
    sk_iters: int = 100,
) -> tuple[torch.Tensor, float]:
    """Fit global centroids to the clients' local centroids (Orchestra's ``global_clustering``).

    Each step: targets ``A = sinkhorn(Cg Z^T)``, predictions ``P = softmax(Cg n(Z) / T)``,
    loss ``-mean cos(A_i, P_i)``, one SGD step (lr, momentum 0.9, weight decay 1e-4), rows
    of ``Cg`` re-normalised.  Deterministic.

    Returns
    -------
    tuple
        The new ``|C| x D`` centroids (rows unit length) and the mean loss over the steps.
    """
    cg = torch.nn.Parameter(F.normalize(centroids.detach().float().clone(), dim=1))
    zn = F.normalize(z.detach().float(), dim=1)
    opt = optim.sgd([cg], lr=lr, momentum=0.9, weight_decay=1e-4)
    total = 0.0
    for _ in range(steps):
        with torch.no_grad():
            targets = sinkhorn(z.float() @ cg.T, lam, sk_iters)
        opt.zero_grad()
        probs = F.softmax(zn @ cg.T / temperature, dim=1)
        loss = -F.cosine_similarity(targets, probs, dim=-1).mean()
        loss.backward()
        opt.step()
        with torch.no_grad():
            cg.copy_(F.normalize(cg, dim=1))
        total += float(loss.detach())
    return cg.detach(), total / max(1, steps)


def align_centroids(
    centroids: np.ndarray, labeled_means: np.ndarray, seen: Iterable[int]
) -> np.ndarray:
    """Reorder global centroids so that row ``c`` of every seen class ``c`` is its cluster.

    For each seen class in increasing order, the not-yet-taken centroid most cosine-similar
    to the class's mean labelled feature goes to row ``c`` (the code takes the 2nd best when
    the best is taken; greedily skipping taken ones generalises that).  The remaining
    centroids fill the other rows in index order.  Seen classes without labelled features
    (all-zero mean) are treated as unseen rows.

    Parameters
    ----------
    centroids : numpy.ndarray
        ``|C| x D`` global centroids.
    labeled_means : numpy.ndarray
        ``|C| x D``; row ``c`` is the mean labelled feature of class ``c``.
    seen : iterable of int
        The seen classes.

    Returns
    -------
    numpy.ndarray
        The permuted ``|C| x D`` centroids.
    """
    num = centroids.shape[0]
    cn = centroids / np.maximum(np.linalg.norm(centroids, axis=1, keepdims=True), 1e-12)
    mn = labeled_means / np.maximum(np.linalg.norm(labeled_means, axis=1, keepdims=True), 1e-12)
    row_of: dict[int, int] = {}
    taken: set[int] = set()
    for c in sorted(int(s) for s in seen):
        if not np.any(labeled_means[c]):
            continue
        for j in np.argsort(-(cn @ mn[c]), kind="stable"):
            if int(j) not in taken:
                row_of[c] = int(j)
                taken.add(int(j))
                break
    rest = iter(j for j in range(num) if j not in taken)
    order = [row_of[r] if r in row_of else next(rest) for r in range(num)]
    return centroids[order]


def pseudo_label_stats(
    pseudo: np.ndarray, true: np.ndarray, seen: Iterable[int]
) -> dict[str, float]:
    """How good the pseudo-labels that passed the confidence threshold are.

    Measurement only: ``true`` are the hidden labels of the unlabelled samples, never used
    in training.

    Parameters
    ----------
    pseudo : numpy.ndarray
        Cluster ids (aligned global-centroid rows) of the samples that passed.
    true : numpy.ndarray
        Their hidden true classes.
    seen : iterable of int
        Seen classes: after alignment, cluster id ``c`` should *be* class ``c`` for them.

    Returns
    -------
    dict
        ``acc`` — Hungarian (one-to-one cluster -> class) accuracy, the measure used for
        unseen classes at evaluation; ``acc_seen`` — on passing samples of seen classes,
        the share whose cluster id equals the class (what the CE on pseudo-labels trains
        the head towards); ``seen_share`` — share of passing samples from seen classes.
        Empty when nothing passed.
    """
    p = np.asarray(pseudo, dtype=np.int64)
    t = np.asarray(true, dtype=np.int64)
    if p.size == 0:
        return {}
    is_seen = np.isin(t, list(seen))
    out = {"acc": hungarian_accuracy(p, t), "seen_share": float(is_seen.mean())}
    if is_seen.any():
        out["acc_seen"] = float(np.mean(p[is_seen] == t[is_seen]))
    return out
