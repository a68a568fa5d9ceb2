"""The run's log file, ``<run_dir>/fedsim.log``."""

from __future__ import annotations

import logging
from pathlib import Path

LOG_FILE = "fedsim.log"


def attach_log_file(run_dir: Path) -> logging.Handler:
    """Send INFO and above of every logger to ``<run_dir>/fedsim.log``; returns the handler."""
    handler = logging.FileHandler(run_dir / LOG_FILE)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.setLevel(logging.INFO)
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(min(root.level or logging.INFO, logging.INFO))
    return handler


def detach_log_file(handler: logging.Handler) -> None:
    """Undo :func:`attach_log_file`."""
    logging.getLogger().removeHandler(handler)
    handler.close()
