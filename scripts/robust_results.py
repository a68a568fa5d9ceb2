"""Byzantine robustness on digits_iid: FedAvg vs Flower's robust aggregators.

30 % of the 10 clients (a fixed set per seed) send sign-flipped updates
(``scenario.faults.attack=sign_flip``, ``attack_scale=4``: ``received - 4 * update``);
each strategy runs 10 rounds with its defaults, as in the README's command
``fedsim run strategy=krum scenario.faults.byzantine=0.3 scenario.faults.attack=sign_flip
rounds=10``.  FedAvg without attackers is the reference.  Resumable: complete runs are
skipped.  Writes ``docs/results/robust.md``.

    python scripts/robust_results.py [--seeds 0 1 2] [--out runs/robust]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# (row label, strategy, extra overrides).  Flower's Bulyan needs n >= 4 f + 3, so with
# 10 clients it can be told of at most f = 1 attacker; with its default f = 0 it keeps
# every update and is a coordinate-wise trimmed mean of nothing, i.e. FedAvg.
STRATEGIES: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("fedavg", "fedavg", ()),
    ("krum", "krum", ()),
    ("bulyan", "bulyan", ()),
    ("bulyan, num_malicious_nodes=1", "bulyan", ("strategy.num_malicious_nodes=1",)),
    ("fedmedian", "fedmedian", ()),
    ("fedtrimmedavg", "fedtrimmedavg", ()),
)
ATTACK = ["scenario.faults.byzantine=0.3", "scenario.faults.attack=sign_flip"]


def run(
    strategy: str, seed: int, attacked: bool, out: Path, extra: tuple[str, ...] = ()
) -> dict[str, float]:
    experiment = ("attacked" if attacked else "clean") + "".join(
        "-" + o.split(".")[-1].replace("=", "") for o in extra
    )
    run_dir = out / experiment / strategy / f"seed-{seed}"
    status = run_dir / "run.json"
    if not (status.exists() and json.loads(status.read_text()).get("status") == "complete"):
        cmd = [str(Path(sys.executable).parent / "fedsim"), "run", f"strategy={strategy}",
               "rounds=10", f"seed={seed}", f"experiment={experiment}", f"output_dir={out}",
               "runtime.threads=1", "progress=false", "overwrite=true",
               *(ATTACK if attacked else []), *extra]  # fmt: skip
        subprocess.run(cmd, check=True, cwd=ROOT)
    return json.loads(status.read_text())["final"]


def mean_std(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.4f} ± {sd:.4f}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "robust")
    args = parser.parse_args()
    rows = []
    clean = [run("fedavg", s, False, args.out) for s in args.seeds]
    rows.append(("fedavg, no attacker", clean))
    for label, strategy, extra in STRATEGIES:
        rows.append((label, [run(strategy, s, True, args.out, extra) for s in args.seeds]))
    lines = [
        "# Byzantine robustness: 30 % sign-flipping clients on digits_iid",
        "",
        "Produced by `python scripts/robust_results.py` (seeds "
        + " ".join(map(str, args.seeds))
        + "); each cell is mean ± std (ddof=1) over seeds after 10 rounds, 10 clients, "
        "every client every round, FedAvg's digits CNN, default training settings.  "
        "Attack: 3 of 10 clients (a fixed set per seed) send `received - 4 * update` "
        "(`scenario.faults.attack=sign_flip`, `attack_scale=4`).  Flower's strategies run "
        "with Flower's defaults (`num_malicious_nodes=0` for Krum and Bulyan, `beta=0.2` "
        "for FedTrimmedAvg) and Bulyan also told of one attacker, the most its n >= 4 f + 3 "
        "allows with 10 clients.  Machine: 2-core CPU, shared with other jobs.",
        "",
        "| strategy | eval/acc | eval/global_acc |",
        "|---|---|---|",
    ]
    for name, finals in rows:
        lines.append(
            f"| {name} | {mean_std([f['eval/acc'] for f in finals])} | "
            f"{mean_std([f['eval/global_acc'] for f in finals])} |"
        )
    (ROOT / "docs" / "results" / "robust.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
