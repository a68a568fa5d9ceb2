"""Shared fixtures: small, fast configurations on the embedded digits."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
os.environ.setdefault("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("FEDSIM_DATA", REPO.parent / "shared" / "data"))


def shared_file(relative: str) -> Path:
    """A file of ../shared/data, or skip the test naming the missing file."""
    path = SHARED_DATA / relative
    if not path.exists():
        pytest.skip(f"data file {path} not found (../shared/data is not present)")
    return path


def small_overrides(tmp_path: Path, *extra: str) -> list[str]:
    """Fast settings: narrow CNN, 3 rounds, no progress bar, output in tmp_path."""
    return [
        f"output_dir={tmp_path}",
        "progress=false",
        "rounds=3",
        "backbone.width=0.25",
        *extra,
    ]


@pytest.fixture
def fast_cfg(tmp_path: Path):  # type: ignore[no-untyped-def]
    from fedsim.engine.conf import compose

    def make(*extra: str):  # type: ignore[no-untyped-def]
        return compose(small_overrides(tmp_path, *extra))

    return make
