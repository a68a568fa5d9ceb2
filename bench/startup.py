"""Start-up: ``fedsim run --help`` and a one-round default run vs ``python -c "import torch"``.

    python -m bench.startup --repeats 5

Contenders, each a fresh process, interleaved round-robin so that a change in the
machine's load hits all of them alike:

* ``import torch``: ``python -c "import torch"``, the floor of any PyTorch program;
* ``fedsim run --help``: Hydra's help (every config group listed);
* ``fedsim run rounds=1``: the default experiment (FedAvg, embedded digits, 10 clients),
  one round, into a temporary output directory; TensorBoard events, partition heat-map
  and checkpoint included.

Targets (issue: fast start): ``--help`` <= 1.0x and the one-round run <= 2.5x the
``import torch`` time.  Prints a markdown table of medians and appends it to
``bench/results/startup.md`` with the machine and the command.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.compare_runtimes import machine

HERE = Path(__file__).resolve().parent
FEDSIM = str(Path(sys.executable).parent / "fedsim")


def contenders(out: str) -> dict[str, list[str]]:
    return {
        'python -c "import torch"': [sys.executable, "-c", "import torch"],
        "fedsim run --help": [FEDSIM, "run", "--help"],
        "fedsim run rounds=1": [
            FEDSIM,
            "run",
            "rounds=1",
            f"output_dir={out}",
            "overwrite=true",
            "progress=false",
        ],
    }


def wall(cmd: list[str]) -> float:
    env = dict(
        os.environ,
        FLWR_TELEMETRY_ENABLED="0",
        FLWR_DISABLE_UPDATE_CHECK="1",
        FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1",
    )
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=HERE.parent)
    seconds = time.perf_counter() - t0
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as out:
        cmds = contenders(out)
        times: dict[str, list[float]] = {name: [] for name in cmds}
        for cmd in cmds.values():  # warm the file cache once, not measured
            wall(cmd)
        for _ in range(args.repeats):
            for name, cmd in cmds.items():
                times[name].append(wall(cmd))
    floor = statistics.median(times['python -c "import torch"'])
    lines = [
        f"## startup — {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        "",
        f"Machine: {machine()}.  Command: `python -m bench.startup --repeats {args.repeats}`.",
        f"Median wall time of {args.repeats} fresh processes per contender, interleaved "
        "(after one unmeasured warm-up each).",
        "",
        "| contender | median (s) | min (s) | max (s) | / import torch |",
        "|---|---|---|---|---|",
    ]
    for name, ts in times.items():
        med = statistics.median(ts)
        lines.append(
            f"| `{name}` | {med:.2f} | {min(ts):.2f} | {max(ts):.2f} | {med / floor:.2f} |"
        )
    text = "\n".join(lines) + "\n"
    print(text)
    result = HERE / "results" / "startup.md"
    with result.open("a") as f:
        f.write(("\n" if result.exists() else "") + text)


if __name__ == "__main__":
    main()
