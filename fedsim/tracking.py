"""Tracking callbacks: TensorBoard, ``metrics.jsonl``, run status and the progress bar.

The round loop hands every callback the same flat dict of slash-namespaced scalars
(``train/loss``, ``eval/acc``, ``comm/bytes_up``, ...); each callback writes it its own
way.  Callbacks never compute metrics.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from fedsim.tb_layout import mark_shown, shown_hparams

log = logging.getLogger(__name__)

STATUS_FILE = "run.json"
METRICS_FILE = "metrics.jsonl"


def write_json_atomic(path: Path, payload: dict[str, Any]) -> None:
    """Write-then-rename so a reader never sees half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        json.dump(payload, f, indent=2, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_status(run_dir: Path) -> str | None:
    """The ``status`` recorded in a run directory's ``run.json``; None when there is no
    such file, ``"unreadable"`` when it cannot be parsed."""
    path = run_dir / STATUS_FILE
    if not path.exists():
        return None
    try:
        return str(json.loads(path.read_text()).get("status", "unknown"))
    except (OSError, ValueError):
        return "unreadable"


class Callback:
    """Hooks called by the round loop; all optional."""

    def on_start(self, info: dict[str, Any]) -> None:
        """Before round one; ``info`` has config, config_yaml, hparams, partition_*, start_round."""

    def on_round(self, server_round: int, metrics: dict[str, float]) -> None:
        """After every round, with that round's scalars."""

    def on_end(self, summary: dict[str, float], status: str) -> None:
        """Once at the end; ``status`` is complete, interrupted or failed."""


class StatusCallback(Callback):
    """``run.json``: says whether the run directory holds a complete run."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / STATUS_FILE
        self.info: dict[str, Any] = {}

    def on_start(self, info: dict[str, Any]) -> None:
        self.info = {"status": "running", "started": time.time(), "config": info["config"]}
        write_json_atomic(self.path, self.info)

    def on_round(self, server_round: int, metrics: dict[str, float]) -> None:
        self.info["last_round"] = server_round

    def on_end(self, summary: dict[str, float], status: str) -> None:
        self.info.update({"status": status, "finished": time.time(), "final": summary})
        write_json_atomic(self.path, self.info)


class JsonlCallback(Callback):
    """One JSON object per round in ``metrics.jsonl`` (flushed every round)."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / METRICS_FILE
        self.file: Any = None

    def on_start(self, info: dict[str, Any]) -> None:
        start = int(info.get("start_round", 1))
        if start > 1 and self.path.exists():  # resume: drop rounds that will be redone
            kept = [
                ln
                for ln in self.path.read_text().splitlines()
                if ln.strip() and json.loads(ln)["round"] < start
            ]
            self.path.write_text("".join(ln + "\n" for ln in kept))
        else:
            self.path.write_text("")
        self.file = open(self.path, "a")  # noqa: SIM115 - kept open for the whole run, closed in on_end

    def on_round(self, server_round: int, metrics: dict[str, float]) -> None:
        clean = {k: (v if math.isfinite(v) else None) for k, v in metrics.items()}
        self.file.write(json.dumps({"round": server_round, **clean}, sort_keys=True) + "\n")
        self.file.flush()

    def on_end(self, summary: dict[str, float], status: str) -> None:
        if self.file is not None:
            self.file.close()


class TensorBoardCallback(Callback):
    """Event files: scalars per round, config text, partition picture, hparams entry."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.writer: Any = None
        self.hparams: dict[str, Any] = {}
        self.start_round = 1

    def on_start(self, info: dict[str, Any]) -> None:
        from torch.utils.tensorboard import SummaryWriter
        from torch.utils.tensorboard.summary import hparams

        self.start_round = int(info.get("start_round", 1))
        # purge_step drops events at or after the resumed round: no duplicated rounds
        purge = self.start_round if self.start_round > 1 else None
        self.writer = SummaryWriter(log_dir=str(self.run_dir), purge_step=purge)
        self.hparams = info["hparams"]
        if self.start_round == 1:
            self.writer.add_text("config", "```\n" + info["config_yaml"] + "\n```", 0)
            if info.get("partition_text"):
                self.writer.add_text("partition", "```\n" + info["partition_text"] + "\n```", 0)
            image = info.get("partition_image")
            if image is not None:
                self.writer.add_image("partition", np.asarray(image), 0, dataformats="HWC")
            exp, ssi, _ = hparams(self.hparams, {k: 0.0 for k in info.get("hparam_metrics", [])})
            shown = shown_hparams(self.hparams, str(info.get("config", {}).get("tag") or ""))
            self.writer.file_writer.add_summary(mark_shown(exp, shown))
            self.writer.file_writer.add_summary(ssi)
            layout = info.get("layout")
            if layout:
                self.writer.add_custom_scalars(layout)

    def on_round(self, server_round: int, metrics: dict[str, float]) -> None:
        for key, value in metrics.items():
            if math.isfinite(value):
                self.writer.add_scalar(key, value, server_round)
        self.writer.flush()

    def on_end(self, summary: dict[str, float], status: str) -> None:
        from torch.utils.tensorboard.summary import hparams

        if self.writer is None:
            return
        if status == "complete":
            final = {f"hparams/{k}": v for k, v in summary.items() if math.isfinite(v)}
            _, _, sei = hparams(self.hparams, final)
            last = int(summary.get("rounds", 0))
            for key, value in final.items():
                self.writer.add_scalar(key, value, last)
            self.writer.file_writer.add_summary(sei)
        self.writer.flush()
        self.writer.close()


class ProgressCallback(Callback):
    """A terminal progress bar: round, ETA and the latest accuracy."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.total = total
        self.enabled = enabled
        self.bar: Any = None
        self.last_acc: float | None = None

    def on_start(self, info: dict[str, Any]) -> None:
        if not self.enabled:
            return
        from tqdm import tqdm

        start = int(info.get("start_round", 1))
        self.bar = tqdm(
            total=self.total,
            initial=start - 1,
            desc="fedsim",
            unit="round",
            file=sys.stderr,
            dynamic_ncols=True,
        )

    def on_round(self, server_round: int, metrics: dict[str, float]) -> None:
        if self.bar is None:
            return
        if "eval/acc" in metrics:
            self.last_acc = metrics["eval/acc"]
        post = {"loss": f"{metrics.get('train/loss', float('nan')):.3f}"}
        if self.last_acc is not None:
            post["acc"] = f"{self.last_acc:.3f}"
        self.bar.set_postfix(post, refresh=False)
        self.bar.update(1)

    def on_end(self, summary: dict[str, float], status: str) -> None:
        if self.bar is not None:
            self.bar.close()
