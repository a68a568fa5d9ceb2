"""Test helper: run an experiment on an InlineGrid that records the real messages."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flwr.app import Message

from fedsim.engine.app import CONFIG_KEY, make_client_app
from fedsim.engine.conf import to_json
from fedsim.engine.runtime.inline import InlineGrid
from fedsim.engine.server import run_experiment


class RecordingGrid(InlineGrid):
    """An InlineGrid that keeps every message sent and every reply received."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sent: list[Message] = []
        self.received: list[Message] = []

    def send_and_receive(self, messages, *, timeout=None):  # type: ignore[no-untyped-def]
        messages = list(messages)
        self.sent.extend(messages)
        replies = list(super().send_and_receive(messages, timeout=timeout))
        self.received.extend(replies)
        return replies


def run_recorded(cfg: Any, tmp_path: Path) -> RecordingGrid:
    """Run ``cfg`` to the end on a RecordingGrid; returns the grid with its messages."""
    grid = RecordingGrid(make_client_app(), cfg.scenario.num_clients, {CONFIG_KEY: to_json(cfg)})
    run_experiment(grid, cfg, tmp_path / "run")
    return grid
