"""Communication as TensorBoard's x-axis: metrics against cumulative kilobytes sent."""

from __future__ import annotations

import math
from typing import Any

from fedsim.tracking.callbacks import Callback

BYTES_AXIS_DIR = "by_bytes"  # TensorBoard run (sub-directory) whose step is cumulative kB
BYTES_AXIS_METRICS = (
    "eval/clean_acc",
    "eval/adv_acc",
    "eval/adv_acc_refit",
    "eval/acc",
    "eval/global_acc",
    "train/loss",
)


class BytesAxisCallback(Callback):
    """TensorBoard scalars against communication instead of rounds.

    Writes the metrics of :data:`BYTES_AXIS_METRICS` and ``extra`` (the task's summary
    metrics, e.g. a distance to the solution) present in a round to the event file of
    ``<run_dir>/by_bytes`` with step = cumulative uplink + downlink kilobytes (1 kB = 1000
    bytes), so TensorBoard's runs ``.../by_bytes`` compare methods per byte sent.
    """

    def __init__(self, run_dir: Any, extra: tuple[str, ...] = ()) -> None:
        self.run_dir = run_dir
        self.keys = (*extra, *BYTES_AXIS_METRICS)
        self.writer: Any = None

    def on_start(self, info: dict[str, Any]) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(self.run_dir / BYTES_AXIS_DIR))

    def on_round(self, server_round: int, metrics: dict[str, float]) -> None:
        if self.writer is None:
            return
        total = metrics.get("comm/bytes_up_total", 0.0) + metrics.get("comm/bytes_down_total", 0.0)
        step = int(total // 1000)
        for key in self.keys:
            value = metrics.get(key)
            if value is not None and math.isfinite(value):
                self.writer.add_scalar(key, value, step)

    def on_end(self, summary: dict[str, float], status: str) -> None:
        if self.writer is not None:
            self.writer.flush()
            self.writer.close()
