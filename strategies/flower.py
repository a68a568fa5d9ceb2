"""Flower's own strategies (``flwr.serverapp.strategy``) under fedsim's wrappers.

FedAdam / FedYogi / FedAdagrad (Reddi et al., ICLR 2021, arXiv 2003.00295), FedAvgM
(Hsu et al., arXiv 1909.06335), FedMedian and FedTrimmedAvg (Yin et al., ICML 2018,
arXiv 1803.01498), Krum / Multi-Krum (Blanchard et al., NeurIPS 2017), Bulyan
(El Mhamdi et al., ICML 2018, arXiv 1802.07927) and q-FedAvg (Li et al., ICLR 2020,
arXiv 1905.10497) run unchanged: :class:`fedsim.algorithms.wrap.server.FedsimStrategy` gives them
the scenario's participation, the channels, reply filtering and tracking; their
checkpoint state is read from their attributes (:mod:`fedsim.algorithms.wrap.state`).
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any

import flwr.serverapp.strategy as flower

from fedsim.algorithms.strategy import ServerContext, flower_defaults
from protocols.flower import FLOWER_CLASSES, QFedAvgConfig


def build(ctx: ServerContext) -> Any:
    """The Flower strategy the run's ``strategy`` config names, with its keys."""
    cfg = ctx.cfg.strategy
    kwargs: dict[str, Any] = {f.name: getattr(cfg, f.name) for f in fields(cfg) if f.name != "name"}
    if isinstance(cfg, QFedAvgConfig) and cfg.client_learning_rate == 0:
        kwargs["client_learning_rate"] = ctx.cfg.train.lr
    cls = getattr(flower, FLOWER_CLASSES[cfg.name])
    return cls(**flower_defaults(), **kwargs)
