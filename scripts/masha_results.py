"""MASHA1/MASHA2 vs extragradient on the single shipped bilinear instance (M = 10, independent
A_m) through fedsim's round loop, and the adversarial-training min-max game on digits.  The
regime sweep of docs/results/masha.md (M, similarity, k/d, 3 seeds) is
``scripts/masha_regimes.py``; this script is its single-instance predecessor plus the vision
part.

One command (from the repository root; about 40 CPU-minutes, most of it the 1% rows):

    .venv/bin/python scripts/masha_results.py --jobs 4   # everything
    .venv/bin/python scripts/masha_results.py --part bilinear|vision

Every run goes through fedsim's own round loop (``fedsim.engine.server.run_experiment`` on the
inline runtime: real Flower messages, bytes measured by ``fedsim.algorithms.channels.wire_nbytes``)
and writes ``metrics.jsonl`` and TensorBoard event files under ``--runs``.  A bilinear
run stops when ``masha/rel_dist <= --target`` (the table's threshold), when it diverges
(``rel_dist > 10``), or at its round budget.

Step sizes: for each (method, compressor, direction) the script tries ``strategy.gamma_c``
(the constant in the theory step size, see ``strategies.masha``) from a descending grid
and keeps the first value that reaches the target within the budget; it reports the
value used.  Writes the PNG curves and ``masha_table.md`` / ``masha_vision.md`` to
``--out``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from fedsim.engine.app import CONFIG_KEY, make_client_app  # noqa: E402  (after sys.path)
from fedsim.engine.conf import compose, to_json  # noqa: E402
from fedsim.engine.runtime.inline import InlineGrid  # noqa: E402
from fedsim.engine.server import run_experiment  # noqa: E402
from fedsim.tracking.callbacks import Callback, JsonlCallback, TensorBoardCallback  # noqa: E402

RATIOS = (0.01, 0.05, 0.10, 0.25)
BUDGET = {0.01: 7200, 0.05: 3600, 0.10: 2400, 0.25: 1800}  # rounds per replayed run
NAIVE_GRID = (1.0, 0.3, 0.1, 0.03)  # naive EG: EG's step and smaller ones
GRID = (32.0, 22.0, 16.0, 11.0, 8.0, 5.6, 4.0, 2.8, 2.0, 1.4, 1.0, 0.7, 0.5, 0.35, 0.25)


class Stop(Exception):
    """Raised by :class:`Watch` to end a fedsim run early (target reached or diverged)."""


class Watch(Callback):
    """Collects the rows of a fedsim run; stops at the target or on divergence."""

    def __init__(self, target: float) -> None:
        self.rows: list[dict[str, float]] = []
        self.target = target
        self.reason = "budget"

    def on_round(self, server_round: int, metrics: dict[str, float]) -> None:
        self.rows.append({"round": float(server_round), **metrics})
        rd = metrics.get("masha/rel_dist")
        if rd is None:
            return
        if not math.isfinite(rd) or rd > 1e3:
            self.reason = "diverged"
            raise Stop
        if rd <= self.target:
            self.reason = "target"
            raise Stop


@dataclass
class Result:
    label: str
    overrides: list[str]
    rows: list[dict[str, float]]
    reason: str
    gamma_c: float
    gamma: float = math.nan
    seconds: float = 0.0
    tried: list[str] = field(default_factory=list)

    def first(self, key: str, target: float) -> dict[str, float] | None:
        for r in self.rows:
            if r.get(key, math.inf) <= target:
                return r
        return None

    def total_mb(self, target: float) -> float:
        hit = self.first("masha/rel_dist", target)
        if hit is None:
            return math.inf
        return (hit["comm/bytes_up_total"] + hit["comm/bytes_down_total"]) / 1e6


def run_one(overrides: list[str], run_dir: Path, target: float) -> tuple[list[dict], str, float]:
    """One run through fedsim's round loop (inline runtime, real Flower messages)."""
    cfg = compose(["progress=false", f"output_dir={run_dir.parent}", *overrides])
    grid = InlineGrid(make_client_app(), cfg.scenario.num_clients, {CONFIG_KEY: to_json(cfg)})
    run_dir.mkdir(parents=True, exist_ok=True)
    watch = Watch(target)
    t0 = time.perf_counter()
    callbacks = [JsonlCallback(run_dir), TensorBoardCallback(run_dir), watch]
    with contextlib.suppress(Stop):
        run_experiment(grid, cfg, run_dir, callbacks=callbacks)
    return watch.rows, watch.reason, time.perf_counter() - t0


