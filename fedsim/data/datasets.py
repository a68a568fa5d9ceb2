"""Image datasets: one in-memory federated dataset built from the sources of a config.

:func:`build_dataset` turns the sources of a :class:`~fedsim.config.DatasetConfig` into a
:class:`FederatedDataset`: sub-sampled, split into train/test, converted to ``float32``
``N×C×H×W`` tensors with a common size and channel count, optionally standardised, and
tagged with the index of the source (domain) each sample came from.  Partitioning over
clients happens elsewhere; nothing here knows about clients.

The sources are read by :func:`fedsim.data.sources.load_source` (the file formats are in
:mod:`fedsim.data.loaders`, :mod:`fedsim.data.cifar_batches`, :mod:`fedsim.data.image_folder`
and :mod:`fedsim.data.hf_source`) and the config's values checked by
:func:`fedsim.data.dataset_checks.validate_dataset`.

Every problem a user can fix (a missing or corrupt file, inconsistent arrays, a bad value)
is raised as a one-line :class:`~fedsim.errors.DataError` or
:class:`~fedsim.errors.ConfigError` that names the key or the file.  Randomness comes from
``np.random.default_rng`` streams derived from ``(seed, source index, purpose)``; nothing is
seeded globally.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from fedsim.config import DatasetConfig
from fedsim.data.dataset_checks import validate_dataset
from fedsim.data.loaders import default_data_root
from fedsim.data.sources import load_source
from fedsim.errors import DataError

__all__ = ["FederatedDataset", "build_dataset"]

_LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601, the weights PIL uses for RGB -> "L"
_CHUNK_FLOATS = 1 << 23  # ~32 MiB of float32 per conversion chunk
_STREAM_CARVE = 1  # rng purpose ids, so each purpose gets its own stream
_STREAM_SUBSAMPLE = 2


# --------------------------------------------------------------------------- results


@dataclass(eq=False)
class FederatedDataset:
    """All samples of all sources, in memory, ready for partitioning over clients.

    Attributes
    ----------
    train_x, test_x
        ``float32`` tensors ``N×C×H×W``; pixel values in ``[0, 1]``, standardised per
        channel with ``mean``/``std`` when ``normalized`` is true.
    train_y, test_y
        ``int64`` class indices.
    train_domain, test_domain
        ``int64`` index into ``domains`` of the source each sample came from.
    domains
        Source names, in the order of ``dataset.sources``.
    num_classes
        Largest label over every source and split, plus one.
    input_shape
        ``(C, H, W)`` of one sample.
    mean, std
        ``float32`` tensors of shape ``(C,)``: the standardisation that was applied, so that
        ``x * std + mean`` is always the ``[0, 1]`` pixel image.  With ``dataset.normalize``
        these are the per-channel statistics of the training images; without, they are
        ``0`` and ``1``.
    normalized
        Whether ``train_x``/``test_x`` were standardised (``dataset.normalize``).
    """

    train_x: torch.Tensor
    train_y: torch.Tensor
    train_domain: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    test_domain: torch.Tensor
    domains: list[str]
    num_classes: int
    input_shape: tuple[int, int, int]
    mean: torch.Tensor
    std: torch.Tensor
    normalized: bool = True

    def normalize(self, x01: torch.Tensor) -> torch.Tensor:
        """Map ``[0, 1]`` images ``N×C×H×W`` to the space of ``train_x`` (no-op if unnormalised)."""
        return (x01 - self.mean.view(1, -1, 1, 1)) / self.std.view(1, -1, 1, 1)

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`normalize`: back to pixel values on the ``[0, 1]`` scale."""
        return x * self.std.view(1, -1, 1, 1) + self.mean.view(1, -1, 1, 1)


# --------------------------------------------------------------------------- building


def _rng(seed: int, source: int, purpose: int) -> np.random.Generator:
    """Independent stream for one (seed, source, purpose); negative seeds are folded."""
    return np.random.default_rng([purpose, source, seed % (1 << 64)])


