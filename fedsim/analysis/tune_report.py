"""The written form of a tuning: ``tune.md``, one row per trial and the chosen settings.

Apart from :mod:`fedsim.analysis.tune`, which runs the studies and the final runs, because
it only formats the ``tune.json`` record: it can be rebuilt from that file and tested on a
hand-written record without Optuna or a single run.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from fedsim.analysis.tune_space import tag_of


def _val_name(metric: str) -> str:
    group, _, name = metric.partition("/")
    return f"{group}/val_{name}" if group == "eval" else metric


def tune_markdown(report: dict[str, Any]) -> str:
    m = report["metric"]
    pruner = report.get("pruner", "none")
    pruned = (
        f"; pruner `{pruner}` (no trial pruned in its first {report.get('pruner_warmup')} "
        f"rounds nor before {report.get('pruner_startup')} trials finished)"
        if pruner != "none"
        else ""
    )
    lines = [
        f"# Tuning of `{Path(report['experiment']).name}`",
        "",
        f"{report['trials']} trials per strategy (sampler `{report.get('sampler', 'random')}`, "
        f"search seed {report['search_seed']}{pruned}), scored by the final `{m}` on the "
        f"clients' validation splits (`{_val_name(m)}` where the runs report it; "
        f"{report['validation_fraction']:g} of each client's "
        f"training part; tuning seeds {report['tune_seeds']}); the best setting of each "
        f"strategy was rerun on the fresh seeds {report['seeds']}, whose holdout and test "
        f"set the tuning never saw. Compare them with `fedsim compare {report['experiment']}`."
        f" Studies: `{report.get('storage', '')}`. Trial-rounds run: "
        f"{report.get('trial_rounds', '?')}.",
        "",
        f"| strategy | trial | setting | validation `{m}` | rounds run | state | chosen |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, entry in report["strategies"].items():
        for i, t in enumerate(entry["trials"]):
            chosen = "**yes**" if t["setting"] == entry["best"] else ""
            state = t.get("state", "complete")
            if state == "pruned":
                state = f"pruned at round {t.get('pruned_at')}"
            value = "—" if not math.isfinite(t["validation"]) else f"{t['validation']:.4f}"
            lines.append(
                f"| {name} | {t.get('number', i)} | {tag_of(t['setting']) or '—'} | {value} "
                f"| {t.get('rounds', '')} | {state} | {chosen} |"
            )
    return "\n".join(lines) + "\n"
