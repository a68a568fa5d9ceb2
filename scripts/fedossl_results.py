"""Reproduce docs/results/fedossl.md: FedoSSL vs ORCA-style FedAvg and ablations.

Runs every (scenario, method, seed) with ``fedsim run`` (skipping runs that are already
complete), then writes the mean ± std table of the final-round open-world accuracies.

    .venv/bin/python scripts/fedossl_results.py                 # all runs + table
    .venv/bin/python scripts/fedossl_results.py --report-only   # table from existing runs
    .venv/bin/python scripts/fedossl_results.py --only digits_open_world --jobs 1

Budgets are deliberately small (CPU only); they are listed in the written document.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
FEDSIM = str(Path(sys.executable).with_name("fedsim"))
METHODS = ("fedossl", "fedossl_no_ls", "fedossl_no_calib", "fedossl_orca")
SEEDS = (0, 1, 2)
KEYS = ("acc_seen", "acc_unseen", "acc_all", "acc_unseen_local", "acc_unseen_global")

COMMON = [
    "train.local_epochs=1",
    "train.batch_size=32",
    "train.lr=0.05",
    "train.momentum=0.9",
    "train.weight_decay=5e-4",
    "strategy.calib_start_round=3",
    "strategy.pseudo_start_round=4",
    "strategy.protocol=transductive",
    "runtime.threads=1",
    "progress=false",
]

#: scenario -> (rounds, overrides)
BUDGETS: dict[str, tuple[int, list[str]]] = {
    "digits_open_world": (
        20,
        ["backbone=cnn_digits", "backbone.width=0.25", "strategy.hflip=false", "eval_every=20"],
    ),
    "mnist_open_world": (
        10,
        [
            "backbone=cnn_digits",
            "backbone.width=0.25",
            "strategy.hflip=false",
            "scenario.dataset.sources.0.max_samples=2000",
            "eval_every=10",
        ],
    ),
    "cifar10_open_world": (
        6,
        [
            "backbone=resnet18",
            "backbone.width=0.125",
            "scenario.dataset.sources.0.max_samples=1000",
            "eval_every=6",
        ],
    ),
}


def run_dir(out: Path, scenario: str, method: str, seed: int) -> Path:
    return out / scenario / method / f"seed-{seed}"


def overrides(out: Path, scenario: str, method: str, seed: int) -> list[str]:
    rounds, extra = BUDGETS[scenario]
    return [
        f"scenario={scenario}",
        f"strategy={method}",
        f"seed={seed}",
        f"rounds={rounds}",
        f"output_dir={out}",
        f"experiment={scenario}",
        *COMMON,
        *extra,
    ]


def status(path: Path) -> str:
    info = path / "run.json"
    return str(json.loads(info.read_text()).get("status", "")) if info.exists() else ""


def complete(path: Path) -> bool:
    return status(path) == "complete"


def launch(out: Path, scenario: str, method: str, seed: int, rerun: bool = False) -> str:
    path = run_dir(out, scenario, method, seed)
    if complete(path):
        return f"skip {path} (complete)"
    if status(path) == "running" and not rerun:  # another invocation is on it
        return f"skip {path} (running; --rerun-running to restart it)"
    args = [FEDSIM, "run", *overrides(out, scenario, method, seed), "overwrite=true"]
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    t0 = time.perf_counter()
    proc = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True)
    took = time.perf_counter() - t0
    if proc.returncode != 0:
        return f"FAILED {path} ({took:.0f}s): {proc.stderr.strip().splitlines()[-1:]}"
    return f"done {path} ({took:.0f}s)"


def final_metrics(path: Path) -> dict[str, float] | None:
    lines = (path / "metrics.jsonl").read_text().splitlines() if complete(path) else []
    if not lines:
        return None
    last: dict[str, float] = {}
    for line in lines:
        last.update(json.loads(line))
    out = {k: float(last[f"eval/{k}"]) for k in KEYS if f"eval/{k}" in last}
    out["wall_s"] = float(last.get("time/elapsed_s", 0.0))
    return out


def fmt(vals: list[float]) -> str:
    if not vals:
        return "—"
    return f"{100 * np.mean(vals):.1f} ± {100 * np.std(vals):.1f}"


def table(out: Path, scenarios: list[str]) -> str:
    rows = []
    for scenario in scenarios:
        rounds, extra = BUDGETS[scenario]
        rows.append(f"\n### {scenario}\n")
        rows.append(f"Budget: {rounds} rounds; `{' '.join(extra)}`\n")
        rows.append(
            "| method | seeds | seen | unseen | all | unseen (local) | unseen (global) "
            "| wall s/run |"
        )
        rows.append("|---|---|---|---|---|---|---|---|")
        for method in METHODS:
            found = [final_metrics(run_dir(out, scenario, method, s)) for s in SEEDS]
            got = [m for m in found if m is not None]
            cells = [fmt([m[k] for m in got if k in m]) for k in KEYS]
            wall = f"{np.mean([m['wall_s'] for m in got]):.0f}" if got else "—"
            rows.append(f"| {method} | {len(got)} | " + " | ".join(cells) + f" | {wall} |")
    return "\n".join(rows) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/fedossl_results")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--only", nargs="*", default=list(BUDGETS))
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument("--rerun-running", action="store_true")
    parser.add_argument("--table", default="", help="write the table to this file")
    args = parser.parse_args()
    out = (REPO / args.out).resolve()
    if not args.report_only:
        todo = [(sc, m, s) for sc in args.only for s in SEEDS for m in METHODS]
        t0 = time.perf_counter()
        with ThreadPoolExecutor(args.jobs) as pool:
            for line in pool.map(lambda job: launch(out, *job, rerun=args.rerun_running), todo):
                print(line, flush=True)
        print(f"total wall {time.perf_counter() - t0:.0f}s", flush=True)
    text = table(out, args.only)
    print(text)
    if args.table:
        Path(args.table).write_text(text)


if __name__ == "__main__":
    main()
