"""Tables and ``masha_regimes.json`` from the log of ``scripts/masha_regimes.py``.

Writes ``docs/results/masha_regimes.json`` (one row per setting, issue 16's schema) and the
table between the ``<!-- regimes -->`` markers of ``docs/results/masha.md``.  Byte figures
are means over the seeds that reached the target; per device = over all devices / M.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from fedsim.config import ChannelSideConfig
from protocols.masha_math import predicted_up_ratio

D = 200  # z = (x, y) in R^(2 * 100)


def _mean(xs: list[float]) -> float | None:
    return float(sum(xs) / len(xs)) if xs else None


def rows_of(log: Path, target: float) -> list[dict[str, Any]]:
    recs = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    eg = {(r["devices"], r["similarity"]): r for r in recs if r["method"] == "eg"}
    out = []
    for r in recs:
        M = r["devices"]
        ok = [x for x in r["runs"] if x["reason"] == "target"]
        up = _mean([x["up_total"] / M for x in ok])
        tot = _mean([x["up_total"] + x["down_total"] for x in ok])
        ref = eg.get((M, r["similarity"]))
        ref_ok = [x for x in ref["runs"] if x["reason"] == "target"] if ref else []
        eg_up = _mean([x["up_total"] / M for x in ref_ok])
        eg_tot = _mean([x["up_total"] + x["down_total"] for x in ref_ok])
        runs = r["runs"]
        L, mu = _mean([x["L"] for x in runs]), _mean([x["mu"] for x in runs])
        rho = _mean([x["rho"] for x in runs])
        name = "identity" if r["compressor"] == "none" else r["compressor"]
        upc = ChannelSideConfig(name=name, ratio=r["ratio"])
        downc = ChannelSideConfig(name=name, ratio=r["ratio"]) if r["bidirectional"] else (
            ChannelSideConfig())  # fmt: skip
        pred = predicted_up_ratio(upc, downc, D, M, L or 1.0, mu or 1.0, rho or 1.0)
        out.append({
            "method": r["method"], "devices": M,
            "similarity": "inf" if math.isinf(r["similarity"]) else r["similarity"],
            "compressor": r["compressor"], "ratio": r["ratio"],
            "bidirectional": r["bidirectional"], "seeds": len(runs), "reached": len(ok),
            "up_bytes_per_device": up, "eg_up_bytes_per_device": eg_up,
            "total_bytes": tot, "eg_total_bytes": eg_tot, "predicted_up_ratio": pred,
            "measured_up_ratio": (up / eg_up) if up and eg_up else None,
            "rho": rho, "L_over_mu": (L / mu) if L and mu else None, "gamma_c": r["c"],
            "rounds": _mean([float(x["rounds"]) for x in ok]),
        })  # fmt: skip
    order = {"eg": 0, "masha1": 1, "masha2": 2}
    out.sort(key=lambda x: (x["devices"], float(x["similarity"]), order[x["method"]],
                            x["ratio"], x["bidirectional"]))  # fmt: skip
    return out


def _f(v: float | None, fmt: str) -> str:
    return "—" if v is None else format(v, fmt)


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| M | s | rho | method | k/d | down | c | reached | rounds | up KB/device "
        "| EG up KB/device | measured up ratio | predicted | total MB | EG total MB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r["method"] == "eg":
            continue
        lines.append(
            f"| {r['devices']} | {r['similarity']} | {_f(r['rho'], '.2f')} | {r['method']} | "
            f"{r['ratio']:.0%} | {'compressed' if r['bidirectional'] else 'sparse'} | "
            f"{r['gamma_c']:.3g} | {r['reached']}/{r['seeds']} | {_f(r['rounds'], '.0f')} | "
            f"{_f(r['up_bytes_per_device'] and r['up_bytes_per_device'] / 1e3, '.1f')} | "
            f"{_f(r['eg_up_bytes_per_device'] and r['eg_up_bytes_per_device'] / 1e3, '.1f')} | "
            f"{_f(r['measured_up_ratio'], '.2f')} | {r['predicted_up_ratio']:.2f} | "
            f"{_f(r['total_bytes'] and r['total_bytes'] / 1e6, '.2f')} | "
            f"{_f(r['eg_total_bytes'] and r['eg_total_bytes'] / 1e6, '.2f')} |"
        )
    return "\n".join(lines) + "\n"


def report(log: Path, out: Path, target: float = 1e-6) -> None:
    rows = rows_of(log, target)
    (out / "masha_regimes.json").write_text(json.dumps(rows, indent=1) + "\n")
    doc = out / "masha.md"
    text = doc.read_text() if doc.exists() else "<!-- regimes -->\n<!-- /regimes -->\n"
    a, b = "<!-- regimes -->", "<!-- /regimes -->"
    if a in text and b in text:
        head, rest = text.split(a, 1)
        _, tail = rest.split(b, 1)
        doc.write_text(f"{head}{a}\n{table(rows)}{b}{tail}")
    print(table(rows))
