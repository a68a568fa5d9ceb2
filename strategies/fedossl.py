"""FedoSSL: Zhang, Ma, Guo, Xu, "Towards Unbiased Training in Federated Open-world
Semi-supervised Learning", ICML 2023, arXiv 2305.00771.

Implementation spec: ``shared/specs/fedossl.md`` (official code github.com/cugzj/FedoSSL,
commit dbaf341, an ORCA + Orchestra derivative).

What runs where
---------------
Server (this module, :class:`FedoSSL`):

* averages the shared parameters with *equal* client weights (the code's ``1/K``):
  backbone, batch-norm affine weights and the cosine head; batch-norm running statistics
  are buffers in the code and never travel, so they stay on the clients;
* global clustering (Orchestra): the clients' local centroids ``Z`` are clustered into
  ``|C|`` global centroids ``Cg`` by 500 SGD steps matching ``softmax(Cg n(Z)/T)`` to
  balanced Sinkhorn-Knopp targets (:func:`global_clustering`, :func:`sinkhorn`);
* alignment: the global centroid closest to the (count-weighted) mean labelled feature of
  seen class ``c`` is moved to row ``c``, the others fill the unseen rows in index order
  (:func:`align_centroids`), so cluster ids equal head ids on seen classes;
* broadcasts the averaged parameters and ``Cg`` (an extra ``ArrayRecord``,
  :class:`CentroidsPayload`);
* aggregates the clients' open-world evaluation (``eval/acc_seen``, ``eval/acc_unseen``,
  ``eval/acc_all``, ``eval/acc_unseen_local``, ``eval/acc_unseen_global``).

Client (``clients.fedossl``): the local objective (margin CE, pairwise BCE, entropy
regulariser, calibration against ``Cg``, confident pseudo-labels, uncertainty-aware
suppressed loss ``L_S``) through the shared training loop, then SK-balanced local k-means on
its memory bank; it sends its local centroids and per-class sums of labelled features
(:class:`ClusterPayload`: summaries, not data).  The memory bank, the prediction counts
used by ``L_S`` and the batch-norm running statistics stay on the client across rounds.

Paper-vs-code choices and deviations (all config switches, see :class:`FedoSSLConfig`)
--------------------------------------------------------------------------------------
* ``L_S`` is computed but commented out of the loss in every public file (spec §9.1), so
  the default ``fedossl`` is the public code's objective (``suppress_weight`` 0).  The
  ablation ``fedossl_ls`` turns it on as the paper describes it: ``suppress_weight`` 2 per
  view (the commented coefficient) and ``suppress_sign`` -1 (the CINIC file's sign, the
  direction that *suppresses* (raises the uncertainty of) frequently predicted classes,
  whose weight ``beta^(1 - N_c/N_max)`` is close to 1); ``suppress_sign=1`` gives the
  CIFAR file's sign.  ``N_c`` are dynamic counts of predictions on the client's
  unlabelled data at the start of the round (CINIC file), not the CIFAR file's
  hard-coded counts.
* The uncertainty ``u_bar`` of the adaptive margin is computed once per round on the
  client's own unlabelled samples (at most ``uncertainty_samples``), not before every
  local epoch on the shared transductive set.
* A batch is a uniform random draw of the client's samples (the shared loop), so its
  labelled share is proportional to ``n_l / (n_l + n_u)`` in expectation, not exactly.
  Both views go through one forward pass (batch-norm statistics over both views).
* The memory bank is emptied at the start of every round and filled by this round's
  training forwards (both views, newest ``memory_size`` rows), so local k-means sees the
  *current* model's features, as the code's bank (1,024 rows written by every forward,
  i.e. the two views of the last batch of 512) does.  ``memory_scope=fifo`` keeps the
  bank across rounds (the earlier behaviour; features of older models).  The code also
  writes evaluation features into it (spec §9.6); here only training forwards do.
  Labelled class means are sums of L2-normalised features over the round, averaged on
  the server weighted by counts (the code averages the clients' running means with
  weights ``1/K``).
* Calibration ``L_clu`` starts at round ``calib_start_round`` and pseudo-labels at
  ``pseudo_start_round`` (1-based: the code's ``t >= 5`` and ``t >= 7`` with 0-based t).
* Default initialisation is from scratch: the SimCLR checkpoints of ORCA cannot be
  downloaded here.  ``checkpoint=<path>`` loads a local state dict into the initial
  model (``module.``/``encoder.`` prefixes stripped, ORCA's ``shortcut`` renamed to
  ``downsample``), and ``freeze_backbone=true`` freezes everything but ``layer4`` and the
  head, as in the paper's protocol.
* Evaluation: ``protocol=transductive`` scores every client on the union of all unlabelled
  training samples (same set for every client, as ORCA/FedoSSL do);
  ``protocol=heldout`` on the global test set.  Each client uses the shared model with its
  own batch-norm statistics; the reported number is the mean over clients.

Baselines and ablations are registry entries of the same classes with other defaults:
``fedossl_orca`` (FedAvg + ORCA's local objective: no ``L_S``, no calibration, no
pseudo-labels, no clustering), ``fedossl_ls`` (the public objective + the paper's ``L_S``)
and ``fedossl_no_calib`` (``fedossl_ls`` without ``L_clu`` and pseudo-labels, which both
come from the global centroids: ORCA + ``L_S``).  The four are a 2 x 2 design: with or
without calibration, with or without ``L_S``.  ``fedossl_no_ls`` was the earlier name of
today's default.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid

from fedsim.aggregate import weighted_average
from fedsim.config import RunConfig, StrategyConfig
from fedsim.errors import ConfigError
from fedsim.payloads import TrainRes
from fedsim.records import arrays_from_numpy, numpy_from_arrays
from fedsim.seeding import derive_seed
from fedsim.strategy import ServerContext, Strategy
from strategies.fedossl_math import (  # noqa: F401  (re-exported for the client and tests)
    align_centroids,
    global_clustering,
    local_kmeans,
    pseudo_label_stats,
    sinkhorn,
    suppression_weights,
)

log = logging.getLogger(__name__)

PROTOCOLS = ("transductive", "heldout")
MEMORY_SCOPES = ("round", "fifo")
OPEN_WORLD_KEYS = (
    "acc_seen",
    "acc_unseen",
    "acc_all",
    "acc_unseen_local",
    "acc_unseen_global",
)


# --------------------------------------------------------------------------- config


@dataclass
class FedoSSLConfig(StrategyConfig):
    """FedoSSL hyper-parameters; defaults are the official code's (spec §6) unless noted."""

    name: str = "fedossl"
    # uncertainty-aware suppressed loss L_S (paper; commented out in the public code)
    suppress_weight: float = 0.0  # lambda_S per view; 0 = off (public code), 2 = paper
    suppress_sign: float = -1.0  # -1: suppress frequent classes (CINIC file); +1: CIFAR file
    suppress_beta: float = 0.2  # w_c = beta^(1 - N_c / N_max)
    # calibration against the server's global centroids
    calibration: bool = True  # L_clu, and the global clustering that feeds it
    calib_weight: float = 0.5
    calib_start_round: int = 6  # 1-based (code: t >= 5, 0-based)
    pseudo_labels: bool = True  # CE on unlabelled samples with max q > pseudo_threshold
    pseudo_threshold: float = 0.95
    pseudo_start_round: int = 8  # 1-based (code: t >= 7, 0-based)
    # ORCA terms
    margin_cap: float = 0.5  # m = min(u_bar, margin_cap)
    margin_scale: float = 10.0  # s: the target logit is raised by s * m
    temperature: float = 0.1  # T of the centroid softmaxes
    uncertainty_samples: int = 1024  # unlabelled samples used for u_bar and N_c (0 = all)
    # clustering
    local_centroids: int = 32
    memory_size: int = 1024
    memory_scope: str = "round"  # round: this round's features only (code) | fifo: across
    kmeans_iters: int = 5
    sk_lambda: float = 25.0
    sk_iters_local: int = 10
    sk_iters_global: int = 100
    global_steps: int = 500
    global_lr: float = 0.01
    # augmentation (two views on tensors)
    crop_padding: int = -1  # -1: image height / 8 (4 px on 32x32, as the code)
    hflip: bool = True  # random horizontal flip (turn off for digits)
    # evaluation and initialisation
    protocol: str = "transductive"  # transductive | heldout
    eval_samples: int = 0  # > 0: evaluate on a fixed random subset of this size
    checkpoint: str = ""  # local state-dict file (e.g. a SimCLR ResNet-18); "" = scratch
    freeze_backbone: bool = False  # train only layer4 and the head (paper, with checkpoint)

    def validate(self, run: RunConfig) -> None:
        validate_fedossl(run)


