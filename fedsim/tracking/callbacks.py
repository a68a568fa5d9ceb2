"""Tracking callbacks: TensorBoard, ``metrics.jsonl``, run status and the progress bar.

The round loop hands every callback the same flat dict of slash-namespaced scalars
(``train/loss``, ``eval/acc``, ``comm/bytes_up``, ...); each callback writes it its own
way.  Callbacks never compute metrics.
"""

from __future__ import annotations

import errno
import json
import logging
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from fedsim.atomic import write_atomic
from fedsim.runlock import promote
from fedsim.tracking.tb_layout import mark_shown, shown_hparams

log = logging.getLogger(__name__)

STATUS_FILE = "run.json"
METRICS_FILE = "metrics.jsonl"


RESERVE_BYTES = 4096  # blank space kept in a running run.json for its final record


def write_json_atomic(path: Path, payload: dict[str, Any], reserve: int = 0) -> None:
    """Write-then-rename so a reader never sees half a file; no temporary file is left
    behind when the write fails.  ``reserve`` bytes of trailing blanks (valid JSON) keep
    room for :func:`write_json_inplace` on a full disk."""
    text = json.dumps(payload, indent=2, sort_keys=True) + "\n"
    write_atomic(path, text + " " * reserve)


def write_json_inplace(path: Path, payload: dict[str, Any]) -> None:
    """Replace ``path``'s JSON; when the atomic write fails for want of space or of
    permission to create a file, overwrite the file in place if it is large enough (its
    reserved blanks): that needs neither new blocks nor a new directory entry."""
    try:
        write_json_atomic(path, payload)
        return
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EACCES, errno.EPERM):
            raise
    text = (json.dumps(payload, indent=2, sort_keys=True) + "\n").encode()
    with open(path, "r+b") as f:
        size = os.fstat(f.fileno()).st_size
        if len(text) > size:
            raise OSError(errno.ENOSPC, "no space left for run.json", str(path))
        f.write(text + b" " * (size - len(text)))
        f.flush()
        os.fsync(f.fileno())


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


def write_text_atomic(path: Path, text: str) -> None:
    """Write-then-rename for a text file; no temporary file is left behind on failure."""
    write_atomic(path, text)


class Callback:
    """Hooks called by the round loop; all optional."""

    def on_start(self, info: dict[str, Any]) -> None:
        """Before round one; ``info`` has config, config_yaml, hparams, partition_*, start_round."""

    def on_round(self, server_round: int, metrics: dict[str, float]) -> None:
        """After every round, with that round's scalars."""

    def on_figures(self, server_round: int, figures: dict[str, Any]) -> None:
        """After an evaluated round, with its pictures (``HxWx3`` uint8 arrays)."""

    def on_end(self, summary: dict[str, float], status: str) -> None:
        """Once at the end; ``status`` is complete, interrupted or failed."""


class StatusCallback(Callback):
    """``run.json``: says whether the run directory holds a complete run."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / STATUS_FILE
        self.info: dict[str, Any] = {}

    def on_start(self, info: dict[str, Any]) -> None:
        self.info = {"status": "running", "started": time.time(), "config": info["config"]}
        write_json_atomic(self.path, self.info, reserve=RESERVE_BYTES)

    def on_round(self, server_round: int, metrics: dict[str, float]) -> None:
        self.info["last_round"] = server_round

    def on_end(self, summary: dict[str, float], status: str) -> None:
        self.info.update({"status": status, "finished": time.time(), "final": summary})
        try:
            write_json_inplace(self.path, self.info)
        except OSError as e:  # the runner records the fault; the other callbacks still end
            log.error("could not write %s: %s", self.path, e)


class JsonlCallback(Callback):
    """One JSON object per round in ``metrics.jsonl`` (flushed every round)."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / METRICS_FILE
        self.file: Any = None

    def on_start(self, info: dict[str, Any]) -> None:
        start = int(info.get("start_round", 1))
        if start > 1 and self.path.exists():  # resume: drop rounds that will be redone
            kept = [ln for ln in self._rows() if json.loads(ln)["round"] < start]
            write_text_atomic(self.path, "".join(ln + "\n" for ln in kept))
        else:
            self.path.write_text("")
        self.file = open(self.path, "a")  # noqa: SIM115 - kept open for the whole run, closed in on_end

    def _rows(self) -> list[str]:
        """The file's lines; a torn last line (a write cut short) is dropped with a
        warning, a damaged line before it is an error (checked before a resume starts)."""
        lines = [ln for ln in self.path.read_text(errors="replace").splitlines() if ln.strip()]
        if lines:
            try:
                json.loads(lines[-1])
            except ValueError:
                log.warning(
                    "%s: dropped a torn last line (%d bytes): a write was cut short",
                    self.path,
                    len(lines[-1]),
                )
                lines.pop()
        return lines

    def on_round(self, server_round: int, metrics: dict[str, float]) -> None:
        clean = {k: (v if math.isfinite(v) else None) for k, v in metrics.items()}
        self.file.write(json.dumps({"round": server_round, **clean}, sort_keys=True) + "\n")
        self.file.flush()
        promote(self.path.parent)  # a run replacing another: swapped in once a round is recorded

    def on_end(self, summary: dict[str, float], status: str) -> None:
        if self.file is not None:
            try:
                self.file.close()
            except OSError as e:  # buffered bytes that found no space: the runner reports it
                log.error("could not close %s: %s", self.path, e)


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
        from fedsim.tracking.figures import client_accuracies

        accs = client_accuracies(metrics)
        if accs.size:  # the spread across clients, not only the mean
            self.writer.add_histogram("eval/acc_clients", accs, server_round, bins="auto")
        self.writer.flush()

    def on_figures(self, server_round: int, figures: dict[str, Any]) -> None:
        for key, image in figures.items():
            self.writer.add_image(key, np.asarray(image), server_round, dataformats="HWC")
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
        try:
            self.writer.flush()
            self.writer.close()
        except OSError as e:
            log.error("could not close the event file in %s: %s", self.run_dir, e)


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
