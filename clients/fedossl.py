"""FedoSSL client (Zhang et al., ICML 2023, arXiv 2305.00771; server side and deviations in
``strategies.fedossl``).

The local objective of one mini-batch (spec §3), the loss stage of the client's round
(:class:`FedoSSLRun`, a :class:`fedsim.algorithms.client.LocalRun` run by the shared training loop;
``y < 0`` marks samples whose label is hidden; the hidden class ``c`` is carried as
``-1 - c`` for *measurement only* — the pseudo-label accuracy — and never enters a loss):

``L = CE_m + L_BCE - R + [t >= t_c] w_c L_clu + [t >= t_p] CE_pseudo + s lam_S (L_S1 + L_S2)``

* ``CE_margin``: cross-entropy on labelled samples with the target logit raised by
  ``s * m``, ``m = min(u_bar, cap)`` (ORCA's uncertainty-adaptive margin);
* ``L_BCE``: ``-log <p_i, p'_pi(i)>``, partner = a random other labelled sample of the same
  class, or the most cosine-similar other sample of the batch for unlabelled ones;
* ``R``: entropy of the mean prediction (keeps clusters from collapsing);
* ``L_clu``: cross-entropy between the centroid assignments ``q = softmax(Cg n(f) / T)`` of
  view 1 and those of the partner's view 2; ``CE_pseudo``: CE towards ``argmax q`` on
  unlabelled samples with ``max q`` above the threshold;
* ``L_S``: ``w_yhat (1 - p_yhat) / |C|`` on unlabelled samples, per view, with
  ``w_c = beta^(1 - N_c / N_max)`` (:func:`protocols.fedossl_math.suppression_weights`).

The two views of a batch come from the shared augmenter (``train.augment``,
:mod:`fedsim.data.augment`; the scenario's ``augment`` when no recipe is given): view 1's
``sample``/``apply``, then view 2's, both drawing from the client's augmentation stream of
the round (:meth:`fedsim.algorithms.client.Client.augment_generator`).  The official code always
augments, so a run whose ``train.augment`` changes nothing is refused at load
(:func:`protocols.fedossl.validate_fedossl`) instead of training on two identical views.
The random partners of labelled samples draw from a stream of their own
(``fedossl-pairs``).

Persistent client state (``context.state``):

* ``fedsim.local`` — batch-norm running statistics (never leave the client);
* ``fedossl.state`` — the memory bank of L2-normalised features (both views of this
  round's training forwards, newest ``memory_size`` rows first; emptied at the start of
  every round unless ``memory_scope=fifo``), the last local centroids and the last
  round's labelled feature sums / counts per class (kept for inspection);

Logged per round (``train/...``): ``pseudo_passed`` — share of unlabelled sample visits
whose centroid confidence ``max q`` passes ``pseudo_threshold``; ``pseudo_count`` — how
many; ``pseudo_acc`` — Hungarian accuracy of their pseudo-labels against the hidden
labels; ``pseudo_acc_seen`` — share of passing seen-class samples whose pseudo-label is
their class.  Measured whenever global centroids are present, also in rounds before
pseudo-labels enter the loss.
* ``fedsim.optim`` — optimizer state when ``train.persist_optimizer``.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from flwr.app import RecordDict
from torch import nn

from fedsim.algorithms.client import Client, ClientEnv, LocalResult, LocalRun
from fedsim.algorithms.payloads import EvalIns, EvalRes
from fedsim.algorithms.training import BatchOut, TrainStats
from fedsim.config import RunConfig
from fedsim.data.augment import Augmenter
from fedsim.data.federation import Federation
from fedsim.data.openworld import ClassRoles, class_roles, open_world_metrics
from fedsim.errors import ConfigError
from fedsim.models.backbones import Backbone, NormedLinear, replace_head
from fedsim.records import array_records, arrays_from_state, state_from_arrays
from fedsim.seeding import derive_rng, torch_generator
from protocols.fedossl import (
    LOCAL_RECORD,
    CentroidsPayload,
    ClusterPayload,
    FedoSSLConfig,
    fedossl_config,
    views_needed,
)
from protocols.fedossl import local_keys as fedossl_local_keys
from protocols.fedossl_math import local_kmeans, pseudo_label_stats, suppression_weights

log = logging.getLogger(__name__)

STATE_KEY = "fedossl.state"


def hide_labels(y: torch.Tensor, labeled: torch.Tensor) -> torch.Tensor:
    """``y`` where labelled, ``-1 - y`` where hidden (negative: the loss never sees it)."""
    return torch.where(labeled, y, -1 - y)


_SETUP_LOCK = threading.Lock()


# --------------------------------------------------------------------------- loss terms


def margin_cross_entropy(logits: torch.Tensor, target: torch.Tensor, shift: float) -> torch.Tensor:
    """CE with the target logit raised by ``shift`` (ORCA's ``MarginLoss(m=-m, s)``)."""
    if target.numel() == 0:
        return logits.sum() * 0.0
    bump = F.one_hot(target, logits.shape[1]).to(logits.dtype) * shift
    return F.cross_entropy(logits + bump, target)


def pair_partners(
    feats: torch.Tensor, y: torch.Tensor, gen: torch.Generator | None = None
) -> torch.Tensor:
    """Index of each sample's positive partner in the batch.

    A labelled sample (``y >= 0``) gets a random *other* labelled sample of its class (itself
    if it is the only one); an unlabelled sample gets the most cosine-similar other sample
    of the whole batch (ORCA).  ``feats`` should be detached.
    """
    n = feats.shape[0]
    fn = F.normalize(feats, dim=1)
    sim = fn @ fn.T
    sim.fill_diagonal_(-float("inf"))
    partner = sim.argmax(1) if n > 1 else torch.zeros(1, dtype=torch.long, device=feats.device)
    lab = torch.nonzero(y >= 0).squeeze(1)
    if lab.numel():
        yl = y[lab]
        same = yl[:, None] == yl[None, :]
        same.fill_diagonal_(False)
        noise = torch.rand(same.shape, generator=gen).to(feats.device)
        choice = torch.where(same, noise, torch.full_like(noise, -1.0)).argmax(1)
        own = torch.arange(lab.numel(), device=feats.device)
        choice = torch.where(same.any(1), choice, own)
        partner[lab] = lab[choice]
    return partner


def suppressed_loss(probs: torch.Tensor, weights: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``mean_i w_yhat_i * mean_c |p_ic - p~_ic| = mean_i w_yhat_i (1 - p_i,yhat_i) / |C|``."""
    if probs.shape[0] == 0:
        return probs.sum() * 0.0
    top, yhat = probs.max(1)
    return (weights[yhat.detach()] * (1.0 - top)).mean() / num_classes


@dataclass
class FedoSSLObjective:
    """The per-batch FedoSSL loss; also fills the memory bank and the labelled sums."""

    cfg: FedoSSLConfig
    server_round: int
    margin: float
    weights: torch.Tensor  # suppression weights per class
    centroids: torch.Tensor | None  # global centroids (|C| x D), or None
    memory: torch.Tensor  # M x D, newest first
    num_classes: int
    seen: tuple[int, ...]
    augmenter: Augmenter  # train.augment: the two views of every batch
    aug_gen: torch.Generator  # the client's augmentation stream of the round
    gen: torch.Generator  # the labelled samples' random partners
    labeled_sum: torch.Tensor = field(init=False)
    labeled_count: torch.Tensor = field(init=False)
    parts: dict[str, float] = field(default_factory=dict)
    batches: int = 0
    pseudo_ids: list[np.ndarray] = field(default_factory=list)
    pseudo_true: list[np.ndarray] = field(default_factory=list)
    pseudo_candidates: int = 0

    def __post_init__(self) -> None:
        dim = self.memory.shape[1]
        self.labeled_sum = torch.zeros(self.num_classes, dim)
        self.labeled_count = torch.zeros(self.num_classes)

    def _log(self, name: str, value: torch.Tensor) -> None:
        self.parts[name] = self.parts.get(name, 0.0) + float(value.detach())

    def views(self, x: torch.Tensor) -> torch.Tensor:
        """View 1 of the batch, then view 2, stacked (``2N x C x H x W``).

        Two ``sample``/``apply`` calls of the shared augmenter, view 1's draws first, both
        from the client's augmentation stream; outside autocast, so bf16 never rounds the
        pixels of a view.
        """
        aug = self.augmenter
        with torch.autocast(x.device.type, enabled=False):
            first = aug.apply(x, aug.sample(len(x), self.aug_gen))
            second = aug.apply(x, aug.sample(len(x), self.aug_gen))
        return torch.cat([first, second])

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        assert isinstance(model, Backbone)
        c = self.cfg
        n = x.shape[0]
        feats = model.features(self.views(x))
        logits = model.head(feats)
        f1, f2 = feats[:n], feats[n:]
        o1, o2 = logits[:n], logits[n:]
        p1, p2 = F.softmax(o1, dim=1), F.softmax(o2, dim=1)
        lab = y >= 0
        unl = ~lab

        ce = margin_cross_entropy(o1[lab], y[lab], c.margin_scale * self.margin)
        partner = pair_partners(f1.detach(), y, self.gen)
        pos = (p1 * p2[partner]).sum(1).clamp(1e-7, 1.0)
        bce = -torch.log(pos).mean()
        mean_p = p1.mean(0).clamp_min(1e-8)
        entropy = -(mean_p * torch.log(mean_p)).sum()
        loss = ce + bce - entropy
        self._log("ce", ce)
        self._log("bce", bce)
        self._log("entropy", entropy)

        cg = self.centroids
        if cg is not None and c.calibration:
            q1 = F.softmax(F.normalize(f1, dim=1) @ cg.T / c.temperature, dim=1)
            conf, target = q1[unl].detach().max(1)
            keep = conf > c.pseudo_threshold
            self._measure(target[keep], y[unl][keep], int(unl.sum()))
        if cg is not None and c.calibration and self.server_round >= c.calib_start_round:
            q2 = F.softmax(F.normalize(f2, dim=1) @ cg.T / c.temperature, dim=1)
            clu = -(q1 * torch.log(q2[partner].clamp_min(1e-8))).sum(1).mean()
            loss = loss + c.calib_weight * clu
            self._log("calib", clu)
            active = c.pseudo_labels and self.server_round >= c.pseudo_start_round
            if active and bool(keep.any()):
                pseudo = F.cross_entropy(o1[unl][keep], target[keep])
                loss = loss + pseudo
                self._log("pseudo", pseudo)
        if c.suppress_weight > 0 and unl.any():
            ls = suppressed_loss(p1[unl], self.weights, self.num_classes) + suppressed_loss(
                p2[unl], self.weights, self.num_classes
            )
            loss = loss + c.suppress_sign * c.suppress_weight * ls
            self._log("suppress", ls)

        with torch.no_grad():
            fresh = F.normalize(f1.detach().float(), dim=1).cpu()
            fresh2 = F.normalize(f2.detach().float(), dim=1).cpu()
            self.memory = torch.cat([fresh2, fresh, self.memory])[: c.memory_size]
            if lab.any():
                self.labeled_sum.index_add_(0, y[lab].cpu(), fresh[lab.cpu()])
                self.labeled_count += torch.bincount(y[lab].cpu(), minlength=self.num_classes)
        self.batches += 1
        return loss

    def _measure(self, pseudo: torch.Tensor, hidden: torch.Tensor, candidates: int) -> None:
        """Record passing pseudo-labels and their hidden classes (``-1 - y``)."""
        self.pseudo_candidates += candidates
        if pseudo.numel():
            self.pseudo_ids.append(pseudo.cpu().numpy())
            self.pseudo_true.append((-1 - hidden).cpu().numpy())

    def metrics(self) -> dict[str, float]:
        out = {f"loss_{k}": v / max(1, self.batches) for k, v in self.parts.items()}
        if self.pseudo_candidates:
            ids = np.concatenate(self.pseudo_ids) if self.pseudo_ids else np.zeros(0, np.int64)
            true = np.concatenate(self.pseudo_true) if self.pseudo_true else ids
            out["pseudo_candidates"] = float(self.pseudo_candidates)
            out["pseudo_count"] = float(ids.size)
            out["pseudo_passed"] = ids.size / self.pseudo_candidates
            stats = pseudo_label_stats(ids, true, self.seen)
            out.update({f"pseudo_{k}": v for k, v in stats.items()})
        return out


# --------------------------------------------------------------------------- client


_EVAL_SETS: dict[tuple[int, str, int], tuple[torch.Tensor, torch.Tensor]] = {}


def evaluation_set(fed: Federation, protocol: str, cap: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The samples every client is scored on (cached per federation).

    ``transductive``: every unlabelled training sample of the federation (union over
    clients); ``heldout``: the global test set.  ``cap > 0`` keeps a fixed random subset.
    """
    key = (id(fed), protocol, cap)
    with _SETUP_LOCK:
        hit = _EVAL_SETS.get(key)
        if hit is not None:
            return hit
        if protocol == "transductive":
            idx = np.unique(np.concatenate(fed.train_parts))
            if fed.labeled is not None:
                idx = idx[~fed.labeled[idx]]
            x, y = fed.data.train_x[idx], fed.data.train_y[idx]
        else:
            x, y = fed.data.test_x, fed.data.test_y
        if 0 < cap < len(y):
            pick = np.sort(derive_rng(fed.seed, "fedossl-eval").permutation(len(y))[:cap])
            x, y = x[pick], y[pick]
        _EVAL_SETS.clear()
        _EVAL_SETS[key] = (x, y)
        return x, y


class FedoSSLRun(LocalRun["FedoSSLClient"]):
    """A FedoSSL client's round: every local sample (hidden labels negative), the
    objective as the loss stage (it runs the model on the two views itself), local
    k-means on the memory bank at the end."""

    forward = "none"  # the objective makes and forwards the two views
    augment = False  # ... from the client's augmentation stream

    def data(self) -> tuple[torch.Tensor, torch.Tensor]:
        """All of the client's samples; a hidden label ``c`` is carried as ``-1 - c``."""
        data = self.client.env.fed.client(self.client.pid)
        lab = data.labeled
        self.labeled = lab if lab is not None else torch.ones_like(data.y, dtype=torch.bool)
        self.x_unlabeled = data.x[~self.labeled]
        return data.x, hide_labels(data.y, self.labeled)

    def setup(self) -> None:
        """Trainable layers, the round's margin and suppression weights (from the
        model's predictions on the unlabelled samples), and the objective with the
        memory bank the round starts from and the server's centroids."""
        client, ins, f = self.client, self.ins, self.client.fcfg
        model = client.model
        assert isinstance(model, Backbone)
        device = client.env.device
        client.set_trainable()
        u_bar, counts = client.uncertainty(self.x_unlabeled, ins.server_round)
        self.margin = min(u_bar, f.margin_cap)
        pairs = torch_generator(self.cfg.seed, "fedossl-pairs", ins.server_round, client.pid)
        down = CentroidsPayload.from_extra(ins.extra)
        self.objective = FedoSSLObjective(
            f,
            ins.server_round,
            self.margin,
            suppression_weights(counts, f.suppress_beta).to(device),
            None if down is None else torch.from_numpy(down.centroids.copy()).to(device),
            client.memory(model.feature_dim),
            client.env.fed.data.num_classes,
            client.roles.seen,
            client.views_augmenter(),
            client.augment_stream(ins.server_round),
            pairs,
        )

    def loss(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, out: BatchOut
    ) -> torch.Tensor:
        """The FedoSSL objective of the batch (module docstring)."""
        return self.objective(model, x, y)

    def finish(self, stats: TrainStats) -> LocalResult:
        """Local centroids of the memory bank (with calibration) go to the server with
        the labelled sums; the bank, the sums and the centroids stay in the state."""
        f, obj, ins, client = self.client.fcfg, self.objective, self.ins, self.client
        records = {}
        state = {
            "memory": obj.memory,
            "labeled_sum": obj.labeled_sum,
            "labeled_count": obj.labeled_count,
        }
        if f.calibration and obj.memory.shape[0] > 0:
            kgen = torch_generator(self.cfg.seed, "fedossl-kmeans", ins.server_round, client.pid)
            cent = local_kmeans(
                obj.memory, f.local_centroids, f.kmeans_iters, kgen, f.sk_lambda, f.sk_iters_local
            )
            state["local_centroids"] = cent
            records[LOCAL_RECORD] = ClusterPayload(
                cent.numpy(), obj.labeled_sum.numpy(), obj.labeled_count.numpy()
            ).to_record()
        client.state[STATE_KEY] = arrays_from_state(state)
        lab = self.labeled
        metrics = {
            "margin": self.margin,
            "labeled_fraction": float(lab.float().mean()) if len(lab) else 0.0,
            **obj.metrics(),
        }
        return LocalResult(records, metrics)


class FedoSSLClient(Client):
    """Client with the FedoSSL objective, a memory bank and local clustering."""

    Run = FedoSSLRun

    def __init__(self, env: ClientEnv, pid: int, state: RecordDict) -> None:
        _install_cosine_head(env)
        super().__init__(env, pid, state)
        self.fcfg = fedossl_config(env.cfg)
        self.roles: ClassRoles = class_roles(env.cfg.scenario.open_world, env.fed.data.num_classes)

    @staticmethod
    def local_keys(model: nn.Module, cfg: RunConfig) -> set[str]:
        """BN running statistics and a linear head's bias (:func:`protocols.fedossl.local_keys`)."""
        return fedossl_local_keys(model)

    # ---------------------------------------------------------------- helpers
    def set_trainable(self) -> None:
        """``train.trainable``, and only ``layer4`` and the head with ``freeze_backbone``."""
        for name, p in self.model.named_parameters():
            frozen = name in self.env.frozen  # train.trainable
            p.requires_grad_(
                not frozen
                and (not self.fcfg.freeze_backbone or name.startswith(("layer4.", "head.")))
            )

    @torch.no_grad()
    def _predict(self, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
        """Softmax outputs in eval mode."""
        self.model.eval()
        out = [
            F.softmax(self.model(x[i : i + batch_size].to(self.env.device)).float(), dim=1).cpu()
            for i in range(0, len(x), batch_size)
        ]
        num = self.env.fed.data.num_classes
        return torch.cat(out) if out else torch.zeros(0, num)

    def uncertainty(self, x_unl: torch.Tensor, rnd: int) -> tuple[float, torch.Tensor]:
        """``u_bar = 1 - mean max softmax`` and prediction counts ``N_c`` on unlabelled data."""
        num = self.env.fed.data.num_classes
        cap = self.fcfg.uncertainty_samples
        if 0 < cap < len(x_unl):
            pick = torch.randperm(
                len(x_unl), generator=torch_generator(self.cfg.seed, "fedossl-u", rnd, self.pid)
            )[:cap]
            x_unl = x_unl[pick]
        probs = self._predict(x_unl)
        if probs.shape[0] == 0:
            return 0.0, torch.zeros(num)
        conf, pred = probs.max(1)
        return float(1.0 - conf.mean()), torch.bincount(pred, minlength=num).float()

    def views_augmenter(self) -> Augmenter:
        """The shared augmenter that makes the two views (refused at load when off)."""
        if self.env.augmenter is None:  # only ops that do nothing on these images
            raise ConfigError(views_needed(self.cfg))
        return self.env.augmenter

    def augment_stream(self, server_round: int) -> torch.Generator:
        gen = self.augment_generator(server_round)
        assert gen is not None  # there is an augmenter
        return gen

    def memory(self, dim: int) -> torch.Tensor:
        """The bank a round starts from: empty (``round``) or last round's (``fifo``)."""
        if self.fcfg.memory_scope == "fifo" and STATE_KEY in array_records(self.state):
            saved = state_from_arrays(array_records(self.state)[STATE_KEY])
            if saved["memory"].shape[1:] == (dim,):
                return saved["memory"].float()
        return torch.zeros(0, dim)

    # ---------------------------------------------------------------- messages
    def evaluate(self, ins: EvalIns) -> EvalRes:
        x, y = evaluation_set(self.env.fed, self.fcfg.protocol, self.fcfg.eval_samples)
        with self.env.lock:
            self.load(ins.arrays)
            probs = self._predict(x)
        pred = probs.argmax(1).numpy()
        metrics = open_world_metrics(pred, y.numpy(), self.roles)
        seen = torch.from_numpy(np.isin(y.numpy(), self.roles.seen))
        loss = (
            float(F.nll_loss(torch.log(probs[seen].clamp_min(1e-12)), y[seen]))
            if seen.any()
            else 0.0
        )
        metrics["acc"] = metrics.get("acc_all", 0.0)
        metrics["loss"] = loss
        metrics["domain"] = 0.0
        return EvalRes(len(y), metrics)


def _install_cosine_head(env: ClientEnv) -> None:
    """Swap the process-wide model's linear head for FedoSSL's cosine head (once)."""
    with _SETUP_LOCK:
        model = env.model
        assert isinstance(model, Backbone)
        if isinstance(model.head, NormedLinear):
            return
        num = env.fed.data.num_classes
        with torch.random.fork_rng(devices=[]):  # leave the global generator untouched
            head = NormedLinear(model.feature_dim, num)
        replace_head(model, head)
        env.init_state.pop("head.bias", None)
        env.init_state["head.weight"] = head.weight.detach().cpu().clone()