@dataclass
class FedoSSLOrcaConfig(FedoSSLConfig):
    """FedAvg with ORCA's local objective: FedoSSL without L_S and calibration."""

    name: str = "fedossl_orca"
    suppress_weight: float = 0.0
    calibration: bool = False
    pseudo_labels: bool = False


@dataclass
class FedoSSLLSConfig(FedoSSLConfig):
    """Ablation: the public objective + the paper's suppressed loss ``L_S`` (2 per view)."""

    name: str = "fedossl_ls"
    suppress_weight: float = 2.0


@dataclass
class FedoSSLNoCalibConfig(FedoSSLConfig):
    """Ablation: the paper's FedoSSL without calibration (ORCA + L_S: no L_clu, no
    pseudo-labels, no clustering), so that the four variants are a 2 x 2 design."""

    name: str = "fedossl_no_calib"
    suppress_weight: float = 2.0
    calibration: bool = False
    pseudo_labels: bool = False


def fedossl_config(cfg: RunConfig) -> FedoSSLConfig:
    """The typed strategy config of a run (ConfigError if it is not a FedoSSL one)."""
    s = cfg.strategy
    if not isinstance(s, FedoSSLConfig):
        raise ConfigError(f"strategy: '{s.name}' is not a FedoSSL configuration")
    return s


