"""A complete fedsim compressor plug-in: half precision, registered by entry point.

Each floating value travels as an IEEE float16 (2 bytes instead of 4), as in FLSim's
half-precision channel.  Rounding to the nearest float16 changes a value by at most a
relative ``2**-11`` (below 65504 in magnitude; beyond, it overflows to infinity and the
server rejects the reply as non-finite), so ``||Q(v)||^2 <= (1 + 2**-11)^2 ||v||^2``.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from fedsim.algorithms.channels import Channel


class HalfPrecision(Channel):
    name = "fp16"

    def encode_vector(self, v: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
        return {"half": v.astype(np.float16)}

    def decode_vector(self, parts: Mapping[str, np.ndarray], d: int) -> np.ndarray:
        return np.asarray(parts["half"], dtype=np.float64).reshape(d)

    def compression(self) -> float:
        return 2.0  # 2 bytes a value instead of 4

    def variance(self) -> float:
        return (1.0 + 2.0**-11) ** 2
