"""Variational-inequality problems for MASHA (Beznosikov et al., NeurIPS 2022, arXiv 2110.03313).

A problem gives every client ``m`` an operator ``F_m`` on a flat vector ``z`` (for a
min-max game ``z = (x, y)`` and ``F_m = (grad_x f_m, -grad_y f_m)``), the proximal step
(projection) of the constraint set, how ``z`` splits into named arrays for the wire, and
the metrics the server logs.  Two problems:

* :class:`BilinearProblem` — the distributed bilinear saddle point of the spec (section 7):
  ``f_m(x, y) = x^T A_m y + a_m^T x + b_m^T y + (lam/2)||x||^2 - (lam/2)||y||^2``; strongly
  monotone with ``mu = lam``; its solution is computed in closed form for the metric
  ``masha/rel_dist = ||z - z*||^2 / ||z^0 - z*||^2``.  Its operators are exact (no finite
  sum), so the "same mini-batch at both points" rule is trivially met.
* :class:`AdversarialProblem` — adversarial training of a vision backbone as a min-max
  game: the weights ``theta`` minimise and one input perturbation ``delta`` shared by
  all clients maximises the cross-entropy of ``model(x + delta)``; the projection onto
  the L-infinity ball ``||delta||_inf <= epsilon`` is the prox of the VI.  Stochastic
  operators use one mini-batch drawn per call for both points.  This is fedsim's small-scale
  substitute for the paper's transformer experiment, not that experiment.

Everything is generated from the run's seed, so the server and every client process
build identical problems without exchanging them.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fedsim.config import ProblemConfig
from fedsim.seeding import derive_rng

DELTA_KEY = "adv.delta"  # the maximising player's array in AdversarialProblem


class Layout:
    """How a flat vector splits into named arrays (and back), in a fixed order."""

    def __init__(self, shapes: Mapping[str, tuple[int, ...]]) -> None:
        self.shapes: OrderedDict[str, tuple[int, ...]] = OrderedDict(
            (k, tuple(v)) for k, v in shapes.items()
        )
        self.sizes = [math.prod(s) for s in self.shapes.values()]
        self.dim = int(sum(self.sizes))

    def split(self, z: np.ndarray, dtype: type = np.float32) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        start = 0
        for (name, shape), size in zip(self.shapes.items(), self.sizes, strict=True):
            out[name] = z[start : start + size].reshape(shape).astype(dtype)
            start += size
        return out

    def join(self, arrays: Mapping[str, np.ndarray]) -> np.ndarray:
        return np.concatenate(
            [np.asarray(arrays[k], dtype=np.float64).reshape(-1) for k in self.shapes]
        )

    def like(self) -> dict[str, np.ndarray]:
        """Zero float32 arrays of the layout (the decode template of a channel)."""
        return {k: np.zeros(s, dtype=np.float32) for k, s in self.shapes.items()}


# --------------------------------------------------------------------------- bilinear


@dataclass(frozen=True)
class BilinearProblem:
    """The distributed bilinear saddle point (spec section 7), ``z = (x, y)``."""

    A: np.ndarray  # (M, d, d)
    a: np.ndarray  # (M, d)
    b: np.ndarray  # (M, d)
    lam: float

    @property
    def num_clients(self) -> int:
        return int(self.A.shape[0])

    @property
    def d(self) -> int:
        return int(self.A.shape[1])

    @property
    def layout(self) -> Layout:
        return Layout({"z": (2 * self.d,)})

    def z0(self) -> np.ndarray:
        return np.zeros(2 * self.d)

    def operator(self, m: int, z: np.ndarray) -> np.ndarray:
        """``F_m(z) = (A_m y + a_m + lam x, -A_m^T x - b_m + lam y)``."""
        x, y = z[: self.d], z[self.d :]
        A = self.A[m]
        return np.concatenate(
            [A @ y + self.a[m] + self.lam * x, -A.T @ x - self.b[m] + self.lam * y]
        )

    def full_operator(self, z: np.ndarray) -> np.ndarray:
        """``F(z) = (1/M) sum_m F_m(z)``."""
        return np.mean([self.operator(m, z) for m in range(self.num_clients)], axis=0)

    def jacobian(self, m: int | None = None) -> np.ndarray:
        """``[[lam I, A], [-A^T, lam I]]`` of client ``m`` (or of the average)."""
        A = self.A.mean(axis=0) if m is None else self.A[m]
        eye = self.lam * np.eye(self.d)
        return np.block([[eye, A], [-A.T, eye]])

    def solution(self) -> np.ndarray:
        """``z*`` with ``F(z*) = 0``: solve ``J z* = [-abar; bbar]``."""
        rhs = np.concatenate([-self.a.mean(axis=0), self.b.mean(axis=0)])
        return np.linalg.solve(self.jacobian(), rhs)

    def lipschitz(self) -> tuple[float, np.ndarray]:
        """``L`` of ``F`` and ``L_m`` of each ``F_m``: spectral norms of the Jacobians,
        ``||J||^2 = lam^2 + ||A||^2`` since ``J^T J = diag(lam^2 I + A A^T, lam^2 I + A^T A)``."""

        def norm(A: np.ndarray) -> float:
            return float(np.sqrt(self.lam**2 + np.linalg.norm(A, 2) ** 2))

        L = norm(self.A.mean(axis=0))
        Lm = np.array([norm(self.A[m]) for m in range(self.num_clients)])
        return L, Lm

    def prox(self, z: np.ndarray) -> np.ndarray:
        return z  # unconstrained, g = 0


def make_bilinear(cfg: ProblemConfig, num_clients: int, seed: int) -> BilinearProblem:
    """``A_m = alpha (A_0 + s E_m)``, ``a_m, b_m ~ N(0, noise^2 I)``.

    ``E_m`` and ``A_0`` have i.i.d. ``N(0, 1)`` entries; ``s = cfg.similarity``.  With
    ``s = inf`` (the default) ``A_m = alpha E_m``: independent matrices, the spec's default
    instance (section 7; ``alpha = scale`` reproduces it draw for draw).  ``s = 0`` gives
    identical ``A_m`` (only ``a_m, b_m`` differ), so ``rho = mean L_m^2 / L^2 = 1``; large
    ``s`` makes the devices' operators differ, ``rho -> M`` as ``s -> inf`` (issue 16's
    similarity knob, not from the paper).  ``alpha = scale`` unless ``cfg.condition > 1``:
    then ``alpha`` is set so that ``L / mu = condition`` exactly (``L^2 = lam^2 +
    ||Abar||_2^2``, ``mu = lam``).
    """
    rng = derive_rng(seed, "problem/bilinear")
    d = cfg.dim
    E = rng.normal(0.0, 1.0, size=(num_clients, d, d))
    a = rng.normal(0.0, cfg.noise, size=(num_clients, d))
    b = rng.normal(0.0, cfg.noise, size=(num_clients, d))
    s = float(cfg.similarity)
    if math.isinf(s):
        A = E
    else:  # A_0 from its own stream, so a and b do not depend on s
        A0 = derive_rng(seed, "problem/bilinear/common").normal(0.0, 1.0, size=(d, d))
        A = A0[None, :, :] + s * E
    if cfg.condition > 1:
        lam = float(cfg.lam)
        alpha = lam * math.sqrt(cfg.condition**2 - 1.0) / float(np.linalg.norm(A.mean(0), 2))
    else:
        alpha = float(cfg.scale)
    return BilinearProblem(alpha * A, a, b, float(cfg.lam))


def similarity_stats(problem: BilinearProblem) -> dict[str, float]:
    """``L``, ``mu``, mean and max ``L_m`` and ``rho = mean_m L_m^2 / L^2`` of a problem
    (the quantities of the MASHA1 rate, ``protocols.masha_math.predicted_up_ratio``)."""
    L, Lm = problem.lipschitz()
    return {
        "L": L,
        "mu": problem.lam,
        "L_m_mean": float(np.mean(Lm)),
        "L_m_max": float(np.max(Lm)),
        "rho": float(np.mean(Lm**2) / L**2),
    }


def relative_distance(z: np.ndarray, z0: np.ndarray, z_star: np.ndarray) -> float:
    """``||z - z*||^2 / ||z^0 - z*||^2``."""
    return float(np.sum((z - z_star) ** 2) / np.sum((z0 - z_star) ** 2))


# --------------------------------------------------------------------------- adversarial


class AdversarialProblem:
    """Min over the weights, max over a shared input perturbation in an L-inf ball.

    ``z = (theta, delta)``; ``F_m(z) = (grad_theta L_m, -grad_delta L_m)`` with ``L_m`` the
    mean cross-entropy of ``model(x + delta)`` on client ``m``'s samples (or a mini-batch).
    The model runs in eval mode (BatchNorm uses its initial running statistics), so the
    operator is a function of ``z`` and the batch only.
    """

    def __init__(self, model: nn.Module, input_shape: tuple[int, ...], epsilon: float) -> None:
        self.model = model.eval()
        self.params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        shapes: dict[str, tuple[int, ...]] = {n: tuple(p.shape) for n, p in self.params}
        shapes[DELTA_KEY] = tuple(input_shape)
        self.layout = Layout(shapes)
        self.n_theta = self.layout.dim - math.prod(input_shape)
        self.input_shape = tuple(input_shape)
        self.epsilon = float(epsilon)

    def z_from_model(self) -> np.ndarray:
        theta = torch.cat([p.detach().reshape(-1).cpu() for _, p in self.params]).double()
        return np.concatenate([theta.numpy(), np.zeros(math.prod(self.input_shape))])

    def _load(self, z: np.ndarray) -> torch.Tensor:
        device = self.params[0][1].device
        theta = torch.from_numpy(np.ascontiguousarray(z[: self.n_theta])).float().to(device)
        with torch.no_grad():
            torch.nn.utils.vector_to_parameters(theta, [p for _, p in self.params])
        delta = torch.from_numpy(np.ascontiguousarray(z[self.n_theta :])).float().to(device)
        return delta.reshape(self.input_shape)

    def operator(self, z: np.ndarray, x: torch.Tensor, y: torch.Tensor) -> np.ndarray:
        """``(grad_theta, -grad_delta)`` of the mean cross-entropy on ``(x, y)``."""
        delta = self._load(z).requires_grad_(True)
        device = delta.device
        loss = F.cross_entropy(self.model(x.to(device) + delta), y.to(device))
        grads = torch.autograd.grad(loss, [p for _, p in self.params] + [delta])
        flat = [g.reshape(-1) for g in grads[:-1]] + [-grads[-1].reshape(-1)]
        return torch.cat(flat).double().cpu().numpy()

    def prox(self, z: np.ndarray) -> np.ndarray:
        """Projection of ``delta`` onto ``||delta||_inf <= epsilon``; ``theta`` is free."""
        out = z.copy()
        out[self.n_theta :] = np.clip(out[self.n_theta :], -self.epsilon, self.epsilon)
        return out

    @torch.no_grad()
    def accuracy(self, z: np.ndarray, x: torch.Tensor, y: torch.Tensor, adv: bool) -> float:
        delta = self._load(z)
        device = delta.device
        xb = x.to(device) + (delta if adv else 0.0)
        pred = self.model(xb).argmax(dim=1).cpu()
        return float((pred == y).float().mean())

    def fresh_attack(
        self, z: np.ndarray, x: torch.Tensor, y: torch.Tensor, steps: int = 10
    ) -> float:
        """Accuracy under a universal perturbation re-fitted to the current weights
        (``steps`` of projected sign-gradient ascent on ``(x, y)``, step ``epsilon / 4``)."""
        delta = torch.zeros(self.input_shape)
        zz = z.copy()
        for _ in range(steps):
            zz[self.n_theta :] = delta.reshape(-1).double().numpy()
            g = -self.operator(zz, x, y)[self.n_theta :]  # grad_delta of the loss
            delta = (
                delta
                + (self.epsilon / 4)
                * torch.from_numpy(np.sign(g)).float().reshape(self.input_shape)
            ).clamp(-self.epsilon, self.epsilon)
        zz[self.n_theta :] = delta.reshape(-1).double().numpy()
        return self.accuracy(zz, x, y, adv=True)


# --------------------------------------------------------------------------- VI seam


class BilinearVI:
    """The bilinear problem as seen by a VI strategy and its devices."""

    def __init__(self, problem: BilinearProblem) -> None:
        self.problem = problem
        self.layout = problem.layout
        self.z_star = problem.solution()

    def z0(self) -> np.ndarray:
        return self.problem.z0()

    def prox(self, z: np.ndarray) -> np.ndarray:
        return z

    def lipschitz(self) -> tuple[float, np.ndarray] | None:
        return self.problem.lipschitz()

    def metrics(self, z: np.ndarray, z0: np.ndarray) -> dict[str, float]:
        return {"masha/rel_dist": relative_distance(z, z0, self.z_star)}

    def full(self, pid: int, z: np.ndarray) -> np.ndarray:
        return self.problem.operator(pid, z)

    def pair(
        self, pid: int, z1: np.ndarray, z2: np.ndarray, gen: torch.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        return self.problem.operator(pid, z1), self.problem.operator(pid, z2)


class AdversarialVI:
    """:class:`AdversarialProblem` on a federation's data (clients) or test set (server)."""

    CHUNK = 512

    def __init__(
        self,
        model: nn.Module,
        init_state: Mapping[str, torch.Tensor],
        input_shape: tuple[int, ...],
        epsilon: float,
        batch_size: int,
        data: object = None,
    ) -> None:
        self.adv = AdversarialProblem(model, input_shape, epsilon)
        self.layout = self.adv.layout
        self.init_state = init_state
        self.batch_size = batch_size
        self.data = data  # fedsim.data.federation.Federation (typed loosely: no import cycle)

    def z0(self) -> np.ndarray:
        theta = [self.init_state[n].reshape(-1).double() for n, _ in self.adv.params]
        delta = np.zeros(self.layout.dim - self.adv.n_theta)
        return np.concatenate([torch.cat(theta).numpy(), delta])

    def prox(self, z: np.ndarray) -> np.ndarray:
        return self.adv.prox(z)

    def lipschitz(self) -> tuple[float, np.ndarray] | None:
        return None

    def _client(self, pid: int) -> tuple[torch.Tensor, torch.Tensor]:
        cd = self.data.client(pid)  # type: ignore[attr-defined]  # a Federation
        return cd.x, cd.y

    def full(self, pid: int, z: np.ndarray) -> np.ndarray:
        """The full local operator: sample-weighted mean over chunks of the client's data."""
        x, y = self._client(pid)
        total = np.zeros(self.layout.dim)
        for start in range(0, len(y), self.CHUNK):
            xb, yb = x[start : start + self.CHUNK], y[start : start + self.CHUNK]
            total += self.adv.operator(z, xb, yb) * len(yb)
        return total / max(1, len(y))

    def pair(
        self, pid: int, z1: np.ndarray, z2: np.ndarray, gen: torch.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        """Stochastic operators at two points on the SAME mini-batch (spec section 5)."""
        x, y = self._client(pid)
        if self.batch_size <= 0 or self.batch_size >= len(y):
            return self.full(pid, z1), self.full(pid, z2)
        idx = torch.randperm(len(y), generator=gen)[: self.batch_size]
        return self.adv.operator(z1, x[idx], y[idx]), self.adv.operator(z2, x[idx], y[idx])

    def metrics(self, z: np.ndarray, z0: np.ndarray) -> dict[str, float]:
        fed = self.data
        x, y = fed.data.test_x, fed.data.test_y  # type: ignore[attr-defined]
        return {
            "eval/clean_acc": self.adv.accuracy(z, x, y, adv=False),
            "eval/adv_acc": self.adv.accuracy(z, x, y, adv=True),
            "eval/adv_acc_refit": self.adv.fresh_attack(z, x, y),
        }
