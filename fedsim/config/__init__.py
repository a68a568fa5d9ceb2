"""Structured configuration: one dataclass per component, registered in Hydra's ConfigStore.

The composed run configuration (:class:`RunConfig`) has the groups ``scenario``,
``strategy``, ``backbone`` and ``runtime`` (chosen by name on the command line) and plain
sections ``train`` and ``channel``.  Scenario files in ``scenarios/`` are YAML documents
validated against :class:`ScenarioConfig`; they only pick values, they never add keys.

Every key documented here is also documented in ``scenarios/README.md``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from omegaconf import MISSING

# --------------------------------------------------------------------------- scenario


@dataclass
class SourceConfig:
    """One data source; several sources make a multi-domain dataset.

    ``format`` is one of ``sklearn_digits`` (embedded, no file needed), ``npz`` (arrays
    ``x`` uint8 and ``y``), ``idx`` (MNIST idx files, optionally gzipped), ``cifar``
    (CIFAR-10/100 python batches directory) or ``image_folder`` (``root/<class>/*.png``).
    Relative paths resolve against ``dataset.data_root``.
    """

    name: str = "digits"  # domain label used in reports and for by_domain partitions
    format: str = "sklearn_digits"
    train: str = ""  # npz file | idx images file | cifar directory | image folder root
    test: str = ""  # optional test split of the same format ("" = carve from train)
    train_labels: str = ""  # idx only: labels file of the training split
    test_labels: str = ""  # idx only: labels file of the test split
    fraction: float = 1.0  # fraction of this source's training data that is used
    max_samples: int = 0  # cap on training samples of this source (0 = no cap)


@dataclass
class DatasetConfig:
    """Which images, at which size, with which train/test split."""

    sources: list[SourceConfig] = field(default_factory=lambda: [SourceConfig()])
    data_root: str = ""  # "" = $FEDSIM_DATA, else <repo>/../shared/data
    image_size: int = 0  # 0 = native size (sources must agree); else resize to S x S
    channels: int = 0  # 0 = native (sources must agree); 1 = grey, 3 = RGB
    test_fraction: float = 0.2  # held out as global test set for sources without a test file
    normalize: bool = True  # per-channel standardisation with training-set statistics


@dataclass
class PartitionConfig:
    """How the training samples are spread over ``num_clients`` clients."""

    kind: str = "iid"  # iid | dirichlet | pathological | quantity_skew | by_domain
    alpha: float = 0.5  # dirichlet concentration (smaller = more label skew)
    min_samples: int = 2  # dirichlet / quantity_skew: smallest client size allowed
    balance: bool = False  # dirichlet: stop giving a client samples once it has N/K
    classes_per_client: int = 2  # pathological: shards of k classes per client
    quantity: str = "lognormal"  # quantity_skew: lognormal | powerlaw
    sigma: float = 1.0  # quantity_skew lognormal sigma
    power: float = 1.5  # quantity_skew power-law exponent
    # by_domain: clients_per_domain clients for every source, or an explicit mixture
    clients_per_domain: int = 1
    mixture: list[list[float]] = field(default_factory=list)  # per client weights over sources
    allow_empty: bool = False
    # a Flower Datasets partitioner by class name instead of ``kind`` (fedsim.data.flwr_partition)
    flwr: str = ""
    args: dict[str, Any] = field(default_factory=dict)  # its keyword arguments


@dataclass
class ShiftConfig:
    """Per-client synthetic feature shift applied once at load time."""

    # none | rotation | rotated_family | invert | permute_channels | noise | blur | contrast
    kind: str = "none"
    angle: float = 0.0  # rotation: the same angle (degrees) for every client
    delta: float = 15.0  # rotated_family: client i is rotated by i * delta degrees
    noise_std: float = 0.1  # noise: Gaussian noise std on the [0, 1] image scale
    blur_sigma: float = 1.0  # blur: Gaussian blur sigma in pixels
    contrast: list[float] = field(default_factory=lambda: [0.5, 1.5])  # contrast range
    brightness: list[float] = field(default_factory=lambda: [-0.2, 0.2])  # brightness range
    clients: list[int] = field(default_factory=list)  # shifted clients ([] = every client)


@dataclass
class OpenWorldConfig:
    """Seen/unseen class split for open-world semi-supervised learning (FedoSSL)."""

    enabled: bool = False
    seen_classes: list[int] = field(default_factory=list)
    labeled_fraction: float = 0.5  # fraction of each seen class that carries its label
    client_classes: list[list[int]] = field(default_factory=list)  # classes held per client
    disjoint: bool = True  # clients sharing a class get disjoint samples of it


@dataclass
class ParticipationConfig:
    """Who trains in a round; deterministic given the seed."""

    fraction: float = 1.0  # fraction of clients sampled per round, in (0, 1]
    clients_per_round: int = 0  # > 0 overrides fraction
    min_clients: int = 1  # fewer successful replies than this => the round is skipped
    availability: float = 1.0  # probability that a client is reachable in a round
    diurnal_period: int = 0  # > 0: availability follows a cosine of this period (rounds)
    dropout: float = 0.0  # probability that a sampled client drops out mid-round
    straggler_fraction: float = 0.0  # fraction of clients that are slow
    straggler_slowdown: float = 3.0  # speed factor of a slow client
    deadline: float = 0.0  # simulated round deadline (time units); 0 = none


@dataclass
class EvaluationConfig:
    """Federated (per-client held-out) and centralised (global test set) evaluation."""

    holdout_fraction: float = 0.2  # per-client held-out share of its samples
    # > 0: a selection split of this share of each client's training part, never trained
    # on; clients report eval/val_acc on it beside their test metrics, and the run reports
    # the test accuracy at each client's best validation round (eval/acc_at_best_val)
    validation_fraction: float = 0.0
    fraction: float = 1.0  # fraction of clients evaluated per evaluation round (0 = none)
    global_test: bool = True  # evaluate the global model on the global test set
    # what a client's test metrics (eval/acc) are scored on: ``holdout`` (its own held-out
    # share) or ``domain_file`` (the whole test split of its domain's source)
    test: str = "holdout"


@dataclass
class FaultConfig:
    """Fault injection for reliability experiments (off by default)."""

    crash: float = 0.0  # probability that a client raises in a round
    nan: float = 0.0  # probability that a client returns NaN parameters
    delay: float = 0.0  # probability that a client sleeps for delay_s
    delay_s: float = 0.0
    byzantine: float = 0.0  # fraction of clients that attack (a fixed set per seed)
    attack: str = "sign_flip"  # sign_flip | gaussian | scale | label_flip
    attack_scale: float = 4.0  # sign_flip: sends -scale * update; scale: +scale * update
    attack_std: float = 1.0  # gaussian: sends received + N(0, attack_std^2) noise


@dataclass
class ProblemConfig:
    """The parameters of ``scenario.task=bilinear``.

    The distributed bilinear saddle point of MASHA (arXiv 2110.03313, spec section 7),
    ``f_m(x, y) = x^T A_m y + a_m^T x + b_m^T y + (lam/2)||x||^2 - (lam/2)||y||^2`` with
    ``x, y`` in R^dim, generated from the seed; no dataset and no backbone are built.
    """

    dim: int = 100  # bilinear: dimension of x and of y (z = (x, y) has 2 * dim entries)
    lam: float = 1.0  # bilinear: strong monotonicity mu = lam
    scale: float = 1.0  # bilinear: A_m entries i.i.d. N(0, scale^2) (spec default)
    noise: float = 1.0  # bilinear: a_m, b_m ~ N(0, noise^2 I)
    # bilinear: A_m = alpha (A_0 + similarity * E_m); inf = independent A_m (spec default),
    # 0 = identical A_m
    similarity: float = float("inf")
    condition: float = 0.0  # bilinear: > 1 sets alpha so that L / mu = condition; 0 = scale


@dataclass
class ScenarioConfig:
    """A federation: data, partition, shifts, participation and evaluation."""

    name: str = "digits_iid"
    description: str = ""
    file: str = ""  # the YAML file this scenario came from (set by fedsim, for messages)
    num_clients: int = 10
    rounds: int = 0  # > 0: the default of the run's ``rounds`` (``rounds=`` still wins)
    augment: str = ""  # the default of ``train.augment.recipe`` for this data ("" = none)
    # what the federation learns: a registered task (fedsim.algorithms.task; classification,
    # bilinear)
    task: str = "classification"
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    partition: PartitionConfig = field(default_factory=PartitionConfig)
    shift: ShiftConfig = field(default_factory=ShiftConfig)
    open_world: OpenWorldConfig = field(default_factory=OpenWorldConfig)
    participation: ParticipationConfig = field(default_factory=ParticipationConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    faults: FaultConfig = field(default_factory=FaultConfig)
    problem: ProblemConfig = field(default_factory=ProblemConfig)


# --------------------------------------------------------------------------- model/train


@dataclass
class BackboneConfig:
    """A vision backbone with a ``features``/``head`` split (see ``fedsim.models.backbones``)."""

    name: str = "cnn_digits"  # cnn_digits | resnet18 | convnext | mlp | logreg
    width: float = 1.0  # width multiplier on the channel/hidden sizes
    channels_last: bool = False  # use torch.channels_last memory format (CUDA speed-up)
    checkpoint: str = ""  # a local state dict (fedsim pretrain writes one) to start from


@dataclass
class AugmentConfig:
    """Data augmentation inside the one training loop (:mod:`fedsim.data.augment`).

    ``recipe`` names a set of ops (``none``, ``cifar``, ``fraug_digits``, ``simclr``; ""
    = the scenario's ``augment``, else ``none``); every other key, when set, overrides the
    recipe's value of that op (``None`` = the recipe's).  Ops run batched on the tensor's
    device on the ``[0, 1]`` pixel scale (the dataset's normalisation is undone and
    redone around them), with randomness from the client's per-round stream; evaluation
    never augments.
    """

    recipe: str = ""
    # random crop of the original size after zero-padding by this many pixels (0 = off)
    crop_padding: int | None = None
    # random resized crop: area scale range and aspect-ratio range ([] = off)
    resized_crop_scale: list[float] | None = None
    resized_crop_ratio: list[float] | None = None
    flip: float | None = None  # horizontal flip probability
    # colour jitter strengths (torchvision's ColorJitter conventions) and its probability
    brightness: float | None = None
    contrast: float | None = None
    saturation: float | None = None
    hue: float | None = None
    jitter_p: float | None = None
    grayscale: float | None = None  # random grayscale probability


@dataclass
class TrainConfig:
    """Local training of a client (shared by every strategy)."""

    local_epochs: int = 1
    local_steps: int = 0  # > 0: this many mini-batch steps instead of epochs
    batch_size: int = 32
    lr: float = 0.05
    momentum: float = 0.0
    nesterov: bool = False  # sgd: Nesterov momentum (needs momentum > 0)
    weight_decay: float = 0.0
    optimizer: str = "sgd"  # sgd | adam
    persist_optimizer: bool = False  # keep optimizer state in the client state across rounds
    # per-round learning rate (fedsim.algorithms.schedules): constant | exponential | step | cosine
    schedule: str = "constant"
    lr_decay: float = 1.0  # exponential: lr * lr_decay^(round-1); step: factor per lr_step
    lr_step: int = 1  # step: rounds between two decays
    lr_min: float = 0.0  # cosine: the rate reached at the last round
    warmup_rounds: int = 0  # linear warm-up from lr / warmup_rounds over these rounds
    clip_norm: float = 0.0  # > 0: clip the gradient's global L2 norm at each step
    label_smoothing: float = 0.0  # cross-entropy label smoothing in [0, 1)
    # module-name prefixes that train ([] = all); the rest is frozen and never sent
    trainable: list[str] = field(default_factory=list)
    augment: AugmentConfig = field(default_factory=AugmentConfig)


@dataclass
class StrategyConfig:
    """Base of every strategy config; ``name`` selects the algorithm in the registry
    (:mod:`fedsim.algorithms.registry`).  Each algorithm's config subclasses this one."""

    name: str = "fedavg"

    #: True for algorithms that solve a ``scenario.problem`` without a backbone (MASHA).
    solves_problems: ClassVar[bool] = False

    def validate(self, run: RunConfig) -> None:
        """The algorithm's own checks of the whole run configuration, at load, before
        anything is created; raise :class:`fedsim.errors.ConfigError` naming the key."""


@dataclass
class RuntimeConfig:
    """Which engine hosts the ServerApp and ClientApps."""

    name: str = "inline"  # inline | ray
    workers: int = 0  # inline: 0 = in this process; N > 0 = N worker processes
    threads: int = (
        0  # torch threads per client process (0 = torch's default); 1 makes runtimes bit-comparable
    )
    # ray: "" = a private local Ray instance; auto | host:port | ray://host:port = join a cluster
    address: str = ""
    client_cpus: float = 1.0  # ray: CPUs reserved per ClientApp
    client_gpus: float = 0.0  # ray: fraction of a GPU per ClientApp
    timeout: float = 3600.0  # seconds the server waits for replies in a round
    wait_nodes: float = 60.0  # deployment: seconds to wait at start for all clients' nodes
    # inline: train a round's clients together, many per batched step (fedsim.algorithms.vectorize):
    # off | auto (when possible, else one by one, said once in the log) | on (refuse if not)
    vectorize: str = "off"


@dataclass
class ChannelSideConfig:
    """Compression of one direction of the link: a compressor registered under the
    entry-point group ``fedsim.channels`` (``fedsim.algorithms.channels.channel_classes``: identity,
    randk, topk, qsgd, sparse and any installed plug-in), built from this section by its
    ``from_config`` and checked by its ``check``."""

    name: str = "identity"
    ratio: float = 0.1  # randk/topk: fraction of coordinates kept
    levels: int = 16  # qsgd: quantisation levels


@dataclass
class ChannelConfig:
    """Uplink (client -> server) and downlink compression; ``channel.up=randk`` is
    shorthand for ``channel.up.name=randk`` (see ``fedsim.engine.conf``)."""

    up: ChannelSideConfig = field(default_factory=ChannelSideConfig)
    down: ChannelSideConfig = field(default_factory=ChannelSideConfig)


@dataclass
class DPConfig:
    """Flower's differential-privacy wrappers around any strategy (off by default).

    ``kind``: ``none``, ``server_fixed`` / ``server_adaptive`` (the server clips and adds
    noise: ``DifferentialPrivacyServerSide*Clipping``) or ``client_fixed`` /
    ``client_adaptive`` (the clients clip, the server adds noise:
    ``DifferentialPrivacyClientSide*Clipping`` with Flower's clipping mods).
    """

    kind: str = "none"
    noise_multiplier: float = 1.0
    clipping_norm: float = 1.0  # fixed clipping
    initial_clipping_norm: float = 0.1  # adaptive clipping (Andrew et al., arXiv 1905.03871)
    target_clipped_quantile: float = 0.5
    clip_norm_lr: float = 0.2


DEFAULTS: list[Any] = [
    {"scenario": "digits_iid"},
    {"strategy": "fedavg"},
    {"backbone": "cnn_digits"},
    {"runtime": "inline"},
    "_self_",
]


@dataclass
class RunConfig:
    """The whole experiment: ``fedsim run key=value ...`` overrides any of these."""

    defaults: list[Any] = field(default_factory=lambda: list(DEFAULTS))
    scenario: ScenarioConfig = MISSING
    strategy: StrategyConfig = MISSING
    backbone: BackboneConfig = MISSING
    runtime: RuntimeConfig = MISSING
    train: TrainConfig = field(default_factory=TrainConfig)
    channel: ChannelConfig = field(default_factory=ChannelConfig)
    dp: DPConfig = field(default_factory=DPConfig)
    rounds: int = 20
    seed: int = 0
    output_dir: str = "runs"
    experiment: str = (
        ""  # sweep name; runs go to <output_dir>/<experiment>/... (default: scenario name)
    )
    tag: str = ""  # extra directory level for swept overrides (set by multirun)
    overwrite: bool = False  # replace an existing complete run directory
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: str = "fp32"  # fp32 | bf16 (autocast on CUDA only)
    eval_every: int = 1
    checkpoint_every: int = 0
    resume: bool = False
    progress: bool = True


def upgrade_plain(plain: dict[str, Any]) -> dict[str, Any]:
    """A plain configuration (``run.json``, a checkpoint) in today's keys.

    Written before ``scenario.task`` existed, ``scenario.problem`` named the task under the
    key ``kind``; such a record reads as the same experiment (a resume is accepted, a
    sweep's complete run is recognised).  Current records are returned unchanged.
    """
    scenario = plain.get("scenario")
    problem = scenario.get("problem") if isinstance(scenario, dict) else None
    if not isinstance(scenario, dict) or not isinstance(problem, dict) or "kind" not in problem:
        return plain
    rest = {k: v for k, v in problem.items() if k != "kind"}
    return {**plain, "scenario": {**scenario, "problem": rest, "task": problem["kind"]}}
