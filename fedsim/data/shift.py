"""Per-client synthetic feature shift: the same labels, differently looking images per client.

Feature-shift non-IID data (FedBN, arXiv:2102.07623, and the rotated/permuted benchmarks
before it) gives clients different input distributions.  This module makes such shifts
from any image dataset, once, when client data is built; nothing here runs at training time.

:func:`apply_shift` works on images in **pixel space**, ``float`` ``N×C×H×W`` with values in
``[0, 1]``, because inversion, zero fill and clamping only make sense there.  A caller whose
data is already standardised uses :func:`apply_shift_normalized` (or converts with
:meth:`fedsim.data.datasets.FederatedDataset.denormalize` / ``normalize`` around
:func:`apply_shift`).

Kinds (``shift.kind``):

``none``
    No change.
``rotation``
    Every shifted client rotated by ``angle`` degrees.
``rotated_family``
    Client ``i`` rotated by ``i * delta`` degrees.
``invert``
    Colour inversion ``1 - x``.
``permute_channels``
    A client-specific channel permutation (identity for grey images; it may also be the
    identity by chance, with probability ``1 / C!``).
``noise``
    Additive Gaussian noise of std ``noise_std``, clamped to ``[0, 1]``.
``blur``
    Gaussian blur with ``blur_sigma`` pixels (separable depthwise convolution, edge pixels
    replicated so a constant image stays constant).
``contrast``
    Per client a contrast factor ``a`` from the ``contrast`` range and a brightness offset
    ``b`` from the ``brightness`` range: ``clamp((x - m) * a + m + b, 0, 1)`` with ``m`` the
    mean of each image.

Rotations are counter-clockwise for positive angles (as PIL and ``torch.rot90`` with
``dims=(2, 3)``), bilinear, with zero (black) fill outside the source image.  Only the
clients listed in ``shift.clients`` are shifted (``[]`` = all).

Randomness: the stochastic kinds (``permute_channels``, ``noise``, ``contrast``) draw one seed
from the ``rng`` they are given and mix it with ``client_id``, so two clients differ even if a
caller hands both an identically seeded generator.  Use :func:`shift_rng` to derive the
generator from ``(seed, client_id)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from fedsim.config import ShiftConfig
from fedsim.errors import ConfigError

__all__ = [
    "SHIFT_KINDS",
    "apply_shift",
    "apply_shift_normalized",
    "gaussian_blur",
    "is_shifted",
    "rotate",
    "shift_angle",
    "shift_rng",
    "validate_shift",
]

SHIFT_KINDS = (
    "none",
    "rotation",
    "rotated_family",
    "invert",
    "permute_channels",
    "noise",
    "blur",
    "contrast",
)
"""Allowed values of ``ShiftConfig.kind``."""

_STREAM_SHIFT = 0x5EED5  # purpose id of the shift stream in :func:`shift_rng`


# --------------------------------------------------------------------------- validation


def _finite(value: float) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def _check_range(values: Sequence[float], key: str, low_bound: float | None) -> None:
    try:
        low, high = (float(v) for v in values)
    except (TypeError, ValueError):
        raise ConfigError(f"{key}: must be [low, high], got {values}") from None
    if not (math.isfinite(low) and math.isfinite(high) and low <= high):
        raise ConfigError(f"{key}: must be [low, high] with low <= high, got [{low}, {high}]")
    if low_bound is not None and low < low_bound:
        raise ConfigError(f"{key}: low must be >= {low_bound}, got [{low}, {high}]")


def validate_shift(cfg: ShiftConfig, num_clients: int | None = None) -> None:
    """Check a shift config; every message starts with the key path.

    Parameters
    ----------
    cfg
        The shift section of a scenario.
    num_clients
        If given, ``shift.clients`` must name clients ``0 .. num_clients - 1``.

    Raises
    ------
    ConfigError
        For example ``shift.kind: unknown 'foo' (allowed: none, rotation, ...)`` or
        ``shift.noise_std: must be >= 0, got -1.0``.
    """
    if cfg.kind not in SHIFT_KINDS:
        raise ConfigError(f"shift.kind: unknown {cfg.kind!r} (allowed: {', '.join(SHIFT_KINDS)})")
    for key in ("angle", "delta"):
        if not _finite(getattr(cfg, key)):
            raise ConfigError(f"shift.{key}: must be a finite number, got {getattr(cfg, key)}")
    for key in ("noise_std", "blur_sigma"):
        value = getattr(cfg, key)
        if not _finite(value) or value < 0:
            raise ConfigError(f"shift.{key}: must be >= 0, got {value}")
    _check_range(cfg.contrast, "shift.contrast", low_bound=0.0)
    _check_range(cfg.brightness, "shift.brightness", low_bound=None)
    for client in cfg.clients:
        if not isinstance(client, int) or client < 0:
            raise ConfigError(f"shift.clients: client ids must be integers >= 0, got {client}")
        if num_clients is not None and client >= num_clients:
            raise ConfigError(
                f"shift.clients: client {client} does not exist "
                f"(ids are 0..{num_clients - 1} for num_clients={num_clients})"
            )


# --------------------------------------------------------------------------- primitives


def rotate(x: torch.Tensor, degrees: float) -> torch.Tensor:
    """Rotate images ``N×C×H×W`` counter-clockwise about their centre, zero fill.

    The rotation is done in pixel units, so non-square images are not sheared; multiples of
    90° on square images reproduce ``torch.rot90(x, k, dims=(2, 3))`` up to float rounding.
    """
    if degrees % 360 == 0:
        return x.clone()
    height, width = x.shape[-2:]
    rad = math.radians(degrees)
    cos, sin = math.cos(rad), math.sin(rad)
    # affine_grid maps output to input coordinates, normalised to [-1, 1] per axis.  In pixel
    # units (y down) the input point of an output point is [[cos, -sin], [sin, cos]] @ out.
    theta = torch.tensor(
        [[cos, -sin * height / width, 0.0], [sin * width / height, cos, 0.0]],
        dtype=x.dtype,
        device=x.device,
    )
    grid = F.affine_grid(theta.unsqueeze(0), [1, *x.shape[1:]], align_corners=False)
    grid = grid.expand(x.shape[0], -1, -1, -1)  # one grid for the whole batch, no copies
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of ``N×C×H×W`` (depthwise ``conv2d``, edges replicated).

    The kernel has radius ``ceil(3 * sigma)`` and sums to one, so a constant image keeps its
    value.  ``sigma == 0`` returns a copy.
    """
    if sigma <= 0:
        return x.clone()
    radius = max(1, math.ceil(3.0 * sigma))
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = (kernel / kernel.sum()).to(dtype=x.dtype, device=x.device)
    channels = x.shape[1]
    horizontal = kernel.view(1, 1, 1, -1).repeat(channels, 1, 1, 1)
    vertical = kernel.view(1, 1, -1, 1).repeat(channels, 1, 1, 1)
    out = F.pad(x, (radius, radius, 0, 0), mode="replicate")
    out = F.conv2d(out, horizontal, groups=channels)
    out = F.pad(out, (0, 0, radius, radius), mode="replicate")
    return F.conv2d(out, vertical, groups=channels)


