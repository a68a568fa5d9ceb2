"""Model selection on a validation split, as the FedBN and FRAug protocols report it.

With ``scenario.evaluation.validation_fraction > 0`` every evaluated client reports its
accuracy on its selection split (``eval/val_acc_client/<id>``) beside its test accuracy
(``eval/acc_client/<id>``).  A client keeps the round whose *validation* accuracy is the
best so far (strictly better: ties keep the earlier round, as "save if better" does in the
official FRAug code, ``server_base.py``); ``eval/acc_at_best_val`` is the mean over clients
of the *test* accuracy at that round, never looked at when choosing.  The same rule on the
mean validation accuracy picks the global model's round: ``eval/global_acc_at_best_val``.

The selection is a pure function of the rows in ``metrics.jsonl``, so a resumed run
rebuilds it by replaying the rows it already wrote (:meth:`Selection.replay`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

_VAL = "eval/val_acc_client/"
_ACC = "eval/acc_client/"


class Selection:
    """Best-validation-round bookkeeping over the rounds of one run.

    Parameters
    ----------
    domain_of
        Client id -> domain name, for per-domain figures when there are several domains.
    """

    def __init__(self, domain_of: Mapping[int, str] | None = None) -> None:
        self.domain_of = dict(domain_of or {})
        self.best: dict[int, tuple[float, float, int]] = {}  # pid -> (val, test, round)
        self.global_best: tuple[float, float, int] | None = None

    def update(self, rnd: int, metrics: Mapping[str, float]) -> dict[str, float]:
        """Take round ``rnd``'s metrics; returns the selection metrics to log with them."""
        for key, val in metrics.items():
            if not key.startswith(_VAL):
                continue
            pid = int(key[len(_VAL) :])
            test = metrics.get(f"{_ACC}{pid}")
            if test is None:
                continue
            if pid not in self.best or val > self.best[pid][0]:
                self.best[pid] = (float(val), float(test), rnd)
        if "eval/val_acc" in metrics and "eval/global_acc" in metrics:
            val = float(metrics["eval/val_acc"])
            if self.global_best is None or val > self.global_best[0]:
                self.global_best = (val, float(metrics["eval/global_acc"]), rnd)
        return self.summary()

    def summary(self) -> dict[str, float]:
        out: dict[str, float] = {}
        if self.best:
            accs = np.array([b[1] for b in self.best.values()])
            out["eval/acc_at_best_val"] = float(accs.mean())
            out["eval/acc_at_best_val_min"] = float(accs.min())
            by_domain: dict[str, list[float]] = {}
            for pid, (_, test, _) in self.best.items():
                if pid in self.domain_of:
                    by_domain.setdefault(self.domain_of[pid], []).append(test)
            if len(by_domain) > 1:
                for name, vals in sorted(by_domain.items()):
                    out[f"eval/acc_at_best_val_domain/{name}"] = float(np.mean(vals))
        if self.global_best is not None:
            out["eval/global_acc_at_best_val"] = self.global_best[1]
            out["eval/global_best_val_round"] = float(self.global_best[2])
        return out

    @classmethod
    def replay(
        cls, rows: Iterable[Mapping[str, float]], domain_of: Mapping[int, str] | None = None
    ) -> Selection:
        """The selection after the rounds of ``rows`` (``metrics.jsonl``, round order)."""
        sel = cls(domain_of)
        for row in rows:
            sel.update(int(row["round"]), row)
        return sel


def read_metric_rows(run_dir: Path) -> list[dict[str, Any]]:
    """The rows of ``run_dir/metrics.jsonl`` that parse (a torn last line is skipped)."""
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and "round" in row:
            rows.append(row)
    return rows
