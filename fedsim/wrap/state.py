"""Checkpointable state of Flower's own strategies, which have no ``state_dict``.

Flower keeps a strategy's memory in plain attributes: FedAdam/FedYogi/FedAdagrad their
moments ``m_t`` / ``v_t`` (dicts of arrays), FedAvgM its ``momentum_vector`` (a list),
the adaptive-clipping DP wrappers their ``clipping_norm`` (a float), and DP wrappers hold
the wrapped strategy in ``strategy``.  ``current_arrays`` is not kept: every strategy
resets it from the global arrays in ``configure_train``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

FLOATS = ("clipping_norm",)
DICTS = ("m_t", "v_t")
LISTS = ("momentum_vector",)


def flower_state(strategy: Any, prefix: str = "") -> dict[str, np.ndarray]:
    """The state attributes of ``strategy`` (and of the strategy it wraps) as arrays."""
    out: dict[str, np.ndarray] = {}
    for name in DICTS:
        value = getattr(strategy, name, None)
        if isinstance(value, dict):
            out.update({f"{prefix}{name}/{k}": np.asarray(v) for k, v in value.items()})
    for name in LISTS:
        value = getattr(strategy, name, None)
        if isinstance(value, list):
            out.update({f"{prefix}{name}/{i}": np.asarray(v) for i, v in enumerate(value)})
    for name in FLOATS:
        value = getattr(strategy, name, None)
        if isinstance(value, int | float):
            out[f"{prefix}{name}"] = np.asarray(float(value))
    inner = getattr(strategy, "strategy", None)
    if inner is not None:
        out.update(flower_state(inner, f"{prefix}strategy/"))
    return out


def load_flower_state(strategy: Any, state: dict[str, np.ndarray], prefix: str = "") -> None:
    """Put back what :func:`flower_state` returned."""
    for name in DICTS:
        part = {
            k[len(prefix) + len(name) + 1 :]: v
            for k, v in state.items()
            if k.startswith(f"{prefix}{name}/")
        }
        if part:
            setattr(strategy, name, {k: np.array(v) for k, v in part.items()})
    for name in LISTS:
        items = sorted(
            (int(k.rsplit("/", 1)[1]), v)
            for k, v in state.items()
            if k.startswith(f"{prefix}{name}/")
        )
        if items:
            setattr(strategy, name, [np.array(v) for _, v in items])
    for name in FLOATS:
        if f"{prefix}{name}" in state:
            setattr(strategy, name, float(state[f"{prefix}{name}"]))
    inner = getattr(strategy, "strategy", None)
    if inner is not None:
        load_flower_state(inner, state, f"{prefix}strategy/")