# --------------------------------------------------------------------------- per client


def shift_rng(seed: int, client_id: int) -> np.random.Generator:
    """The generator a caller should pass to :func:`apply_shift` for ``client_id``."""
    return np.random.default_rng([_STREAM_SHIFT, client_id, seed % (1 << 64)])


def is_shifted(client_id: int, cfg: ShiftConfig) -> bool:
    """Whether ``client_id`` gets a shift (``kind != "none"`` and listed, or list empty)."""
    return cfg.kind != "none" and (not cfg.clients or client_id in cfg.clients)


def shift_angle(client_id: int, cfg: ShiftConfig) -> float:
    """Rotation in degrees of ``client_id`` (0 for non-rotating kinds and unshifted clients)."""
    if not is_shifted(client_id, cfg):
        return 0.0
    if cfg.kind == "rotation":
        return float(cfg.angle)
    if cfg.kind == "rotated_family":
        return float(client_id * cfg.delta)
    return 0.0


def _client_generator(client_id: int, rng: np.random.Generator) -> np.random.Generator:
    return np.random.default_rng([client_id, int(rng.integers(0, 1 << 63))])


def apply_shift(
    x: torch.Tensor, client_id: int, cfg: ShiftConfig, rng: np.random.Generator
) -> torch.Tensor:
    """Shift the images of one client; pixel space in, pixel space out.

    Parameters
    ----------
    x
        ``float`` ``N×C×H×W`` images with values in ``[0, 1]`` (not standardised).
    client_id
        The client the images belong to (``>= 0``).
    cfg
        The shift config (see the module docstring for the kinds).
    rng
        Source of randomness for stochastic kinds; same ``(client_id, rng state)`` gives the
        same result.  See :func:`shift_rng`.

    Returns
    -------
    torch.Tensor
        A new tensor of the same shape and dtype, or ``x`` itself if the client is not shifted.
    """
    if client_id < 0:
        raise ValueError(f"client_id must be >= 0, got {client_id}")
    if x.ndim != 4:
        raise ValueError(f"expected images N×C×H×W, got shape {tuple(x.shape)}")
    if not is_shifted(client_id, cfg):
        return x
    kind = cfg.kind
    if kind in ("rotation", "rotated_family"):
        return rotate(x, shift_angle(client_id, cfg))
    if kind == "invert":
        return 1.0 - x
    if kind == "blur":
        return gaussian_blur(x, float(cfg.blur_sigma))
    gen = _client_generator(client_id, rng)
    if kind == "permute_channels":
        if x.shape[1] == 1:
            return x.clone()
        order = torch.from_numpy(gen.permutation(x.shape[1])).to(x.device)
        return x.index_select(1, order)
    if kind == "noise":
        noise = torch.from_numpy(gen.standard_normal(tuple(x.shape), dtype=np.float32))
        return (x + float(cfg.noise_std) * noise.to(dtype=x.dtype, device=x.device)).clamp(0, 1)
    if kind == "contrast":
        factor = float(gen.uniform(float(cfg.contrast[0]), float(cfg.contrast[1])))
        offset = float(gen.uniform(float(cfg.brightness[0]), float(cfg.brightness[1])))
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        return ((x - mean) * factor + mean + offset).clamp(0, 1)
    raise ValueError(f"unknown shift kind {kind!r}; call validate_shift first")


def apply_shift_normalized(
    x: torch.Tensor,
    client_id: int,
    cfg: ShiftConfig,
    rng: np.random.Generator,
    mean: torch.Tensor,
    std: torch.Tensor,
) -> torch.Tensor:
    """:func:`apply_shift` for standardised images ``(x01 - mean) / std``.

    ``mean``/``std`` are the per-channel statistics of shape ``(C,)`` used to standardise
    (``FederatedDataset.mean``/``std``); the result is standardised the same way.
    """
    if not is_shifted(client_id, cfg):
        return x
    m = mean.to(dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    s = std.to(dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return (apply_shift(x * s + m, client_id, cfg, rng) - m) / s