def validate_fedossl(cfg: RunConfig) -> None:
    """Semantic checks of a FedoSSL run; ConfigError names the key and what is allowed."""
    s = fedossl_config(cfg)

    def need(cond: bool, msg: str) -> None:
        if not cond:
            raise ConfigError(msg)

    need(
        cfg.scenario.open_world.enabled,
        f"scenario.open_world.enabled: strategy {s.name} needs an open-world scenario "
        "(e.g. scenario=cifar10_open_world)",
    )
    need(
        s.protocol in PROTOCOLS,
        f"strategy.protocol: unknown '{s.protocol}' (allowed: {', '.join(PROTOCOLS)})",
    )
    need(
        s.memory_scope in MEMORY_SCOPES,
        f"strategy.memory_scope: unknown '{s.memory_scope}' (allowed: {', '.join(MEMORY_SCOPES)})",
    )
    checks = [  # (key, holds, what is allowed)
        ("suppress_sign", s.suppress_sign in (-1.0, 1.0), "-1 or 1"),
        ("suppress_weight", s.suppress_weight >= 0, ">= 0"),
        ("suppress_beta", 0 < s.suppress_beta <= 1, "in (0, 1]"),
        ("temperature", s.temperature > 0, "> 0"),
        ("pseudo_threshold", 0 < s.pseudo_threshold <= 1, "in (0, 1]"),
        ("margin_cap", s.margin_cap >= 0, ">= 0"),
        ("local_centroids", s.local_centroids >= 1, ">= 1"),
        ("memory_size", s.memory_size >= s.local_centroids, ">= strategy.local_centroids"),
        ("kmeans_iters", s.kmeans_iters >= 1, ">= 1"),
        ("global_steps", s.global_steps >= 0, ">= 0"),
        ("global_lr", s.global_lr > 0, "> 0"),
        ("sk_lambda", s.sk_lambda > 0, "> 0"),
        ("eval_samples", s.eval_samples >= 0, ">= 0"),
        ("uncertainty_samples", s.uncertainty_samples >= 0, ">= 0"),
    ]
    for key, holds, allowed in checks:
        need(holds, f"strategy.{key}: must be {allowed}, got {getattr(s, key)}")
    if s.checkpoint:
        need(
            Path(s.checkpoint).expanduser().is_file(),
            f"strategy.checkpoint: file not found: {s.checkpoint}",
        )
    if s.freeze_backbone:
        need(
            cfg.backbone.name == "resnet18",
            "strategy.freeze_backbone: only for backbone=resnet18 (it trains layer4 and the "
            f"head), got backbone={cfg.backbone.name}",
        )


