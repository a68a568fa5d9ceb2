"""Where a run writes: a pure function of its configuration (no heavy imports)."""

from __future__ import annotations

from pathlib import Path

from fedsim.config import RunConfig


def run_dir_for(cfg: RunConfig) -> Path:
    """``<output_dir>/<experiment or scenario>/<strategy>/[<tag>/]seed-<S>``."""
    group = cfg.experiment or cfg.scenario.name
    parts = [cfg.output_dir, group, cfg.strategy.name]
    if cfg.tag:
        parts.append(cfg.tag)
    parts.append(f"seed-{cfg.seed}")
    return Path(*parts)
