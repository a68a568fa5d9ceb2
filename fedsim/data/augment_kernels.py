"""The pure tensor maths under :class:`fedsim.data.augment.Augmenter`: resampling taps and colour.

Separate from :mod:`fedsim.data.augment` because these are stateless functions of tensors
(no recipe, no normalisation, no randomness): the linear resampling of one axis as taps and
their matrix (crops, pads, flips), the ITU-R 601 grey level and the HSV hue shift.
"""

from __future__ import annotations

import torch

_GRAY = (0.2989, 0.587, 0.114)  # torchvision rgb_to_grayscale (ITU-R 601-2 luma)

# A linear resampling along one axis: for each image and output position, two source
# indices and their weights (``idx0, idx1, w0, w1``, each ``n x L``).  A weight of 0 on
# both marks a position in the zero padding.
_Taps = tuple[torch.Tensor, ...]


def _identity_taps(n: int, size: int, like: torch.Tensor) -> _Taps:
    idx = torch.arange(size, device=like.device).expand(n, size)
    ones = torch.ones(n, size, device=like.device, dtype=like.dtype)
    return idx, idx, ones, torch.zeros_like(ones)


def _resize_taps(start: torch.Tensor, length: torch.Tensor, size: int) -> _Taps:
    """Bilinear resize of ``[start, start + length)`` to ``size`` (as ``F.interpolate``
    with ``align_corners=False``: half-pixel centres, the source clamped at 0)."""
    pos = torch.arange(size, device=start.device, dtype=start.dtype)
    length = length[:, None]
    src = ((pos + 0.5) * (length / size) - 0.5).clamp_(min=0)
    i0 = torch.minimum(src.floor(), length - 1)
    i1 = torch.minimum(i0 + 1, length - 1)
    w1 = src - i0
    return (start[:, None] + i0).long(), (start[:, None] + i1).long(), 1 - w1, w1


def _shift_taps(taps: _Taps, offset: torch.Tensor, size: int) -> _Taps:
    """Read every tap ``offset`` pixels further on in the zero-padded image."""
    i0, i1, w0, w1 = taps
    m0, m1 = i0 + offset[:, None], i1 + offset[:, None]
    return (
        m0.clamp(0, size - 1),
        m1.clamp(0, size - 1),
        w0 * ((m0 >= 0) & (m0 < size)),
        w1 * ((m1 >= 0) & (m1 < size)),
    )


def _matrix(taps: _Taps, size: int) -> torch.Tensor:
    """The ``n x L x size`` matrix of a resampling (each row: its taps' weights)."""
    i0, i1, w0, w1 = taps
    out = w0.new_zeros(*w0.shape, size)
    out.scatter_add_(2, i0[..., None], w0[..., None])
    return out.scatter_add_(2, i1[..., None], w1[..., None])


def _luma(x: torch.Tensor) -> torch.Tensor:
    """ITU-R 601 grey level of RGB images, ``n x 1 x H x W``."""
    r, g, b = x.unbind(1)
    return (_GRAY[0] * r + _GRAY[1] * g + _GRAY[2] * b).unsqueeze(1)


def _shift_hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Add ``shift`` (``n x 1 x 1 x 1``, in turns) to the HSV hue of RGB pixels in [0, 1].

    The hue, in sixths of a turn, is torchvision's ``_rgb2hsv`` (the channel that is the
    maximum, red first, decides the sector); value and saturation are kept, so each
    channel becomes ``max - (max - min) * clamp(2 - d, 0, 1)`` with ``d`` the distance of
    ``hue + offset`` (offsets 5, 3, 1 for R, G, B) to 2 on the circle of length 6.
    """
    r, g, b = x[:, 0:1], x[:, 1:2], x[:, 2:3]
    maxc = x.amax(1, keepdim=True)
    cr = maxc - x.amin(1, keepdim=True)
    inv = 1 / cr.clamp_min(torch.finfo(x.dtype).tiny)  # grey pixels: 0 / tiny = hue 0
    hue6 = torch.where(
        maxc == r, (g - b) * inv, torch.where(maxc == g, (b - r) * inv + 2, (r - g) * inv + 4)
    )
    hue6 = hue6 + 6 * shift
    hue6 = hue6 - 6 * torch.floor(hue6 / 6)  # now in [0, 6]
    # k = hue6 + (5, 3, 1) for R, G, B lies in [1, 11]; |3 - |k - 5|| is its distance to 2
    # or 8, i.e. to 2 on the circle of length 6, and 2 minus it the un-clamped weight
    k = torch.cat([hue6 + 5, hue6 + 3, hue6 + 1], dim=1)
    weight = k.sub_(5).abs_().sub_(3).abs_().neg_().add_(2).clamp_(0, 1)
    return maxc - cr * weight
