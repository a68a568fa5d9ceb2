"""The random draws of one augmented batch, as one typed value (:class:`AugParams`).

Separate from :mod:`fedsim.data.augment` because the draws travel on their own: the
augmenter's ``sample`` makes them on the CPU, vectorised training concatenates several
clients' draws (:meth:`AugParams.cat`) and moves them to the batch's device, and ``apply``
consumes them; the training loop handles them without needing the ops.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class AugParams:
    """Every random draw of one batch of ``n`` images, as tensors with leading dim ``n``.

    Identity values where an op is off, so that batches of any clients concatenate.
    """

    shift: torch.Tensor  # (n, 2) int64: pad-crop window offset (rows, cols) in [-p, p]
    crop: torch.Tensor  # (n, 22) uniforms of the resized crop ((n, 0) when off)
    flip: torch.Tensor  # (n,) bool
    jitter: torch.Tensor  # (n, 4): brightness, contrast, saturation factors, hue shift
    gray: torch.Tensor  # (n,) bool

    def to(self, device: torch.device | str) -> AugParams:
        """The same parameters on ``device``."""
        return AugParams(
            shift=self.shift.to(device),
            crop=self.crop.to(device),
            flip=self.flip.to(device),
            jitter=self.jitter.to(device),
            gray=self.gray.to(device),
        )

    @staticmethod
    def cat(parts: list[AugParams]) -> AugParams:
        """Concatenate several batches' parameters along the batch dim, in order."""
        return AugParams(
            shift=torch.cat([p.shift for p in parts]),
            crop=torch.cat([p.crop for p in parts]),
            flip=torch.cat([p.flip for p in parts]),
            jitter=torch.cat([p.jitter for p in parts]),
            gray=torch.cat([p.gray for p in parts]),
        )

    def __len__(self) -> int:
        return int(self.flip.shape[0])
