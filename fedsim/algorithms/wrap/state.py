"""Checkpointable state of Flower's own strategies, which have no ``state_dict``.

Flower keeps a strategy's memory in plain attributes; :data:`STATE` declares, per Flower
class, which ones and of what kind: FedAdam/FedYogi/FedAdagrad (``FedOpt``) their moments
``m_t`` / ``v_t`` (dicts of arrays), FedAvgM its ``momentum_vector`` (a list of arrays),
the differential-privacy wrappers their ``clipping_norm`` (a float, which the adaptive
ones update).  The DP wrappers hold the strategy they wrap in ``strategy``
(:func:`wrapped_strategy`).  ``current_arrays`` is not kept: every strategy resets it
from the global arrays in ``configure_train``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from flwr.serverapp.strategy import FedAvgM
from flwr.serverapp.strategy import Strategy as FlowerStrategy
from flwr.serverapp.strategy.dp_adaptive_clipping import DifferentialPrivacyAdaptiveBase
from flwr.serverapp.strategy.dp_fixed_clipping import DifferentialPrivacyFixedClippingBase
from flwr.serverapp.strategy.fedopt import FedOpt

DICT, LIST, FLOAT = "dict", "list", "float"
DP_WRAPPERS = (DifferentialPrivacyFixedClippingBase, DifferentialPrivacyAdaptiveBase)
#: Flower class -> its state attributes and their kinds
STATE: dict[type, tuple[tuple[str, str], ...]] = {
    FedOpt: (("m_t", DICT), ("v_t", DICT)),
    FedAvgM: (("momentum_vector", LIST),),
    DifferentialPrivacyFixedClippingBase: (("clipping_norm", FLOAT),),
    DifferentialPrivacyAdaptiveBase: (("clipping_norm", FLOAT),),
}


def wrapped_strategy(strategy: FlowerStrategy) -> FlowerStrategy:
    """The strategy inside Flower's differential-privacy wrappers (``strategy`` itself
    when it is not one)."""
    while isinstance(strategy, DP_WRAPPERS):
        strategy = strategy.strategy
    return strategy


def _declared(strategy: FlowerStrategy) -> list[tuple[str, str]]:
    return [item for cls, items in STATE.items() if isinstance(strategy, cls) for item in items]


def _inner(strategy: FlowerStrategy) -> FlowerStrategy | None:
    return strategy.strategy if isinstance(strategy, DP_WRAPPERS) else None


def flower_state(strategy: FlowerStrategy, prefix: str = "") -> dict[str, np.ndarray]:
    """The declared state of ``strategy`` (and of the strategy it wraps) as arrays."""
    out: dict[str, np.ndarray] = {}
    for name, kind in _declared(strategy):
        value: Any = getattr(strategy, name)
        if kind == DICT and isinstance(value, dict):  # None before the first aggregation
            out.update({f"{prefix}{name}/{k}": np.asarray(v) for k, v in value.items()})
        elif kind == LIST and isinstance(value, list):
            out.update({f"{prefix}{name}/{i}": np.asarray(v) for i, v in enumerate(value)})
        elif kind == FLOAT and isinstance(value, int | float):
            out[f"{prefix}{name}"] = np.asarray(float(value))
    inner = _inner(strategy)
    if inner is not None:
        out.update(flower_state(inner, f"{prefix}strategy/"))
    return out


def load_flower_state(
    strategy: FlowerStrategy, state: dict[str, np.ndarray], prefix: str = ""
) -> None:
    """Put back what :func:`flower_state` returned."""
    for name, kind in _declared(strategy):
        if kind == DICT:
            part = {
                k[len(prefix) + len(name) + 1 :]: v
                for k, v in state.items()
                if k.startswith(f"{prefix}{name}/")
            }
            if part:
                setattr(strategy, name, {k: np.array(v) for k, v in part.items()})
        elif kind == LIST:
            items = sorted(
                (int(k.rsplit("/", 1)[1]), v)
                for k, v in state.items()
                if k.startswith(f"{prefix}{name}/")
            )
            if items:
                setattr(strategy, name, [np.array(v) for _, v in items])
        elif f"{prefix}{name}" in state:
            setattr(strategy, name, float(state[f"{prefix}{name}"]))
    inner = _inner(strategy)
    if inner is not None:
        load_flower_state(inner, state, f"{prefix}strategy/")
