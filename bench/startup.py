"""Start-up: ``fedsim run --help`` and a one-round default run vs ``python -c "import torch"``.

    python -m bench.startup --repeats 5 [--baseline /tmp/fedsim-c014502]

Contenders, each a fresh process, interleaved round-robin so that a change in the
machine's load hits all of them alike:

* ``import torch``: ``python -c "import torch"``, the floor of any PyTorch program;
* ``fedsim run --help``: Hydra's help (every config group listed);
* ``fedsim run rounds=1``: the default experiment (FedAvg, embedded digits, 10 clients),
  one round, into a temporary output directory; TensorBoard events, partition heat-map
  and checkpoint included;
* with ``--baseline DIR`` (a commit's tree: ``git archive <commit> | tar -x -C DIR``),
  the same run of that commit, so that a change is timed against its parent in one run.

Targets (issue: fast start): ``--help`` <= 1.0x and the one-round run <= 2.5x the
``import torch`` time.  Prints a markdown table of medians (wall time, and the CPU time
of the process and its children: on a shared machine it shows how much of a wall time
was waiting) and whether each target is met, and appends it to
``bench/results/startup.md`` with the machine and the command.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.compare_runtimes import machine

HERE = Path(__file__).resolve().parent
FEDSIM = str(Path(sys.executable).parent / "fedsim")


def contenders(out: str, baseline: Path | None = None) -> dict[str, list[str]]:
    """The commands, by name.  ``baseline``: a source tree of another commit (e.g. from
    ``git archive``) whose one-round run is timed as well, with the same interpreter and
    packages (``-P``: its ``fedsim`` comes from ``PYTHONPATH``, not this checkout)."""
    run = ["run", "rounds=1", f"output_dir={out}", "overwrite=true", "progress=false"]
    cmds = {
        'python -c "import torch"': [sys.executable, "-c", "import torch"],
        "fedsim run --help": [FEDSIM, "run", "--help"],
        "fedsim run rounds=1": [FEDSIM, *run],
    }
    if baseline is not None:
        cmds[f"fedsim run rounds=1 ({baseline.name})"] = [
            "env",
            f"PYTHONPATH={baseline}",
            sys.executable,
            "-P",
            "-m",
            "fedsim.cli",
            *run,
        ]
    return cmds


#: contender -> the most it may take, as a multiple of ``import torch``
TARGETS = {"fedsim run --help": 1.0, "fedsim run rounds=1": 2.5}


def _children_cpu() -> float:
    use = resource.getrusage(resource.RUSAGE_CHILDREN)
    return use.ru_utime + use.ru_stime


def wall(cmd: list[str]) -> tuple[float, float]:
    """Wall and CPU seconds (user + system, the process and its children) of one run."""
    env = dict(
        os.environ,
        FLWR_TELEMETRY_ENABLED="0",
        FLWR_DISABLE_UPDATE_CHECK="1",
        FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1",
    )
    cpu0, t0 = _children_cpu(), time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=HERE.parent)
    seconds, cpu = time.perf_counter() - t0, _children_cpu() - cpu0
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    return seconds, cpu


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "startup.md")
    ap.add_argument("--baseline", type=Path, help="source tree of a commit to compare with")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as out:
        cmds = contenders(out, args.baseline.resolve() if args.baseline else None)
        times: dict[str, list[float]] = {name: [] for name in cmds}
        cpus: dict[str, list[float]] = {name: [] for name in cmds}
        for cmd in cmds.values():  # warm the file cache once, not measured
            wall(cmd)
        for _ in range(args.repeats):
            for name, cmd in cmds.items():
                seconds, cpu = wall(cmd)
                times[name].append(seconds)
                cpus[name].append(cpu)
    floor = statistics.median(times['python -c "import torch"'])
    cpu_floor = statistics.median(cpus['python -c "import torch"'])
    lines = [
        f"## startup — {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        "",
        f"Machine: {machine()}.  Command: `python -m bench.startup --repeats {args.repeats}"
        + (f" --baseline {args.baseline}" if args.baseline else "")
        + "`.",
        f"Median wall time of {args.repeats} fresh processes per contender, interleaved "
        "(after one unmeasured warm-up each).",
        "",
        "| contender | median (s) | min (s) | max (s) | / import torch | CPU median (s) "
        "| CPU / import torch |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, ts in times.items():
        med, cpu = statistics.median(ts), statistics.median(cpus[name])
        lines.append(
            f"| `{name}` | {med:.2f} | {min(ts):.2f} | {max(ts):.2f} | {med / floor:.2f} "
            f"| {cpu:.2f} | {cpu / cpu_floor:.2f} |"
        )
    lines.append("")
    for name, limit in TARGETS.items():
        ratio = statistics.median(times[name]) / floor
        verdict = "met" if ratio <= limit else f"**not met** (misses by {ratio - limit:.2f}x)"
        lines.append(f"Target `{name}` <= {limit:.1f}x `import torch`: {ratio:.2f}x, {verdict}.")
    text = "\n".join(lines) + "\n"
    print(text)
    exists = args.out.exists()
    with args.out.open("a") as f:
        f.write(("\n" if exists else "") + text)


if __name__ == "__main__":
    main()
