"""Checks of the ``runtime`` section that need no engine (used at config load)."""

from __future__ import annotations

import re
from typing import Any

__all__ = ["validate_address", "validate_runtime"]

_HOST_PORT = re.compile(r"^(ray://)?[A-Za-z0-9_.\-]+:(\d{1,5})$")


def validate_address(address: str) -> str | None:
    """An error message for a ``runtime.address`` that cannot be a Ray address, else None."""
    if address in ("", "auto"):
        return None
    m = _HOST_PORT.match(address)
    if m is None or not 0 < int(m.group(2)) < 65536:
        return (
            f"runtime.address: '{address}' is not a Ray address "
            "(allowed: empty = a private local instance, auto, host:port, ray://host:port)"
        )
    return None


def validate_runtime(rt: Any) -> str | None:
    """Checks of the Ray keys of a :class:`~fedsim.config.RuntimeConfig` (None if fine)."""
    if rt.client_cpus <= 0:
        return f"runtime.client_cpus: must be > 0, got {rt.client_cpus}"
    if rt.client_gpus < 0:
        return f"runtime.client_gpus: must be >= 0, got {rt.client_gpus}"
    if rt.address and rt.name != "ray":
        return f"runtime.address: only runtime=ray joins a cluster, got runtime={rt.name}"
    return validate_address(rt.address)
