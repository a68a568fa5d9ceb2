"""FedoSSL's wire format and options, shared by ``strategies.fedossl`` (server) and
``clients.fedossl`` (client): the four variants' configs and their load-time checks, the
record names, the centroid payloads and what stays on the clients (:func:`local_keys`).
Import-light: no torch, no Flower at import.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from fedsim.config import RunConfig, StrategyConfig
from fedsim.errors import ConfigError

if TYPE_CHECKING:
    import numpy as np
    from flwr.app import ArrayRecord
    from torch import nn

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
    """FedoSSL hyper-parameters; defaults are the official code's (spec §6) unless noted.

    The two views of a batch are ``train.augment``'s: the earlier ``strategy.crop_padding``
    and ``strategy.hflip`` are ``train.augment.crop_padding`` and ``train.augment.flip``.
    """

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
    # the two views come from train.augment (fedsim.data.augment), not from keys of this config
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


def augments(cfg: RunConfig) -> bool:
    """Whether ``train.augment`` (or the scenario's ``augment``) changes an image.

    Judged on 3-channel images: colour-only ops that do nothing on grey images pass here
    and are refused by the client, which knows the channels.
    """
    import torch  # only when checking: this module stays import-light

    from fedsim.data.augment import Augmenter, resolve

    ops = resolve(cfg.train.augment, cfg.scenario.augment)
    return Augmenter(ops, torch.zeros(3), torch.ones(3)).active


def views_needed(cfg: RunConfig) -> str:
    """The one-line refusal of a FedoSSL run whose augmentation changes nothing."""
    recipe = cfg.train.augment.recipe or cfg.scenario.augment or "none"
    return (
        f"train.augment.recipe: strategy {cfg.strategy.name} draws its two views from "
        f"train.augment, which changes nothing here (recipe {recipe!r}); set a recipe, "
        "e.g. train.augment.recipe=cifar (the official code's crop and flip)"
    )


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
    need(augments(cfg), views_needed(cfg))
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


def local_keys(model: nn.Module) -> set[str]:
    """What never leaves a FedoSSL client: the batch-norm running statistics (buffers in
    the code, never aggregated), chosen by module type, and the linear head's bias.  The
    clients' cosine head has no bias; the server's reference model keeps the linear head
    (:class:`strategies.fedossl.FedoSSL` evaluates no global model), so the server never
    sends its bias."""
    from fedsim.models.backbones import bn_running_stat_keys

    keys = bn_running_stat_keys(model)
    if "head.bias" in model.state_dict():
        keys.add("head.bias")
    return keys


# --------------------------------------------------------------------------- payloads

GLOBAL_RECORD = "fedossl.global"
LOCAL_RECORD = "fedossl.local"


@dataclass(frozen=True)
class CentroidsPayload:
    """Server -> client: the aligned global centroids ``Cg`` (``|C| x D``)."""

    centroids: np.ndarray

    def to_record(self) -> ArrayRecord:
        import numpy as np

        from fedsim.records import arrays_from_numpy

        return arrays_from_numpy({"centroids": self.centroids.astype(np.float32)})

    @classmethod
    def from_extra(cls, extra: Mapping[str, ArrayRecord]) -> CentroidsPayload | None:
        if GLOBAL_RECORD not in extra:
            return None
        from fedsim.records import numpy_from_arrays

        return cls(numpy_from_arrays(extra[GLOBAL_RECORD])["centroids"])


@dataclass(frozen=True)
class ClusterPayload:
    """Client -> server: local centroids and per-class sums/counts of labelled features."""

    local_centroids: np.ndarray  # (n_local, D), rows L2-normalised
    labeled_sum: np.ndarray  # (|C|, D), sums of L2-normalised labelled features
    labeled_count: np.ndarray  # (|C|,)

    def to_record(self) -> ArrayRecord:
        import numpy as np

        from fedsim.records import arrays_from_numpy

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
        from fedsim.records import numpy_from_arrays

        a = numpy_from_arrays(extra[LOCAL_RECORD])
        return cls(a["local_centroids"], a["labeled_sum"], a["labeled_count"])