# --------------------------------------------------------------------------- payloads

GLOBAL_RECORD = "fedossl.global"
LOCAL_RECORD = "fedossl.local"


@dataclass(frozen=True)
class CentroidsPayload:
    """Server -> client: the aligned global centroids ``Cg`` (``|C| x D``)."""

    centroids: np.ndarray

    def to_record(self) -> ArrayRecord:
        return arrays_from_numpy({"centroids": self.centroids.astype(np.float32)})

    @classmethod
    def from_extra(cls, extra: Mapping[str, ArrayRecord]) -> CentroidsPayload | None:
        if GLOBAL_RECORD not in extra:
            return None
        return cls(numpy_from_arrays(extra[GLOBAL_RECORD])["centroids"])


@dataclass(frozen=True)
class ClusterPayload:
    """Client -> server: local centroids and per-class sums/counts of labelled features."""

    local_centroids: np.ndarray  # (n_local, D), rows L2-normalised
    labeled_sum: np.ndarray  # (|C|, D), sums of L2-normalised labelled features
    labeled_count: np.ndarray  # (|C|,)

    def to_record(self) -> ArrayRecord:
        return arrays_from_numpy(
            {
                "local_centroids": self.local_centroids.astype(np.float32),
                "labeled_sum": self.labeled_sum.astype(np.float32),
                "labeled_count": self.labeled_count.astype(np.float32),
            }
        )

    @classmethod
    def from_extra(cls, extra: Mapping[str, ArrayRecord]) -> ClusterPayload | None:
        if LOCAL_RECORD not in extra:
            return None
        a = numpy_from_arrays(extra[LOCAL_RECORD])
        return cls(a["local_centroids"], a["labeled_sum"], a["labeled_count"])


def load_checkpoint_arrays(
    path: str, arrays: dict[str, np.ndarray]
) -> tuple[dict[str, np.ndarray], int]:
    """Overwrite ``arrays`` entries with same-named, same-shaped tensors of a checkpoint.

    Accepts a plain state dict or one under ``state_dict``; strips ``module.`` and
    ``encoder.`` prefixes and renames ORCA's ``shortcut`` to ``downsample``.  Returns the
    updated arrays and how many were loaded (ConfigError if none matched).
    """
    blob = torch.load(Path(path).expanduser(), map_location="cpu", weights_only=True)
    if isinstance(blob, dict) and "state_dict" in blob:
        blob = blob["state_dict"]
    if not isinstance(blob, dict):
        raise ConfigError(f"strategy.checkpoint: {path} does not hold a state dict")
    out = dict(arrays)
    loaded = 0
    for key, tensor in blob.items():
        if not isinstance(tensor, torch.Tensor):
            continue
        name = str(key)
        for prefix in ("module.", "encoder."):
            name = name.removeprefix(prefix)
        name = name.replace("shortcut", "downsample")
        if name in out and tuple(out[name].shape) == tuple(tensor.shape):
            out[name] = tensor.detach().cpu().numpy().astype(out[name].dtype)
            loaded += 1
    if loaded == 0:
        raise ConfigError(
            f"strategy.checkpoint: no tensor of {path} matches the model's names and shapes"
        )
    return out, loaded


# --------------------------------------------------------------------------- strategy