def _stratified_holdout(
    y: np.ndarray, fraction: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Split indices into (kept, held out) with ``round(fraction * n_c)`` held out per class."""
    held: list[np.ndarray] = []
    for c in np.unique(y):
        members = np.flatnonzero(y == c)
        n_held = round(fraction * len(members))
        held.append(rng.permutation(members)[:n_held])
    mask = np.zeros(len(y), dtype=bool)
    if held:
        mask[np.concatenate(held)] = True
    return np.flatnonzero(~mask), np.flatnonzero(mask)


def _subsample(n: int, fraction: float, max_samples: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted positions of ``max(1, round(fraction * n))`` samples, capped at ``max_samples``."""
    keep = max(1, round(fraction * n)) if n else 0
    if max_samples > 0:
        keep = min(keep, max_samples)
    if keep >= n:
        return np.arange(n)
    return np.sort(rng.choice(n, size=keep, replace=False))


@dataclass(eq=False)
class _Part:
    """Selected samples of one split of one source, still raw."""

    domain: int
    x: np.ndarray
    y: np.ndarray
    index: np.ndarray  # positions into x/y that are used


def _native_channels(x: np.ndarray) -> int:
    return 1 if x.ndim == 3 else 3


def _convert_into(
    out: torch.Tensor, x: np.ndarray, index: np.ndarray, size: tuple[int, int]
) -> None:
    """Write ``x[index]`` as float ``[0, 1]`` ``N×C×H×W`` into ``out``, chunk by chunk.

    Handles channels (RGB -> luminance, grey -> replicated) and bilinear antialiased
    resizing, so no full-size intermediate copies are made.
    """
    channels = out.shape[1]
    per_image = max(1, x.shape[1] * x.shape[2] * 3, size[0] * size[1] * channels)
    step = max(1, _CHUNK_FLOATS // per_image)
    luma = torch.tensor(_LUMA, dtype=torch.float32).view(1, 3, 1, 1)
    for start in range(0, len(index), step):
        rows = index[start : start + step]
        chunk = torch.from_numpy(x[rows]).to(torch.float32).div_(255.0)
        chunk = chunk.unsqueeze(1) if chunk.ndim == 3 else chunk.permute(0, 3, 1, 2)
        if channels == 1 and chunk.shape[1] == 3:
            chunk = (chunk * luma).sum(dim=1, keepdim=True)
        if tuple(chunk.shape[-2:]) != size:
            chunk = F.interpolate(
                chunk, size=size, mode="bilinear", antialias=True, align_corners=False
            ).clamp_(0.0, 1.0)
        out[start : start + len(rows)].copy_(chunk)  # broadcasts 1 -> 3 channels


def _stack(parts: Sequence[_Part], shape: tuple[int, int, int]) -> tuple[torch.Tensor, ...]:
    total = sum(len(p.index) for p in parts)
    xs = torch.empty((total, *shape), dtype=torch.float32)
    ys = torch.empty(total, dtype=torch.int64)
    domains = torch.empty(total, dtype=torch.int64)
    offset = 0
    for part in parts:
        n = len(part.index)
        _convert_into(xs[offset : offset + n], part.x, part.index, (shape[1], shape[2]))
        ys[offset : offset + n] = torch.from_numpy(part.y[part.index])
        domains[offset : offset + n] = part.domain
        offset += n
    return xs, ys, domains


def _channel_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and (population) std of ``N×C×H×W``, accumulated in float64."""
    channels = x.shape[1]
    total = torch.zeros(channels, dtype=torch.float64)
    total_sq = torch.zeros(channels, dtype=torch.float64)
    step = max(1, _CHUNK_FLOATS // max(1, x[0].numel()))
    for start in range(0, len(x), step):
        chunk = x[start : start + step]
        total += chunk.sum(dim=(0, 2, 3), dtype=torch.float64)
        total_sq += chunk.square().sum(dim=(0, 2, 3), dtype=torch.float64)
    count = max(1, len(x) * x.shape[2] * x.shape[3])
    mean = total / count
    std = (total_sq / count - mean.square()).clamp_min(0.0).sqrt()
    std = torch.where(std > 1e-12, std, torch.ones_like(std))  # constant channel: leave it
    return mean.to(torch.float32), std.to(torch.float32)


def build_dataset(cfg: DatasetConfig, seed: int) -> FederatedDataset:
    """Load every source and build one in-memory dataset of float tensors.

    Per source, in this order: sources without a test file give up a stratified
    ``test_fraction`` of their training data as test set (``round(test_fraction * n_c)`` per
    class); then the remaining training data is sub-sampled to ``round(fraction * n)``
    samples, at most ``max_samples``.  The test set therefore does not change when
    ``fraction``/``max_samples`` vary, so accuracies stay comparable.  Both draws are
    deterministic given ``seed`` and the source's position in ``dataset.sources``.

    Images are scaled to ``[0, 1]``, brought to ``dataset.channels`` (RGB -> BT.601
    luminance, grey -> replicated) and ``dataset.image_size`` (bilinear, antialiased), then
    standardised per channel with the training mean/std (population std, over every source
    together) if ``dataset.normalize``.

    Parameters
    ----------
    cfg
        The dataset config; validated here with
        :func:`~fedsim.data.dataset_checks.validate_dataset`.
    seed
        Run seed.

    Returns
    -------
    FederatedDataset

    Raises
    ------
    ConfigError
        An invalid config value.
    DataError
        A file problem, or sources of different sizes/channel counts while
        ``dataset.image_size``/``dataset.channels`` are 0.
    """
    validate_dataset(cfg)
    data_root = Path(cfg.data_root).expanduser() if cfg.data_root else default_data_root()
    train_parts: list[_Part] = []
    test_parts: list[_Part] = []
    for i, src in enumerate(cfg.sources):
        raw = load_source(src, data_root, key=f"dataset.sources[{i}]", image_size=cfg.image_size)
        if raw.test_x is not None and raw.test_y is not None:
            train_index = np.arange(len(raw.train_y))
            test_parts.append(_Part(i, raw.test_x, raw.test_y, np.arange(len(raw.test_y))))
        else:
            train_index, held = _stratified_holdout(
                raw.train_y, cfg.test_fraction, _rng(seed, i, _STREAM_CARVE)
            )
            test_parts.append(_Part(i, raw.train_x, raw.train_y, held))
        if len(train_index) == 0:
            raise DataError(f"dataset.sources[{i}]: no training samples left after the test split")
        picked = _subsample(
            len(train_index), src.fraction, src.max_samples, _rng(seed, i, _STREAM_SUBSAMPLE)
        )
        train_parts.append(_Part(i, raw.train_x, raw.train_y, train_index[picked]))

    names = [src.name for src in cfg.sources]
    all_parts = train_parts + test_parts
    channels = cfg.channels
    if channels == 0:
        native = {names[p.domain]: _native_channels(p.x) for p in all_parts}
        if len(set(native.values())) > 1:
            listing = ", ".join(f"{n}: {c}" for n, c in native.items())
            raise DataError(
                f"dataset.channels: sources have different channel counts ({listing}); "
                "set dataset.channels to 1 (grey) or 3 (RGB)"
            )
        channels = next(iter(native.values()))
    if cfg.image_size > 0:
        size = (cfg.image_size, cfg.image_size)
    else:
        sizes = {
            f"{names[p.domain]} {kind}": (int(p.x.shape[1]), int(p.x.shape[2]))
            for kind, parts in (("train", train_parts), ("test", test_parts))
            for p in parts
            if len(p.index)
        }
        if len(set(sizes.values())) > 1:
            listing = ", ".join(f"{n} {h}x{w}" for n, (h, w) in sizes.items())
            raise DataError(
                f"dataset.image_size: sources have different image sizes ({listing}); "
                "set dataset.image_size to resize them all to S x S"
            )
        size = next(iter(sizes.values()))
    shape = (channels, size[0], size[1])

    train_x, train_y, train_domain = _stack(train_parts, shape)
    test_x, test_y, test_domain = _stack(test_parts, shape)
    if cfg.normalize:
        mean, std = _channel_stats(train_x)
        for tensor in (train_x, test_x):  # in place: no second copy of the data
            tensor.sub_(mean.view(1, -1, 1, 1)).div_(std.view(1, -1, 1, 1))
    else:  # identity, so that code un-normalising with mean/std needs no special case
        mean, std = torch.zeros(channels), torch.ones(channels)
    max_label = max(int(p.y.max()) for p in all_parts)
    return FederatedDataset(
        train_x=train_x,
        train_y=train_y,
        train_domain=train_domain,
        test_x=test_x,
        test_y=test_y,
        test_domain=test_domain,
        domains=names,
        num_classes=max_label + 1,
        input_shape=shape,
        mean=mean,
        std=std,
        normalized=cfg.normalize,
    )
