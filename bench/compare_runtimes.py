"""Overhead ratio and FLUTE job: fedsim (inline) vs a plain PyTorch loop vs Flower's Ray engine.

    python -m bench.compare_runtimes overhead --repeats 3   # digits CNN, 10 clients, 20 rounds
    python -m bench.compare_runtimes flute --repeats 3      # logreg on MNIST, 1000 clients, 100 rounds

Contenders: ``plain`` (bench.plain_loop), ``inline`` (fedsim, clients one by one), ``vec``
(fedsim with ``runtime.vectorize=auto``), ``ray`` (Flower's Ray engine).  Extra fedsim
overrides (e.g. ``runtime.threads=1``) apply to every contender.

Every measurement is a fresh process (``bench.run_one``); the script prints a markdown
table of medians and appends it to ``bench/results/<job>.md`` with the machine and command.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def measure(job: str, mode: str, extra: list[str]) -> dict:
    env = dict(os.environ, FLWR_TELEMETRY_ENABLED="0", FLWR_DISABLE_UPDATE_CHECK="1")
    out = subprocess.run(
        [sys.executable, "-m", "bench.run_one", job, mode, *extra],
        capture_output=True,
        text=True,
        env=env,
        cwd=HERE.parent,
        timeout=3600,
    )
    if out.returncode != 0:
        raise RuntimeError(f"{job}/{mode} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch

    return f"{os.cpu_count()} cores ({cpu}), Python {platform.python_version()}, torch {torch.__version__}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("job", choices=["overhead", "flute"])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--modes", default="plain,inline,vec,ray")
    ap.add_argument("extra", nargs="*", help="extra fedsim overrides for every contender")
    args = ap.parse_intermixed_args()
    modes = args.modes.split(",")
    results: dict[str, list[dict]] = {m: [] for m in modes}
    for rep in range(args.repeats):
        for mode in modes:  # interleaved, so drift hits every contender alike
            r = measure(args.job, mode, args.extra)
            results[mode].append(r)
            print(
                f"[{rep + 1}/{args.repeats}] {mode}: loop {r['loop_s']:.2f} s, wall {r['wall_s']:.2f} s",
                file=sys.stderr,
            )
    med = {
        m: {k: statistics.median(r[k] for r in rs) for k in ("loop_s", "wall_s")}
        for m, rs in results.items()
    }
    acc = {
        m: rs[0].get("final_acc") if rs[0].get("final_acc") is not None else rs[0].get("global_acc")
        for m, rs in results.items()
    }
    base = med.get("plain")
    lines = [
        f"## {args.job} — {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        "",
        f"Machine: {machine()}.  Command: `python -m bench.compare_runtimes {args.job} --repeats {args.repeats}"
        + (f" {' '.join(args.extra)}" if args.extra else "")
        + "`.",
        f"Median of {args.repeats} runs, each a fresh process. `loop` = the round loop (training, aggregation,"
        " final evaluation); `wall` = the whole process (imports, data, engine start-up, loop).",
        "",
        "| contender | loop (s) | wall (s) | loop / plain | wall / plain | final accuracy |",
        "|---|---|---|---|---|---|",
    ]
    names = {
        "plain": "plain PyTorch loop",
        "inline": "fedsim runtime=inline",
        "vec": "fedsim runtime=inline runtime.vectorize=auto",
        "ray": "Flower Ray engine (fedsim runtime=ray)",
    }
    for m in modes:
        ratio_l = med[m]["loop_s"] / base["loop_s"] if base else float("nan")
        ratio_w = med[m]["wall_s"] / base["wall_s"] if base else float("nan")
        a = acc[m]
        lines.append(
            f"| {names.get(m, m)} | {med[m]['loop_s']:.2f} | {med[m]['wall_s']:.2f} | {ratio_l:.2f} | {ratio_w:.2f} | "
            + (f"{a:.4f}" if a is not None else "—")
            + " |"
        )
    text = "\n".join(lines) + "\n"
    print(text)
    out = HERE / "results" / f"{args.job}.md"
    out.parent.mkdir(exist_ok=True)
    with open(out, "a") as f:
        f.write(text + "\n")


if __name__ == "__main__":
    main()