class FedoSSL(Strategy):
    """FedAvg (equal weights) + global clustering, alignment and open-world evaluation."""

    #: The cosine head exists only on the clients (the server's reference model has a
    #: linear head) and batch-norm statistics are local: no central evaluation.
    has_global_model = False

    def __init__(self, ctx: ServerContext) -> None:
        super().__init__(ctx)
        self.fcfg = fedossl_config(ctx.cfg)
        self.centroids: np.ndarray | None = None
        self.cluster_loss = float("nan")
        self.pseudo: dict[str, float] = {}
        self._initialised = False

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        if not self._initialised and self.fcfg.checkpoint:
            loaded, n = load_checkpoint_arrays(self.fcfg.checkpoint, numpy_from_arrays(arrays))
            log.info("fedossl: %d tensors loaded from %s", n, self.fcfg.checkpoint)
            arrays = arrays_from_numpy(loaded)
        self._initialised = True
        messages = list(super().configure_train(server_round, arrays, config, grid))
        if self.centroids is not None and self.fcfg.calibration:
            record = CentroidsPayload(self.centroids).to_record()
            for msg in messages:
                msg.content[GLOBAL_RECORD] = record
        return messages

    def aggregate_arrays(self, results: list[tuple[int, TrainRes]]) -> dict[str, np.ndarray]:
        """Equal-weight average (code: ``1/K``), then global clustering and alignment."""
        updates = [numpy_from_arrays(res.arrays) for _, res in results]
        merged = weighted_average(updates, [1.0] * len(updates))
        self.pseudo = _pooled_pseudo([res.metrics for _, res in results])
        if self.fcfg.calibration:
            payloads = [ClusterPayload.from_extra(res.extra) for _, res in results]
            usable = [p for p in payloads if p is not None]
            if usable:
                self._cluster(usable)
        return merged

    def _cluster(self, payloads: list[ClusterPayload]) -> None:
        z = torch.from_numpy(np.concatenate([p.local_centroids for p in payloads]))
        sums = np.sum([p.labeled_sum for p in payloads], axis=0)
        counts = np.sum([p.labeled_count for p in payloads], axis=0)
        means = sums / np.maximum(counts, 1.0)[:, None]
        num_classes, dim = means.shape
        if self.centroids is None or self.centroids.shape != (num_classes, dim):
            gen = torch.Generator().manual_seed(derive_seed(self.ctx.cfg.seed, "fedossl-cg"))
            init = torch.rand(num_classes, dim, generator=gen) * 2 - 1
            self.centroids = F.normalize(init, dim=1).numpy()
        f = self.fcfg
        cg, self.cluster_loss = global_clustering(
            torch.from_numpy(self.centroids),
            z,
            f.global_steps,
            f.global_lr,
            f.temperature,
            f.sk_lambda,
            f.sk_iters_global,
        )
        seen = self.ctx.cfg.scenario.open_world.seen_classes
        self.centroids = align_centroids(cg.numpy(), means, seen)

    def round_metrics(self, server_round: int, arrays: ArrayRecord) -> dict[str, float]:
        if not self.fcfg.calibration or self.centroids is None:
            return {}
        return {"fedossl/global_cluster_loss": self.cluster_loss, **self.pseudo}

    def state_dict(self) -> dict[str, np.ndarray]:
        return {} if self.centroids is None else {"centroids": self.centroids}

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        self.centroids = state.get("centroids")
        self._initialised = True  # a resumed run must not reload the checkpoint

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        """The open-world means over clients; the wrapper adds them to its summary
        (``eval/acc`` = mean all-class accuracy)."""
        out: dict[str, float] = {}
        per_key: dict[str, list[float]] = {k: [] for k in OPEN_WORLD_KEYS}
        for msg in replies:
            if msg.has_error():
                continue
            metrics = _metrics_of(msg.content)
            for key in OPEN_WORLD_KEYS:
                if key in metrics:
                    per_key[key].append(metrics[key])
        for key, vals in per_key.items():
            if vals:
                out[key] = float(np.mean(vals))
        return MetricRecord(out) if out else None  # type: ignore[arg-type]


def _pooled_pseudo(metrics: list[dict[str, float]]) -> dict[str, float]:
    """Pseudo-label figures pooled over the clients of a round (sums, not per-client means).

    ``fedossl/pseudo_acc``: correct / passed over all clients (Hungarian per client);
    ``fedossl/pseudo_passed``: passed / candidate unlabelled sample visits;
    ``fedossl/pseudo_count``: passed sample visits, summed over clients.
    """
    passed = sum(m.get("pseudo_count", 0.0) for m in metrics)
    total = sum(m.get("pseudo_candidates", 0.0) for m in metrics)
    if total <= 0:
        return {}
    out = {"fedossl/pseudo_passed": passed / total, "fedossl/pseudo_count": passed}
    if passed > 0:
        correct = sum(m.get("pseudo_acc", 0.0) * m.get("pseudo_count", 0.0) for m in metrics)
        out["fedossl/pseudo_acc"] = correct / passed
    return out


def _metrics_of(content: RecordDict) -> dict[str, float]:
    from fedsim.payloads import EvalRes

    return EvalRes.from_record(content).metrics
