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
* The two views come from the shared ``train.augment`` (:mod:`fedsim.data.augment`), two
  ``sample``/``apply`` calls per batch, view 1 first, from the client's augmentation
  stream.  The official code always augments (``RandomCrop(32, padding=4)`` + flip for
  both views on CIFAR, ``open_world_cifar.py:191-197``, ``fedossl_cifar.py:413-419``):
  ``cifar10_open_world`` defaults to the ``cifar`` recipe, which is exactly that (black
  padding, as torchvision's), the digit scenarios to ``fraug_digits`` (no flip), and a run
  whose augmentation changes nothing (recipe ``none``) is refused at load rather than
  trained on two identical views.
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
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid

from fedsim.algorithms.aggregate import weighted_average
from fedsim.algorithms.payloads import TrainRes
from fedsim.algorithms.strategy import ServerContext, Strategy
from fedsim.errors import ConfigError
from fedsim.records import arrays_from_numpy, numpy_from_arrays
from fedsim.seeding import derive_seed
from protocols.fedossl import (
    GLOBAL_RECORD,
    OPEN_WORLD_KEYS,
    CentroidsPayload,
    ClusterPayload,
    fedossl_config,
)
from protocols.fedossl_math import (
    align_centroids,
    global_clustering,
)

log = logging.getLogger(__name__)


def load_checkpoint_arrays(
    path: str, arrays: dict[str, np.ndarray]
) -> tuple[dict[str, np.ndarray], int]:
    """Overwrite ``arrays`` entries with same-named, same-shaped tensors of a checkpoint.

    Accepts a plain state dict or one under ``state_dict``; strips ``module.`` and
    ``encoder.`` prefixes and renames ORCA's ``shortcut`` to ``downsample``.  Returns the
    updated arrays and how many were loaded (ConfigError if none matched).
    """
    try:
        blob = torch.load(Path(path).expanduser(), map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for a file that is not its own
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise ConfigError(
            f"strategy.checkpoint: {path} is not a PyTorch state dict ({type(e).__name__}: {first})"
        ) from None
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

    def check_initial(self, arrays: ArrayRecord) -> None:
        """``strategy.checkpoint`` must load into the model (checked at preflight)."""
        if self.fcfg.checkpoint:
            load_checkpoint_arrays(self.fcfg.checkpoint, numpy_from_arrays(arrays))

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
    from fedsim.algorithms.payloads import EvalRes

    return EvalRes.from_record(content).metrics
