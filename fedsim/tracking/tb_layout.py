"""What TensorBoard shows first: the HPARAMS columns and the CUSTOM SCALARS layout.

TensorBoard's HPARAMS dashboard (2.x) displays only five hyper-parameter columns by
default: its backend sorts the experiment's ``HParamInfo`` entries by ``differs`` (true
first) and then by name, and the page ticks the first five.  Without ``differs`` the
columns are alphabetical (``backbone``, ``lr``, ``rounds``, ``scenario``, ``seed``), so
``strategy`` — the one column every comparison needs — is hidden.  :func:`mark_shown`
sets ``differs`` on ``strategy`` and the swept keys of a multirun so that they are the
visible columns; the other hyper-parameters stay one click away.

The SCALARS tab orders tag groups alphabetically (``comm/`` before ``eval/``) and has no
setting for it short of renaming the tags, which would break every reader of the metric
names; the CUSTOM SCALARS layout (:func:`custom_scalars_layout`) lists ``eval`` first.
"""

from __future__ import annotations

import re
from typing import Any

#: Metrics of TensorBoard's HPARAMS table (final values, ``hparams/<metric>``).
HPARAM_METRICS = ["eval/acc", "eval/global_acc", "train/loss"]
#: Columns of TensorBoard's HPARAMS table besides HPARAM_METRICS (from the run summary).
HPARAM_EXTRA = ["comm/bytes_up_total", "comm/bytes_down_total", "wall_s"]
#: One CUSTOM SCALARS chart per metric, grouped by category, in this order (eval first).
LAYOUT_METRICS = {
    "eval": [
        "eval/acc",
        "eval/acc_p10",
        "eval/acc_min",
        "eval/acc_at_best_val",
        "eval/global_acc",
        "eval/loss",
        "eval/global_loss",
    ],
    "train": ["train/loss", "train/lr"],
    "comm": ["comm/bytes_up_total", "comm/bytes_down_total", "comm/bytes_up", "comm/bytes_down"],
    "time": ["time/elapsed_s", "time/round_s"],
}
#: How many hyper-parameter columns the HPARAMS dashboard ticks by default.
DASHBOARD_COLUMNS = 5


def custom_scalars_layout() -> dict[str, dict[str, list[Any]]]:
    """TensorBoard's CUSTOM SCALARS layout: one chart per metric, every run on it.

    A chart's regex matches one tag exactly, so the chart draws that tag for every run
    in the run selector: the strategies (and seeds) of a sweep on the same axes.
    Per-client accuracies share one chart per run group.  Categories keep the order of
    :data:`LAYOUT_METRICS` (TensorBoard merges the runs' layouts in first-seen order).
    """
    layout: dict[str, dict[str, list[Any]]] = {
        f"fedsim {group}": {m: ["Multiline", [f"^{re.escape(m)}$"]] for m in metrics}
        for group, metrics in LAYOUT_METRICS.items()
    }
    layout["fedsim clients"] = {"eval/acc_client/*": ["Multiline", ["^eval/acc_client/"]]}
    return layout


def tag_hparams(tag: str) -> dict[str, float | str]:
    """The swept keys of a multirun (``cfg.tag``: ``key=value,key=value``) as hparams.

    Numbers become floats so that TensorBoard's HPARAMS tab can sort and plot them.
    """
    out: dict[str, float | str] = {}
    key = ""
    for part in tag.split(",") if tag else []:
        if "=" not in part and key:  # a comma inside a value: glue it back
            out[key] = f"{out[key]},{part}"
            continue
        key, _, value = part.partition("=")
        try:
            out[key] = float(value)
        except ValueError:
            out[key] = value
    return out


def shown_hparams(hparams: dict[str, Any], tag: str) -> list[str]:
    """The HPARAMS columns to show: ``strategy``, then the swept keys (sorted), at most
    :data:`DASHBOARD_COLUMNS` names, only names present in ``hparams``."""
    swept = sorted(k for k in tag_hparams(tag) if k != "strategy")
    wanted = ["strategy", *swept]
    return [k for k in wanted if k in hparams][:DASHBOARD_COLUMNS]


def mark_shown(experiment: Any, shown: list[str]) -> Any:
    """Set ``differs`` on the ``HParamInfo`` entries named in ``shown`` (others: false).

    ``experiment`` is the ``Summary`` proto of the hparams experiment (as returned first
    by ``torch.utils.tensorboard.summary.hparams``); it is modified in place and returned.
    """
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

    value = experiment.value[0]
    data = HParamsPluginData()
    data.ParseFromString(value.metadata.plugin_data.content)
    for info in data.experiment.hparam_infos:
        info.differs = info.name in shown
    value.metadata.plugin_data.content = data.SerializeToString()
    return experiment
