"""Flower's differential-privacy wrappers as an option on any strategy (``dp.kind``).

Server side, :func:`wrap_dp` puts the chosen ``flwr.serverapp.strategy``
``DifferentialPrivacy{Server,Client}Side{Fixed,Adaptive}Clipping`` around the strategy;
client side, :func:`dp_mod` runs Flower's matching clipping mod
(``flwr.clientapp.mod.fixedclipping_mod`` / ``adaptiveclipping_mod``) for the
client-side kinds.  ``num_sampled_clients`` is the scenario's clients per round.  Flower
draws the noise from an unseeded generator, so DP runs are not bit-reproducible.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flwr.app import Context, Message, MessageType

from fedsim.config import DPConfig, RunConfig
from fedsim.errors import ConfigError

KINDS = ("none", "server_fixed", "server_adaptive", "client_fixed", "client_adaptive")


def validate_dp(dp: DPConfig) -> None:
    if dp.kind not in KINDS:
        raise ConfigError(f"dp.kind: unknown '{dp.kind}' (allowed: {', '.join(KINDS)})")
    if dp.noise_multiplier < 0:
        raise ConfigError(f"dp.noise_multiplier: must be >= 0, got {dp.noise_multiplier}")
    for key in ("clipping_norm", "initial_clipping_norm", "clip_norm_lr"):
        if getattr(dp, key) <= 0:
            raise ConfigError(f"dp.{key}: must be > 0, got {getattr(dp, key)}")
    if not 0 < dp.target_clipped_quantile < 1:
        raise ConfigError(
            f"dp.target_clipped_quantile: must be in (0, 1), got {dp.target_clipped_quantile}"
        )


def clients_per_round(cfg: RunConfig) -> int:
    part, n = cfg.scenario.participation, cfg.scenario.num_clients
    return (
        part.clients_per_round if part.clients_per_round > 0 else max(1, round(part.fraction * n))
    )


def wrap_dp(strategy: Any, cfg: RunConfig) -> Any:
    """``strategy`` inside the Flower DP wrapper ``cfg.dp`` asks for (itself for none)."""
    dp = cfg.dp
    if dp.kind == "none":
        return strategy
    import flwr.serverapp.strategy as flower

    sampled = clients_per_round(cfg)
    if dp.kind.endswith("fixed"):
        cls = {
            "server_fixed": flower.DifferentialPrivacyServerSideFixedClipping,
            "client_fixed": flower.DifferentialPrivacyClientSideFixedClipping,
        }[dp.kind]
        return cls(strategy, dp.noise_multiplier, dp.clipping_norm, sampled)
    adaptive = {
        "server_adaptive": flower.DifferentialPrivacyServerSideAdaptiveClipping,
        "client_adaptive": flower.DifferentialPrivacyClientSideAdaptiveClipping,
    }[dp.kind]
    return adaptive(
        strategy,
        dp.noise_multiplier,
        sampled,
        initial_clipping_norm=dp.initial_clipping_norm,
        target_clipped_quantile=dp.target_clipped_quantile,
        clip_norm_lr=dp.clip_norm_lr,
    )


def dp_mod(config_of: Callable[[Context], RunConfig]) -> Any:
    """A mod that runs Flower's client-side clipping mod when ``dp.kind`` asks for it."""
    from flwr.clientapp.mod import adaptiveclipping_mod, fixedclipping_mod

    def mod(msg: Message, context: Context, call_next: Callable[..., Message]) -> Message:
        kind = config_of(context).dp.kind
        if msg.metadata.message_type != MessageType.TRAIN:
            return call_next(msg, context)  # Flower's clipping mods act on training only
        if kind == "client_fixed":
            return fixedclipping_mod(msg, context, call_next)
        if kind == "client_adaptive":
            return adaptiveclipping_mod(msg, context, call_next)
        return call_next(msg, context)

    return mod
