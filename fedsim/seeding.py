"""Randomness is passed in: every stream derives from ``(seed, purpose, round, client)``.

No global seeding in library code.  The same seed gives the same partitions, schedules,
batches and initial weights whatever the runtime or the number of workers, because each
consumer asks for its own stream instead of sharing one generator.
"""

from __future__ import annotations

import zlib

import numpy as np
import torch


def _key(seed: int, purpose: str, *ids: int) -> list[int]:
    return [
        int(seed) & 0xFFFFFFFF,
        zlib.crc32(purpose.encode()),
        *(int(i) & 0xFFFFFFFF for i in ids),
    ]


def derive_seed(seed: int, purpose: str, *ids: int) -> int:
    """A 63-bit integer seed for ``(seed, purpose, *ids)``."""
    state = np.random.SeedSequence(_key(seed, purpose, *ids)).generate_state(2, dtype=np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1]))


def derive_rng(seed: int, purpose: str, *ids: int) -> np.random.Generator:
    """A NumPy generator for ``(seed, purpose, *ids)``."""
    return np.random.default_rng(np.random.SeedSequence(_key(seed, purpose, *ids)))


def torch_generator(seed: int, purpose: str, *ids: int, device: str = "cpu") -> torch.Generator:
    """A torch generator for ``(seed, purpose, *ids)``."""
    gen = torch.Generator(device=device)
    gen.manual_seed(derive_seed(seed, purpose, *ids))
    return gen