def replayed(overrides: list[str], c: float, rounds: int, target: float) -> Result:
    """One replayed run (``protocols.masha_math.replay``) with ``strategy.gamma_c = c``."""
    from fedsim.algorithms.channels import make_channel
    from protocols.masha import VARIANTS
    from protocols.masha_math import default_tau, derived_gamma, replay
    from protocols.masha_task import server_problem

    cfg = compose(overrides)
    variant = VARIANTS[cfg.strategy.name]
    problem = server_problem(cfg)
    tau = 0.0 if variant == "naive" or cfg.strategy.name == "eg" else default_tau(cfg)
    L, Lm = problem.lipschitz()  # type: ignore[misc]
    gamma = derived_gamma(variant, cfg, tau, L, Lm, c)
    t0 = time.perf_counter()
    rows = replay(
        problem, variant, make_channel(cfg.channel.up), make_channel(cfg.channel.down),
        gamma, tau, rounds, cfg.seed, stop=target,
    )  # fmt: skip
    rd = rows[-1]["masha/rel_dist"]
    reason = "target" if rd <= target else ("diverged" if not rd < 1e3 else "budget")
    return Result("", overrides, rows, reason, c, gamma, time.perf_counter() - t0)


def tuned(label: str, overrides: list[str], rounds: int, target: float, grid=GRID) -> Result:  # type: ignore[no-untyped-def]
    """The largest grid value of ``gamma_c`` that reaches ``target`` within the budget
    (descending grid; larger steps diverged or ran out of rounds)."""
    best: Result | None = None
    tried: list[str] = []
    for c in grid:
        res = replayed(overrides, c, rounds, target)
        rd = res.rows[-1]["masha/rel_dist"]
        tried.append(f"c={c:g}: {res.reason}, {len(res.rows)} rounds, rel_dist {rd:.1e}")
        if best is None or res.total_mb(target) < best.total_mb(target):
            best = res
        if res.reason == "target":
            break  # the largest step that reaches the target; smaller ones need more rounds
        if (
            best.reason != "target"
            and res.reason == "budget"
            and rd < best.rows[-1]["masha/rel_dist"]
        ):
            best = res
    assert best is not None
    best.label, best.tried = label, tried
    print(f"  {label}: c={best.gamma_c:g} {best.reason} {best.total_mb(target):.3f} MB", flush=True)
    return best


def _tuned_job(job: tuple[str, list[str], int, float, tuple[float, ...]]) -> Result:
    return tuned(*job)


def bilinear(args: argparse.Namespace) -> tuple[list[Result], list[dict[str, Any]]]:
    base = ["scenario=masha_bilinear", f"seed={args.seed}"]
    target = args.target
    jobs: list[tuple[str, list[str], int, float, tuple[float, ...]]] = [
        ("eg", [*base, "strategy=eg"], 4000, target, GRID)
    ]
    for comp in ("randk", "topk"):
        ov = [*base, "strategy=naive_eg", f"channel.up={comp}", "channel.up.ratio=0.05"]
        jobs.append((f"naive_eg/{comp}-0.05", ov, 3000, target, NAIVE_GRID))
    ratios = [float(r) for r in args.ratios.split(",")]
    for family, comp in (("masha1", "randk"), ("masha2", "topk")):
        for ratio in ratios:
            for direction in ("uni", "bi"):
                ov = [
                    *base,
                    f"strategy={family}",
                    f"channel.up={comp}",
                    f"channel.up.ratio={ratio}",
                ]
                if direction == "bi":
                    ov += [f"channel.down={comp}", f"channel.down.ratio={ratio}"]
                budget = int(BUDGET.get(ratio, 6000) * args.budget_scale)
                jobs.append((f"{family}/{comp}-{ratio:g}-{direction}", ov, budget, target, GRID))
    if args.jobs > 1:
        import multiprocessing

        # slowest first, so that the pool's workers finish together
        order = sorted(range(len(jobs)), key=lambda i: -jobs[i][2])
        done: dict[str, Result] = {}
        with multiprocessing.get_context("spawn").Pool(args.jobs) as pool:
            for res in pool.imap_unordered(_tuned_job, [jobs[i] for i in order]):
                done[res.label] = res
                partial = [done[j[0]] for j in jobs if j[0] in done]
                Path(args.out, "masha_table.md").write_text(table(partial, target))
        results = [done[j[0]] for j in jobs]
    else:
        results = [_tuned_job(j) for j in jobs]
    Path(args.out, "masha_table.md").write_text(table(results, target))
    plots(results, Path(args.out))
    _dump(args, results, [])
    # the same settings through fedsim itself: the replay must give the same numbers
    checks: list[dict[str, Any]] = []
    runs = Path(args.runs) / "bilinear"
    by_label = {r.label: r for r in results}
    for label in args.fedsim_check.split(","):
        res = by_label.get(label)
        if res is None:
            continue
        n = len(res.rows)
        ov = [*res.overrides, f"rounds={n}", f"strategy.gamma_c={res.gamma_c}"]
        rows, _reason, secs = run_one(ov, runs / label, -1.0)
        a, b = rows[-1], res.rows[-1]
        checks.append(
            {
                "label": label,
                "rounds": n,
                "fedsim_rel_dist": a.get("masha/rel_dist"),
                "replay_rel_dist": b["masha/rel_dist"],
                "fedsim_bytes_up": a["comm/bytes_up_total"],
                "replay_bytes_up": b["comm/bytes_up_total"],
                "fedsim_bytes_down": a["comm/bytes_down_total"],
                "replay_bytes_down": b["comm/bytes_down_total"],
                "fedsim_seconds": secs,
                "replay_seconds": res.seconds,
            }
        )
        print(f"  fedsim check {label}: {checks[-1]}", flush=True)
    return results, checks


