"""FRAug client (Chen et al., ICCV 2023, arXiv 2205.14900): representation augmentation
with a shared generator and a local RTNet.

Per local iteration, on the batch ``(x, y)`` (spec §4, ``strategies.fraug`` for the
server side and the paper-vs-code switches):

(a) model step, through the shared training loop (``fedsim.algorithms.training``):
    ``(1 - lam_t) CE(h(g(x)), y) + lam_t / 2 [CE(h(e_proto), y_cyc) + CE(h(e_real), y)]``
    with synthetic embeddings built without gradient (they only train the head ``h``);
    the class prototypes' EMA update comes first, on this batch's embedding, so
    ``e_proto`` is anchored on the updated prototypes (official code order);
(b) generator step (model in eval mode): ``CE(h(G(z, y)), y) - lam_G Dist_G(G(z, y), ref)``;
(c) RTNet step (model, G in eval mode): for the prototype- and the real-anchored branch,
    ``-H(softmax(h(a + T(G(z, y), y)))) + lam_RT Dist_RT(a + T(...), a)``, averaged.

The round is a :class:`fedsim.algorithms.client.LocalRun` (:class:`FRAugRun`): its setup builds the
generator, the RTNet, the prototypes and their optimizers; the loop computes each batch's
embedding and logits itself (``forward="features"``) and hands them to the loss stage,
step (a); the after-step runs (b) and (c) on that batch; finish keeps the private parts
and sends the generator.  The amount of local work is the declared
:func:`protocols.fraug.local_train` (``local_iterations``), not a patched configuration.

Persistent client state (``context.state``), besides ``fedsim.local`` (BN running
statistics, or all BN tensors with ``strategy.local_bn=all``) and ``fedsim.algorithms.optim``:

* ``fraug.rtnet`` — the RTNet's state dict (never sent);
* ``fraug.prototypes`` — ``mu`` (``C x D`` EMA class prototypes; never sent);
* ``fraug.optim`` — momentum buffers of the generator's and the RTNet's SGD optimizers
  (``g/<i>/momentum_buffer``, ``rt/<i>/momentum_buffer``; never sent).

The generator goes back to the server in the reply's ``fraug.generator`` record.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from fedsim.algorithms import optim
from fedsim.algorithms.client import Client, LocalResult, LocalRun
from fedsim.algorithms.optim import Optimizer
from fedsim.algorithms.payloads import TrainIns
from fedsim.algorithms.training import BatchOut, TrainStats
from fedsim.config import RunConfig, TrainConfig
from fedsim.models.backbones import Backbone
from fedsim.records import array_records, arrays_from_state, state_from_arrays
from fedsim.seeding import derive_seed, torch_generator
from protocols.fraug import (
    LAMBDA_KEY,
    RHO_KEY,
    FRAugConfig,
    GeneratorPayload,
    fraug_config,
    local_train,
)
from protocols.fraug import local_keys as fraug_local_keys

RTNET_KEY = "fraug.rtnet"
PROTOTYPES_KEY = "fraug.prototypes"
FRAUG_OPTIM_KEY = "fraug.optim"

Distance = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


# --------------------------------------------------------------------------- networks


class Generator(nn.Module):
    """Shared generator ``G_w``: ``[z ; onehot(y)] -> R^D`` (non-negative, post-ReLU).

    ``Linear(d_z + C, D), BN1d, ReLU, Linear(D, D), BN1d, ReLU`` (spec §2).
    """

    def __init__(self, latent_dim: int, num_classes: int, feature_dim: int) -> None:
        super().__init__()
        self.latent_dim, self.num_classes = latent_dim, num_classes
        self.net = nn.Sequential(
            nn.Linear(latent_dim + num_classes, feature_dim),
            nn.BatchNorm1d(feature_dim),
            nn.ReLU(),
            nn.Linear(feature_dim, feature_dim),
            nn.BatchNorm1d(feature_dim),
            nn.ReLU(),
        )

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.net(torch.cat([z, F.one_hot(y, self.num_classes).to(z)], 1))
        return out


class RTNet(nn.Module):
    """Local residual transform ``T_psi``: ``[G output ; onehot(y)] -> residual in R^D``.

    ``Linear(D + C, d_z), BN1d, ReLU, Linear(d_z, D), BN1d`` (the code's
    ``FTNet_with_BN=True``); the caller adds the residual to its anchor.
    """

    def __init__(self, latent_dim: int, num_classes: int, feature_dim: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.net = nn.Sequential(
            nn.Linear(feature_dim + num_classes, latent_dim),
            nn.BatchNorm1d(latent_dim),
            nn.ReLU(),
            nn.Linear(latent_dim, feature_dim),
            nn.BatchNorm1d(feature_dim),
        )

    def forward(self, e: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.net(torch.cat([e, F.one_hot(y, self.num_classes).to(e)], 1))
        return out


def latent_size(cfg: FRAugConfig, feature_dim: int) -> int:
    """``d_z``: ``strategy.latent_dim``, or ``D // 2`` when it is 0 (the code's default)."""
    return cfg.latent_dim if cfg.latent_dim > 0 else max(1, feature_dim // 2)


def _seeded(build: Callable[[], nn.Module], seed: int) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def make_generator(cfg: FRAugConfig, num_classes: int, feature_dim: int, seed: int) -> Generator:
    """The round-1 generator, identical on every client for the same run seed."""
    dz = latent_size(cfg, feature_dim)
    g = _seeded(lambda: Generator(dz, num_classes, feature_dim), derive_seed(seed, "fraug.gen"))
    assert isinstance(g, Generator)
    return g


def make_rtnet(cfg: FRAugConfig, num_classes: int, feature_dim: int, seed: int, pid: int) -> RTNet:
    """A client's initial RTNet (its own seed stream)."""
    dz = latent_size(cfg, feature_dim)
    t = _seeded(lambda: RTNet(dz, num_classes, feature_dim), derive_seed(seed, "fraug.rt", pid))
    assert isinstance(t, RTNet)
    return t


# --------------------------------------------------------------------------- maths


def l1_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return F.l1_loss(a, b)


def l2_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The code's ``L2``: ``MSELoss`` (mean of squared differences)."""
    return F.mse_loss(a, b)


def mmd_moments(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``mean((m_a - m_b)^2) + mean((Cov_a - Cov_b)^2)`` (the code's ``MMD``)."""

    def cov(x: torch.Tensor) -> torch.Tensor:
        xc = x - x.mean(0, keepdim=True)
        return xc.T @ xc / max(1, x.shape[0] - 1)

    return (a.mean(0) - b.mean(0)).pow(2).mean() + (cov(a) - cov(b)).pow(2).mean()


def mmd_kernel(
    a: torch.Tensor, b: torch.Tensor, kernel_mul: float = 2.0, kernel_num: int = 5
) -> torch.Tensor:
    """Multi-bandwidth Gaussian-kernel MMD (the code's ``MMD_kernel``, DAN-style).

    Bandwidths ``bw * kernel_mul^i``, ``i = 0..kernel_num-1``, with ``bw`` the mean
    pairwise squared distance of the pooled samples divided by ``kernel_mul^(num//2)``
    (= 4), detached; ``MMD = mean(Kaa) + mean(Kbb) - 2 mean(Kab)``.
    """
    n = a.shape[0]
    pooled = torch.cat([a, b], 0)
    d2 = torch.cdist(pooled, pooled).pow(2)
    m = pooled.shape[0]
    bw = d2.detach().sum() / max(1, m * m - m) / (kernel_mul ** (kernel_num // 2))
    bw = torch.clamp(bw, min=1e-12)
    k = sum(torch.exp(-d2 / (bw * kernel_mul**i)) for i in range(kernel_num))
    assert isinstance(k, torch.Tensor)
    return k[:n, :n].mean() + k[n:, n:].mean() - 2 * k[:n, n:].mean()


DISTANCE_FNS: dict[str, Distance] = {
    "L1": l1_distance,
    "L2": l2_distance,
    "MMD": mmd_moments,
    "MMD_kernel": mmd_kernel,
}


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Batch-mean Shannon entropy of ``softmax(logits)``."""
    logp = F.log_softmax(logits, 1)
    return -(logp.exp() * logp).sum(1).mean()


def cyclic_labels(n: int, batch: int, num_classes: int, device: torch.device) -> torch.Tensor:
    """Balanced labels ``rotate([0..C-1], (n * B) mod C)`` tiled to length ``B``.

    >>> cyclic_labels(1, 4, 3, torch.device("cpu")).tolist()  # offset 4 mod 3 = 1
    [1, 2, 0, 1]
    """
    offset = (n * batch) % num_classes
    return (torch.arange(batch, device=device) + offset) % num_classes


def sample_noise(kind: str, rows: int, dim: int, gen: torch.Generator) -> torch.Tensor:
    """``z``: U[0, 1) (``uniform``, the code) or N(0, I) (``gaussian``, the paper)."""
    if kind == "gaussian":
        return torch.randn(rows, dim, generator=gen)
    return torch.rand(rows, dim, generator=gen)


def update_prototypes(
    mu: torch.Tensor, features: torch.Tensor, y: torch.Tensor, ema: float
) -> torch.Tensor:
    """EMA ``mu_c <- (1 - ema) mu_c + ema * mean_{i: y_i = c} e_i`` for classes in the batch.

    >>> mu = update_prototypes(torch.zeros(2, 1), torch.tensor([[2.0], [4.0]]),
    ...                        torch.tensor([1, 1]), 0.3)
    >>> [round(v, 4) for v in mu.flatten().tolist()]  # class 0 absent: stays 0
    [0.0, 0.9]
    """
    out = mu.clone()
    feats = features.detach().to(mu)
    sums = torch.zeros_like(mu).index_add_(0, y, feats)
    counts = torch.bincount(y, minlength=mu.shape[0]).to(mu)
    present = counts > 0
    means = sums[present] / counts[present, None]
    out[present] = (1 - ema) * mu[present] + ema * means
    return out


@dataclass
class Augmenter:
    """The FRAug components of one client and their three losses.

    ``head`` is the model's classifier, ``g`` the shared generator, ``t`` the local RTNet,
    ``mu`` the class prototypes.  The loss methods are pure given their inputs (noise and
    labels are passed in), so each can be tested alone.
    """

    cfg: FRAugConfig
    g: Generator
    t: RTNet
    mu: torch.Tensor
    num_classes: int

    def synthetic(
        self, anchor: torch.Tensor, z: torch.Tensor, y: torch.Tensor, rho: float
    ) -> torch.Tensor:
        """``anchor + T(G(z, y), y)``, interpolated towards the anchor if configured."""
        e = anchor + self.t(self.g(z, y), y)
        if self.cfg.use_feature_inter:
            e = rho * e + (1 - rho) * anchor
        return e

    def classifier_loss(
        self,
        head: nn.Module,
        real: torch.Tensor,
        y: torch.Tensor,
        z: tuple[torch.Tensor, torch.Tensor],
        y_cyc: torch.Tensor,
        rho: float,
    ) -> torch.Tensor:
        """``1/2 [CE(h(e_proto), y_cyc) + CE(h(e_real), y)]``; synthetic inputs carry no
        gradient (G and T in eval mode), so only ``head`` learns from this term."""
        with torch.no_grad():
            e_proto = self.synthetic(self.mu[y_cyc], z[0], y_cyc, rho)
            e_real = self.synthetic(real.detach(), z[1], y, rho)
        return 0.5 * (F.cross_entropy(head(e_proto), y_cyc) + F.cross_entropy(head(e_real), y))

    def generator_loss(
        self, head: nn.Module, z: torch.Tensor, y_cyc: torch.Tensor, real: torch.Tensor
    ) -> torch.Tensor:
        """``CE(h(G(z, y)), y) - lam_G Dist_G(G(z, y), ref)``; ``ref`` is the prototypes of
        the generated labels for L1/L2 and the real batch's embedding for the MMDs."""
        e = self.g(z, y_cyc)
        ref = self.mu[y_cyc] if self.cfg.dist_g in ("L1", "L2") else real.detach()
        dist = DISTANCE_FNS[self.cfg.dist_g](e, ref)
        return F.cross_entropy(head(e), y_cyc) - self.cfg.lam_g * dist

    def rtnet_loss(
        self,
        head: nn.Module,
        z: tuple[torch.Tensor, torch.Tensor],
        y_cyc: torch.Tensor,
        real: torch.Tensor,
        y: torch.Tensor,
    ) -> torch.Tensor:
        """Mean over the prototype and the real branch of
        ``-H(softmax(h(u))) + lam_RT Dist_RT(u, a)``, ``u = a + T(G(z, y), y)``."""
        dist = DISTANCE_FNS[self.cfg.dist_rt]
        total = torch.zeros((), device=real.device)
        for anchor, zz, labels in ((self.mu[y_cyc], z[0], y_cyc), (real.detach(), z[1], y)):
            with torch.no_grad():
                gen = self.g(zz, labels)
            u = anchor + self.t(gen, labels)
            total = total + (-entropy(head(u)) + self.cfg.lam_rt * dist(u, anchor))
        return 0.5 * total


def _sgd(module: nn.Module, lr: float, momentum: float) -> Optimizer:
    return optim.sgd(module.parameters(), lr=lr, momentum=momentum)


def _optim_state(prefix: str, opt: Optimizer) -> dict[str, torch.Tensor]:
    return {
        f"{prefix}/{idx}/{name}": t
        for idx, st in opt.state_dict()["state"].items()
        for name, t in st.items()
        if isinstance(t, torch.Tensor)
    }


def _load_optim_state(
    prefix: str, opt: Optimizer, saved: dict[str, torch.Tensor], device: torch.device
) -> None:
    sd = opt.state_dict()
    for key, tensor in saved.items():
        head, idx, name = key.split("/", 2)
        if head == prefix:
            sd["state"].setdefault(int(idx), {})[name] = tensor.to(device)
    opt.load_state_dict(sd)


@dataclass
class _RoundLog:
    syn: list[float] = field(default_factory=list)
    g: list[float] = field(default_factory=list)
    rt: list[float] = field(default_factory=list)


class FRAugRun(LocalRun[Client]):
    """A FRAug client's round (see the module docstring): the loop computes the embedding
    and the logits of each batch (``forward="features"``), the loss stage is step (a),
    the after-step steps (b) and (c)."""

    forward = "features"

    def __init__(self, client: Client, ins: TrainIns) -> None:
        self.fraug = fraug_config(client.cfg)
        super().__init__(client, ins)
        self.log = _RoundLog()
        self.step = 0  # local iterations done this round (the cyclic labels' offset)
        self.batch: tuple[torch.Tensor, torch.Tensor] | None = None  # (a) -> (b), (c)

    def train_config(self, train: TrainConfig) -> TrainConfig:
        """``local_iterations`` steps unless ``train.local_steps`` is set."""
        return local_train(train, self.fraug)

    # ---------------------------------------------------------------- setup
    def setup(self) -> None:
        """Generator from the server (or the seeded initial one), RTNet, prototypes and
        optimizer states from this client's state; this round's schedule and noise."""
        client, ins = self.client, self.ins
        self.model = _backbone(client.model)
        self.aug, self.opts = self._build()
        self.rho = float(ins.config.get(RHO_KEY, 1.0))
        self.lam = float(ins.config.get(LAMBDA_KEY, 0.5))
        self.noise = torch_generator(self.cfg.seed, "fraug.noise", ins.server_round, client.pid)
        t = self.train
        n_local = len(client.env.fed.client(client.pid).y)
        self.per_round = t.local_steps or t.local_epochs * math.ceil(n_local / t.batch_size)

    def _build(self) -> tuple[Augmenter, tuple[Optimizer, Optimizer]]:
        client = self.client
        device = client.env.device
        state = array_records(client.state)
        c, d = client.env.fed.data.num_classes, self.model.feature_dim
        g = make_generator(self.fraug, c, d, self.cfg.seed)
        payload = GeneratorPayload.from_extra(self.ins.extra)
        if payload is not None:
            g.load_state_dict(state_from_arrays(payload.arrays), strict=True)
        t = make_rtnet(self.fraug, c, d, self.cfg.seed, client.pid)
        if RTNET_KEY in state:
            t.load_state_dict(state_from_arrays(state[RTNET_KEY]), strict=True)
        if PROTOTYPES_KEY in state:
            mu = state_from_arrays(state[PROTOTYPES_KEY])["mu"].clone()
        else:
            mu = torch.zeros(c, d)
        g.to(device)
        t.to(device)
        opt_g = _sgd(g, self.fraug.lr_g, self.fraug.momentum_g)
        opt_t = _sgd(t, self.fraug.lr_rt, self.fraug.momentum_rt)
        if FRAUG_OPTIM_KEY in state:
            saved = state_from_arrays(state[FRAUG_OPTIM_KEY])
            _load_optim_state("g", opt_g, saved, device)
            _load_optim_state("rt", opt_t, saved, device)
        return Augmenter(self.fraug, g, t, mu.to(device), c), (opt_g, opt_t)

    def _z(self, rows: int) -> torch.Tensor:
        noise = sample_noise(self.fraug.noise, rows, self.aug.g.latent_dim, self.noise)
        return noise.to(self.client.env.device)

    def _labels(self, rows: int) -> torch.Tensor:
        n = (self.ins.server_round - 1) * self.per_round + self.step
        return cyclic_labels(n, rows, self.aug.num_classes, self.client.env.device)

    # ---------------------------------------------------------------- training
    def loss(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, out: BatchOut
    ) -> torch.Tensor:
        """Step (a): ``(1 - lam) CE(h(g(x)), y) + lam syn``, after the prototypes' EMA on
        this batch's embedding (official code order).

        Computed as ``CE + lam (syn - CE)``, ``CE`` being the loop's term (with
        ``train.label_smoothing``) and the subtracted one plain: the floating-point
        operations of fedsim's recorded FRAug runs, which a regrouped ``(1 - lam) CE``
        would round differently."""
        assert out.features is not None and out.logits is not None and out.ce is not None
        aug = self.aug
        self.batch = (x, y)
        aug.mu = update_prototypes(aug.mu, out.features, y, self.fraug.ema)
        if self.lam == 0.0:
            return out.ce
        aug.g.eval()
        aug.t.eval()
        b = len(y)
        head = self.model.head
        syn = aug.classifier_loss(
            head, out.features, y, (self._z(b), self._z(b)), self._labels(b), self.rho
        )
        self.log.syn.append(float(syn.detach()))
        return out.ce + self.lam * (syn - F.cross_entropy(out.logits, y))

    def after_step(self, model: nn.Module) -> None:
        """Steps (b) and (c) on the batch of step (a), the model in eval mode."""
        assert self.batch is not None
        aug, (opt_g, opt_t), head = self.aug, self.opts, self.model.head
        x, y = self.batch
        b = len(y)
        model.eval()
        with torch.no_grad():
            real = self.model.features(x)
        y_cyc = self._labels(b)
        # (b) generator step
        aug.g.train()
        opt_g.zero_grad(set_to_none=True)
        loss_g = aug.generator_loss(head, self._z(b), y_cyc, real)
        loss_g.backward()
        opt_g.step()
        # (c) RTNet step
        aug.g.eval()
        aug.t.train()
        opt_t.zero_grad(set_to_none=True)
        loss_rt = aug.rtnet_loss(head, (self._z(b), self._z(b)), y_cyc, real, y)
        loss_rt.backward()
        opt_t.step()
        model.zero_grad(set_to_none=True)  # the head's gradients from (b), (c) are not used
        model.train()
        self.log.g.append(float(loss_g.detach()))
        self.log.rt.append(float(loss_rt.detach()))
        self.step += 1

    # ---------------------------------------------------------------- finish
    def finish(self, stats: TrainStats) -> LocalResult:
        """Keep the RTNet, the prototypes and both optimizer states; send the generator."""
        aug, state = self.aug, self.client.state
        state[RTNET_KEY] = arrays_from_state(aug.t.state_dict())
        state[PROTOTYPES_KEY] = arrays_from_state({"mu": aug.mu})
        state[FRAUG_OPTIM_KEY] = arrays_from_state(
            {**_optim_state("g", self.opts[0]), **_optim_state("rt", self.opts[1])}
        )
        metrics = {}
        for name, vals in (("syn", self.log.syn), ("g", self.log.g), ("rt", self.log.rt)):
            if vals:
                metrics[f"fraug_loss_{name}"] = sum(vals) / len(vals)
        records = GeneratorPayload(arrays_from_state(aug.g.state_dict())).to_extra()
        return LocalResult(records, metrics)


def _backbone(model: nn.Module) -> Backbone:
    assert isinstance(model, Backbone)
    return model


class FRAugClient(Client):
    """FedAvg client plus FRAug's representation augmentation (see module docstring)."""

    Run = FRAugRun

    @staticmethod
    def local_keys(model: nn.Module, cfg: RunConfig) -> set[str]:
        """BN running statistics, or every BN tensor (:func:`protocols.fraug.local_keys`)."""
        return fraug_local_keys(model, fraug_config(cfg))


__all__ = ["Augmenter", "FRAugClient", "FRAugRun", "Generator", "RTNet"]
