"""Installing the plug-in packages under tests/ (plugin_example, plugin_task,
plugin_channel) the way a user would, into a folder of their own, and running fedsim."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FEDSIM = Path(sys.executable).parent / "fedsim"


def install_plugin(name: str, tmp_path: Path) -> Path:
    """``pip install tests/<name>`` into ``tmp_path/site``; returns that folder."""
    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--target", str(site), str(REPO / "tests" / name)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    return site


def run_fedsim(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``fedsim run <args>`` in a fresh process."""
    return subprocess.run(
        [str(FEDSIM), "run", *args], capture_output=True, text=True, env=env, timeout=600
    )
