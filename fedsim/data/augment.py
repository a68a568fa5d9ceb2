"""Batched, seeded image augmentation for the one training loop.

Every strategy trains through the same loop, so augmentation lives here, once, configured
by ``train.augment`` (:class:`fedsim.config.AugmentConfig`): a named *recipe* plus optional
per-op overrides.  An :class:`Augmenter` works on a whole ``N x C x H x W`` batch of
*normalised* images on the batch's device, in two steps:

* :meth:`Augmenter.sample` draws every random number of a batch on the CPU from the
  caller's generator (the client's per-round stream, habit 7) into an
  :class:`~fedsim.data.augment_params.AugParams`;
* :meth:`Augmenter.apply` is deterministic given those parameters, batched, with no
  per-image Python.

The split lets vectorised training augment several clients' batches in one ``apply``
call on ``AugParams.cat([...])`` of each client's own ``sample``; the result equals
augmenting each client's batch on its own.  Two views of a batch (SimCLR, FedoSSL) are
two calls with the same generator.

The pure tensor maths of the ops (resampling taps, grey level, hue shift) is in
:mod:`fedsim.data.augment_kernels`.

Ops, in this fixed order, on the ``[0, 1]`` pixel scale (``x * std + mean``):

1. random crop of the original size after zero padding by ``crop_padding`` pixels
   (torchvision ``RandomCrop(size, padding)``);
2. random resized crop back to the original size (torchvision ``RandomResizedCrop`` with
   ``resized_crop_scale``, ``resized_crop_ratio``; ratio ``[]`` means torchvision's
   default ``[3/4, 4/3]``), bilinear, ``align_corners=False``;
3. horizontal flip with probability ``flip``;
4. with probability ``jitter_p``, colour jitter with torchvision ``ColorJitter``'s
   conventions: brightness, contrast and saturation factors uniform in
   ``[max(0, 1 - s), 1 + s]``, a hue shift uniform in ``[-h, h]`` applied through HSV,
   results clamped to ``[0, 1]`` as torchvision clamps them;
5. grayscale with probability ``grayscale`` (ITU-R 601 luma, torchvision's weights
   0.2989, 0.587, 0.114, copied to the three channels).

On 1-channel images saturation, hue and grayscale are no-ops (as in torchvision).

Why plain torch: torchvision does not load with the CPU torch build fedsim uses, and
kornia (0.9, measured in ``bench/augment.py``, results in ``bench/results/augment.md``)
is slower per batch on the CPU and would be a new dependency.  The geometric ops run on
the normalised tensor (zero padding becomes the per-channel value of a black pixel,
interpolation commutes with the per-channel affine map), so a crop-and-flip recipe never
leaves the normalised scale; the colour ops undo and redo the normalisation around them.

Deviations from torchvision
---------------------------
* Jitter order: brightness, contrast, saturation, hue, always; torchvision's
  ``ColorJitter`` applies the four in a random order per image.
* Streams: the same distributions as torchvision, not its random stream.  Integer draws
  (crop positions) are ``floor(u * range)`` of a uniform ``u``; the resized crop draws
  its 10 candidate boxes per image at once and takes the first that fits (torchvision
  stops drawing at that one), with torchvision's centre-crop fallback when none fits.
* Resized crop sizes are rounded in float32 (torchvision: Python floats), which can move
  a box by one pixel in rare ties.  Interpolation is plain bilinear; torchvision's
  ``antialias=True`` only differs when downsampling, and a crop of scale at most 1 is
  never downsampled.
* Hue is shifted with the closed-form HSV-to-RGB map ``v - v s clamp(min(k, 4 - k), 0,
  1)``, ``k = (n + 6 h) mod 6``, equal to torchvision's sector table up to rounding; an
  image whose hue shift is 0 is left bit-for-bit unchanged.

Recipes and their sources
-------------------------
* ``none``: nothing.
* ``cifar``: ``crop_padding`` 4 and ``flip`` 0.5, the standard CIFAR pad-and-crop.  It is
  also what FedoSSL's official CIFAR code uses for *both* of its views
  (github.com/cugzj/FedoSSL @ dbaf341: ``open_world_cifar.py:191-197``
  ``RandomCrop(32, padding=4)``, ``RandomHorizontalFlip()``; ``TransformTwice`` in
  ``utils.py:9-16``, used at ``fedossl_cifar.py:413-419``); its ImageNet-100 script uses
  ``RandomResizedCrop(224, scale=(0.5, 1.0))`` and a flip (``fedossl_imagenet.py:157-162``).
  FedoSSL's official code uses no SimCLR colour augmentation.
* ``fraug_digits``: FRAug's official Digits training transforms (github.com/
  HaokunChen245/FRAug @ 816e8be, ``datasets/Digits.py:49-55``):
  ``RandomResizedCrop(32, scale=(0.7, 1.0))`` (default ratio 3/4 to 4/3),
  ``ColorJitter(0.3, 0.3, 0.3, 0.3)``, ``RandomGrayscale()`` (p = 0.1), the horizontal
  flip commented out.  FRAug applies them to the grey PIL images of MNIST and USPS before
  copying them to three channels, where saturation, hue and grayscale do nothing.
* ``simclr``: "A Simple Framework for Contrastive Learning of Visual Representations"
  (Chen et al. 2020, arXiv:2002.05709), CIFAR variant, in torchvision terms: resized crop
  with scale 0.08 to 1 and ratio 3/4 to 4/3, flip 0.5, ``ColorJitter(0.4, 0.4, 0.4,
  0.1)`` with p 0.8, grayscale 0.2, no blur.  Official code (github.com/google-research/
  simclr @ 383d414): ``data_util.py:321-322`` (area and ratio ranges),
  ``data_util.py:74-77`` (jitter strengths ``0.8 s, 0.8 s, 0.8 s, 0.2 s``),
  ``README.md:83`` (CIFAR-10: ``s = 0.5``, ``--use_blur=False``), ``data_util.py:390-393``
  (jitter p 0.8, grayscale p 0.2), ``data_util.py:469-474`` (crop, flip, colour).  The
  scale is SimCLR's 0.08, not FedoSSL's (which has no resized crop on CIFAR).  SimCLR
  itself resizes bicubically with TensorFlow's box sampler and uses a multiplicative
  brightness; fedsim follows the torchvision form that PyTorch ports use.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from fedsim.config import AugmentConfig
from fedsim.data.augment_kernels import (
    _identity_taps,
    _luma,
    _matrix,
    _resize_taps,
    _shift_hue,
    _shift_taps,
    _Taps,
)
from fedsim.data.augment_params import AugParams
from fedsim.data.augment_recipes import _DEFAULT_RATIO, RECIPES, resolve, validate_augment

__all__ = [
    "RECIPES",
    "Augmenter",
    "build_augmenter",
    "resolve",
    "validate_augment",
]

_TRIES = 10  # torchvision RandomResizedCrop's candidate boxes per image

# --------------------------------------------------------------------------- the augmenter


class Augmenter:
    """A recipe's ops, bound to a dataset's normalisation (see the module docstring).

    Parameters
    ----------
    ops : dict
        The effective op values (:func:`resolve`), already validated.
    mean, std : torch.Tensor
        Per-channel normalisation: ``x * std + mean`` is on the ``[0, 1]`` pixel scale.
    """

    def __init__(self, ops: dict[str, Any], mean: torch.Tensor, std: torch.Tensor) -> None:
        self.padding = int(ops["crop_padding"])
        scale = [float(v) for v in ops["resized_crop_scale"]]
        ratio = [float(v) for v in ops["resized_crop_ratio"]] or list(_DEFAULT_RATIO)
        self.scale = (scale[0], scale[1]) if scale else None
        self.log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
        self.ratio = (ratio[0], ratio[1])
        self.flip = float(ops["flip"])
        self.mean = torch.as_tensor(mean, dtype=torch.float64).flatten().cpu()
        self.std = torch.as_tensor(std, dtype=torch.float64).flatten().cpu()
        self.channels = int(self.mean.numel())
        rgb = self.channels == 3  # saturation, hue and grayscale are no-ops otherwise
        self.strength = (
            float(ops["brightness"]),
            float(ops["contrast"]),
            float(ops["saturation"]) if rgb else 0.0,
            float(ops["hue"]) if rgb else 0.0,
        )
        self.jitter_p = float(ops["jitter_p"]) if any(self.strength) else 0.0
        self.grayscale = float(ops["grayscale"]) if rgb else 0.0
        self._stats: dict[tuple[torch.device, torch.dtype], tuple[torch.Tensor, ...]] = {}

    @property
    def active(self) -> bool:
        """Whether any op can change an image (with this many channels)."""
        moves = self.padding > 0 or self.scale is not None or self.flip > 0
        return moves or self.jitter_p > 0 or self.grayscale > 0

    # ----------------------------------------------------------------- randomness

    def sample(self, n: int, gen: torch.Generator) -> AugParams:
        """Draw every random number for a batch of ``n`` images, on the CPU, from ``gen``.

        The order is fixed; an op that is off (saturation, hue and grayscale are off on
        grey images) draws nothing:

        1. crop padding ``p > 0``: ``randint(0, 2p + 1, (n, 2))`` (row, column offset);
        2. resized crop: ``rand(n, 22)``: 10 area-scale uniforms, 10 log-ratio uniforms,
           then the box's top and left position uniforms;
        3. flip: ``rand(n)``;
        4. jitter: ``rand(n)`` (applied if below ``jitter_p``), then ``rand(n, 4)``
           (brightness, contrast, saturation, hue; drawn even for a strength of 0);
        5. grayscale: ``rand(n)``.
        """
        shift = torch.zeros(n, 2, dtype=torch.long)
        crop = torch.zeros(n, 0)
        flip = torch.zeros(n, dtype=torch.bool)
        jitter = torch.tensor([1.0, 1.0, 1.0, 0.0]).repeat(n, 1)
        gray = torch.zeros(n, dtype=torch.bool)
        if self.padding > 0:
            shift = torch.randint(0, 2 * self.padding + 1, (n, 2), generator=gen) - self.padding
        if self.scale is not None:
            crop = torch.rand(n, 2 * _TRIES + 2, generator=gen)
        if self.flip > 0:
            flip = torch.rand(n, generator=gen) < self.flip
        if self.jitter_p > 0:
            applied = torch.rand(n, generator=gen) < self.jitter_p
            u = torch.rand(n, 4, generator=gen)
            lo = torch.tensor([max(0.0, 1.0 - s) for s in self.strength[:3]] + [-self.strength[3]])
            hi = torch.tensor([1.0 + s for s in self.strength[:3]] + [self.strength[3]])
            jitter = torch.where(applied[:, None], lo + (hi - lo) * u, jitter)
        if self.grayscale > 0:
            gray = torch.rand(n, generator=gen) < self.grayscale
        return AugParams(shift=shift, crop=crop, flip=flip, jitter=jitter, gray=gray)

    # ----------------------------------------------------------------- application

    def __call__(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """Augment ``x`` with fresh draws from ``gen``."""
        return self.apply(x, self.sample(len(x), gen).to(x.device))

    def apply(self, x: torch.Tensor, params: AugParams) -> torch.Tensor:
        """Augment the normalised batch ``x`` (``N x C x H x W``) with ``params``.

        Returns a new normalised tensor of ``x``'s shape, dtype and device.  Image ``i``
        depends only on ``x[i]`` and row ``i`` of ``params``.
        """
        if x.ndim != 4 or x.shape[1] != self.channels or len(params) != x.shape[0]:
            raise ValueError(
                f"augment: expected N x {self.channels} x H x W images and parameters for "
                f"N images, got {tuple(x.shape)} and {len(params)}"
            )
        if x.shape[0] == 0:
            return x.clone()
        params = params.to(x.device)
        dtype = x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32
        mean, std, black = self._normalisation(x.device, dtype)
        out = x.to(dtype)
        if self.padding > 0 or self.scale is not None or self.flip > 0:
            out = self._geometry(out, params, black)
        if self.jitter_p > 0 or self.grayscale > 0:
            out = out * std + mean
            if self.jitter_p > 0:
                out = self._jitter(out, params.jitter.to(dtype)[:, :, None, None])
            if self.grayscale > 0:
                out = torch.lerp(out, _luma(out), params.gray.to(dtype)[:, None, None, None])
            out = (out - mean) / std
        elif out is x:
            out = x.clone()
        return out.to(x.dtype)

    def _normalisation(self, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
        """``mean``, ``std`` (``1 x C x 1 x 1``) and the normalised value of black."""
        key = (device, dtype)
        if key not in self._stats:
            mean = self.mean.to(device, dtype).view(1, -1, 1, 1)
            std = self.std.to(device, dtype).view(1, -1, 1, 1)
            self._stats[key] = (mean, std, -mean / std)
        return self._stats[key]

    # ----------------------------------------------------------------- geometry

    def _geometry(self, x: torch.Tensor, params: AugParams, black: torch.Tensor) -> torch.Tensor:
        """Pad-crop, resized crop and flip as one linear resampling per axis.

        Each axis gets an ``n x L x L`` matrix (bilinear weights; one 1 per row for whole-
        pixel moves, so those stay exact) and the batch is multiplied by them (on a GPU
        with TF32 matmuls enabled, the products are rounded to TF32).  This runs on the
        normalised tensor: what falls into the zero padding gets ``black``.
        """
        n, c, h, w = x.shape
        rows: _Taps | None = None
        cols: _Taps | None = None
        if self.scale is not None:
            top, left, height, width = self._boxes(params.crop.to(x.dtype), h, w)
            rows = _resize_taps(top, height, h)
            cols = _resize_taps(left, width, w)
        if self.padding > 0:
            rows = _shift_taps(rows or _identity_taps(n, h, x), params.shift[:, 0], h)
            cols = _shift_taps(cols or _identity_taps(n, w, x), params.shift[:, 1], w)
        if self.flip > 0:
            flip = params.flip[:, None]
            cols = tuple(torch.where(flip, t.flip(1), t) for t in cols or _identity_taps(n, w, x))
        out = x
        if cols is not None:
            mx = _matrix(cols, w)
            out = torch.bmm(out.reshape(n, c * h, w), mx.transpose(1, 2)).view(n, c, h, w)
        if rows is not None:
            my = _matrix(rows, h)
            out = torch.matmul(my[:, None], out)
            if self.padding > 0 and cols is not None:
                covered = my.sum(2)[:, :, None] * mx.sum(2)[:, None, :]  # n x H x W
                out = out + black * (1 - covered[:, None])
        return out

    def _boxes(self, u: torch.Tensor, h: int, w: int) -> tuple[torch.Tensor, ...]:
        """torchvision ``RandomResizedCrop.get_params`` on 10 candidates per image.

        Returns the boxes' top, left, height and width (float tensors of whole numbers).
        """
        assert self.scale is not None
        lo, hi = self.scale
        target = h * w * (lo + (hi - lo) * u[:, :_TRIES])
        lr0, lr1 = self.log_ratio
        aspect = torch.exp(lr0 + (lr1 - lr0) * u[:, _TRIES : 2 * _TRIES])
        cw = torch.round(torch.sqrt(target * aspect))
        ch = torch.round(torch.sqrt(target / aspect))
        fits = (cw > 0) & (cw <= w) & (ch > 0) & (ch <= h)
        first = fits.to(torch.uint8).argmax(1, keepdim=True)  # the first candidate that fits
        found = fits.any(1)
        # torchvision's fallback: the centre crop of the allowed ratio closest to the image's
        if w / h < self.ratio[0]:
            fw, fh = w, round(w / self.ratio[0])
        elif w / h > self.ratio[1]:
            fw, fh = round(h * self.ratio[1]), h
        else:
            fw, fh = w, h
        height = torch.where(found, ch.gather(1, first)[:, 0], float(fh))
        width = torch.where(found, cw.gather(1, first)[:, 0], float(fw))
        # randint(0, h - height + 1) as floor(u * (h - height + 1)), guarding u * k == k
        top = torch.minimum(torch.floor(u[:, 2 * _TRIES] * (h - height + 1)), h - height)
        left = torch.minimum(torch.floor(u[:, 2 * _TRIES + 1] * (w - width + 1)), w - width)
        top = torch.where(found, top, float((h - fh) // 2))
        left = torch.where(found, left, float((w - fw) // 2))
        return top, left, height, width

    # ----------------------------------------------------------------- colour

    def _jitter(self, x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
        """Brightness, contrast, saturation, hue (in this order) on pixels in ``[0, 1]``.

        ``f`` is ``n x 4 x 1 x 1``: three blend factors (1 = unchanged) and the hue shift
        (0 = unchanged); ``x`` is modified in place.
        """
        b, c, s, hue = self.strength
        if b > 0:  # blend with black
            x.mul_(f[:, 0:1]).clamp_(0, 1)
        if c > 0:  # blend with the image's mean grey level
            mean = (_luma(x) if self.channels == 3 else x).mean(dim=(1, 2, 3), keepdim=True)
            x.mul_(f[:, 1:2]).add_((1 - f[:, 1:2]) * mean).clamp_(0, 1)
        if s > 0:  # blend with the image's grey version
            grey = (1 - f[:, 2:3]) * _luma(x)
            x.mul_(f[:, 2:3]).add_(grey).clamp_(0, 1)
        if hue > 0:  # images with a zero shift are kept exactly
            x = torch.lerp(x, _shift_hue(x, f[:, 3:4]), (f[:, 3:4] != 0).to(x.dtype))
        return x


# --------------------------------------------------------------------------- building


def build_augmenter(
    cfg: AugmentConfig, mean: torch.Tensor, std: torch.Tensor, scenario_default: str = ""
) -> Augmenter | None:
    """The :class:`Augmenter` of ``cfg`` for a dataset normalised by ``mean``/``std``.

    Returns None when no op is active (recipe ``none`` without overrides, or only ops
    that do nothing on these images).  Raises :class:`ConfigError` for an invalid
    section (see :func:`validate_augment`).
    """
    channels = int(torch.as_tensor(mean).numel())
    validate_augment(cfg, channels=channels, scenario_default=scenario_default)
    aug = Augmenter(resolve(cfg, scenario_default), torch.as_tensor(mean), torch.as_tensor(std))
    return aug if aug.active else None