def _dump(args: argparse.Namespace, res: list[Result], checks: list[dict[str, Any]]) -> None:
    summary = {
        "args": vars(args),
        "bilinear": [
            {"label": r.label, "gamma_c": r.gamma_c, "gamma": r.gamma, "reason": r.reason,
             "tried": r.tried, "seconds": r.seconds, "overrides": r.overrides,
             "at_target": r.first("masha/rel_dist", args.target), "last": r.rows[-1]}
            for r in res
        ],
        "fedsim_checks": checks,
    }  # fmt: skip
    Path(args.out, "masha_summary_bilinear.json").write_text(
        json.dumps(summary, indent=1, default=str)
    )


def table(results: list[Result], target: float) -> str:
    lines = [
        "| method | uplink compressor | downlink | gamma_c | gamma | rounds | iterations "
        "| up MB | down MB | total MB | outcome |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for res in results:
        hit = res.first("masha/rel_dist", target)
        row = hit or res.rows[-1]
        family, _, rest = res.label.partition("/")
        parts = rest.split("-") if rest else []
        comp = f"{parts[0]} {float(parts[1]):.0%}" if len(parts) > 1 else "none (dense)"
        if len(parts) > 2 and parts[2] == "bi":
            down = f"{parts[0]} {float(parts[1]):.0%}"
        else:
            down = "dense"
        up = row["comm/bytes_up_total"] / 1e6
        dn = row["comm/bytes_down_total"] / 1e6
        outcome = "reached" if hit else f"not reached: {row['masha/rel_dist']:.1e} ({res.reason})"
        lines.append(
            f"| {family} | {comp} | {down} | {res.gamma_c:g} | {res.gamma:.4g} | "
            f"{int(row['round'])} | {int(row['masha/iterations'])} | {up:.3f} | {dn:.3f} | "
            f"{up + dn:.3f} | {outcome} |"
        )
    return "\n".join(lines) + "\n"


def plots(results: list[Result], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for direction in ("uni", "bi"):
        fig, axes = plt.subplots(1, 3, figsize=(18, 5))
        for res in results:
            if res.label.startswith("masha") and not res.label.endswith(direction):
                continue
            rows = res.rows
            rd = [max(r["masha/rel_dist"], 1e-16) for r in rows]
            it = [r["masha/iterations"] for r in rows]
            up = [r["comm/bytes_up_total"] / 1e6 for r in rows]
            tot = [(r["comm/bytes_up_total"] + r["comm/bytes_down_total"]) / 1e6 for r in rows]
            style = "--" if res.label.startswith("masha2") else ":" if "naive" in res.label else "-"
            for ax, x in zip(axes, (it, up, tot), strict=True):
                ax.semilogy(x, rd, style, label=f"{res.label} (c={res.gamma_c:g})")
        xlabels = ("iterations", "uplink MB, all devices", "uplink + downlink MB, all devices")
        for ax, xl in zip(axes, xlabels, strict=True):
            ax.set_xlabel(xl)
            ax.set_ylabel("||z - z*||^2 / ||z0 - z*||^2")
            ax.set_ylim(1e-7, 1e2)
            ax.grid(True, which="both", alpha=0.3)
        axes[1].set_xscale("log")
        axes[2].set_xscale("log")
        axes[0].set_xscale("log")
        axes[0].legend(fontsize=6)
        what = "uplink-only compression" if direction == "uni" else "bidirectional compression"
        fig.suptitle(f"bilinear saddle point (d = 100 + 100, M = 10, lam = 1): {what}")
        fig.tight_layout()
        fig.savefig(out / f"masha_bilinear_{direction}.png", dpi=100)
        plt.close(fig)


# --------------------------------------------------------------------------- vision


def vision(args: argparse.Namespace) -> list[Result]:
    runs = Path(args.runs) / "vision"
    base = [
        "scenario=digits_iid",
        "backbone=mlp",
        "backbone.width=0.5",
        "runtime.threads=1",
        f"seed={args.seed}",
        f"rounds={args.vision_rounds}",
        "strategy.batch_size=32",
        "strategy.epsilon=0.3",
        f"eval_every={args.vision_eval_every}",
    ]
    gamma = args.vision_gamma
    configs = {
        "eg (dense)": ["strategy=eg", f"strategy.gamma={gamma}"],
        "masha1 randk 10%": [
            "strategy=masha1",
            "channel.up=randk",
            "channel.up.ratio=0.1",
            f"strategy.gamma={gamma}",
        ],
        "masha2 topk 10%": [
            "strategy=masha2",
            "channel.up=topk",
            "channel.up.ratio=0.1",
            f"strategy.gamma={gamma}",
        ],
        "masha1 randk 10% both ways": [
            "strategy=masha1",
            "channel.up=randk",
            "channel.up.ratio=0.1",
            "channel.down=randk",
            "channel.down.ratio=0.1",
            f"strategy.gamma={gamma}",
        ],
    }
    results = []
    for label, ov in configs.items():
        print(f"vision: {label}", flush=True)
        rows, reason, secs = run_one([*base, *ov], runs / label.replace(" ", "_"), -1.0)
        results.append(Result(label, [*base, *ov], rows, reason, math.nan, secs))
    return results


def vision_outputs(results: list[Result], out: Path) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    lines = [
        "| method | rounds | up MB | down MB | clean acc "
        "| adv acc (game's delta) | adv acc (refit delta) |",
        "|---|---|---|---|---|---|---|",
    ]
    for res in results:
        rows = [r for r in res.rows if "eval/clean_acc" in r]
        if not rows:
            continue
        mb = [(r["comm/bytes_up_total"] + r["comm/bytes_down_total"]) / 1e6 for r in rows]
        axes[0].plot(mb, [r["eval/clean_acc"] for r in rows], label=res.label)
        axes[1].plot(mb, [r["eval/adv_acc_refit"] for r in rows], label=res.label)
        last = rows[-1]
        lines.append(
            f"| {res.label} | {int(last['round'])} | {last['comm/bytes_up_total'] / 1e6:.2f} | "
            f"{last['comm/bytes_down_total'] / 1e6:.2f} | {last['eval/clean_acc']:.3f} | "
            f"{last['eval/adv_acc']:.3f} | {last['eval/adv_acc_refit']:.3f} |"
        )
    for ax, yl in zip(
        axes, ("clean accuracy", "accuracy under refit universal delta"), strict=True
    ):
        ax.set_xlabel("uplink + downlink MB (all devices)")
        ax.set_ylabel(yl)
        ax.set_xscale("log")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("adversarial training (shared L-inf perturbation), digits, MLP, 10 clients")
    fig.tight_layout()
    fig.savefig(out / "masha_vision.png", dpi=110)
    plt.close(fig)
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", choices=("all", "bilinear", "vision"), default="all")
    ap.add_argument("--out", default=str(REPO / "docs" / "results"))
    ap.add_argument("--runs", default=str(REPO / "runs" / "masha_results"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--target", type=float, default=1e-6)
    ap.add_argument("--ratios", default=",".join(f"{r:g}" for r in RATIOS))
    ap.add_argument("--budget-scale", type=float, default=1.0)
    ap.add_argument(
        "--fedsim-check",
        default="eg,masha1/randk-0.05-uni,masha2/topk-0.05-uni",
        help="labels re-run through fedsim itself to check the replay",
    )
    ap.add_argument("--jobs", type=int, default=1, help="parallel processes of the sweep")
    ap.add_argument("--vision-rounds", type=int, default=150)
    ap.add_argument("--vision-eval-every", type=int, default=10)
    ap.add_argument("--vision-gamma", type=float, default=0.05)
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {"args": vars(args)}
    if args.part in ("all", "bilinear"):
        res, checks = bilinear(args)
        _dump(args, res, checks)
        print(table(res, args.target))
    if args.part in ("all", "vision"):
        vres = vision(args)
        text = vision_outputs(vres, out)
        (out / "masha_vision.md").write_text(text)
        summary["vision"] = [
            {
                "label": r.label,
                "seconds": r.seconds,
                "overrides": r.overrides,
                "last": r.rows[-1] if r.rows else {},
            }
            for r in vres
        ]
        print(text)
    if "vision" in summary:
        (out / "masha_summary_vision.json").write_text(json.dumps(summary, indent=1, default=str))


if __name__ == "__main__":
    main()
