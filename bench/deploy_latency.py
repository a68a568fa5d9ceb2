"""Per-round overhead of Flower's Deployment Engine on loopback, before/after fedsim's fixes.

A SuperLink and three SuperNodes run as real processes on 127.0.0.1 (TLS on).  The
workload is nearly free (logistic regression, one local step) so a round's wall time is
almost all orchestration; the same run on the inline runtime gives the compute floor,
and ``overhead = deployment round time - inline round time`` (median of rounds 2..R;
round 1 pays one-off start-up: FAB install, imports, data loading).

Configurations:

* ``flower-default`` — plain ``flower-supernode`` (subprocess isolation: one
  ``flwr-clientapp`` process per message), Flower's 3 s grid pulls, 3 s fleet polls,
  1 s SuperExec task polls;
* ``grid-poll`` — fedsim's ServerApp pulls replies every 0.1 s (``PollingGrid``);
* ``grid-poll+superexec-poll`` — plus Flower's ``FLWR_SUPEREXEC_TASK_POLL_INTERVAL=0.1``;
* ``fast`` — ``fedsim deploy supernode --fast``: ``--isolation process`` with fedsim's
  long-running in-process ClientApp executor, fleet poll capped at 0.2 s.

Usage: ``python bench/deploy_latency.py [--rounds 5] [--only fast,...]``; writes
``bench/results/deploy_latency.md`` (and ``.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from deploy_util import FEDSIM, cluster, dump_logs, free_port, run_record, wait_for  # noqa: E402

WORKLOAD = [
    "backbone=logreg",
    "scenario.num_clients=3",
    "train.local_steps=1",
    "progress=false",
    "runtime.threads=1",
    "runtime.timeout=120",
]
CONFIGS = {
    "flower-default": {"env": {"FEDSIM_GRID_POLL_S": "0"}, "fast": False},
    "grid-poll": {"env": {}, "fast": False},
    "grid-poll+superexec-poll": {
        "env": {"FLWR_SUPEREXEC_TASK_POLL_INTERVAL": "0.1"},
        "fast": False,
    },
    "fast": {"env": {}, "fast": True},
}


def round_times(run_dir: Path) -> list[float]:
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [float(r["time/round_s"]) for r in rows]


def inline_times(out: Path, rounds: int) -> list[float]:
    from fedsim.engine.conf import compose
    from fedsim.engine.runner import execute

    rec = execute(compose([*WORKLOAD, f"rounds={rounds}", f"output_dir={out}"]))
    return round_times(Path(rec["run_dir"]))


def deployed_times(tmp: Path, rounds: int, env: dict[str, str], fast: bool) -> list[float]:
    with cluster(tmp) as c:
        c.env.update(env)
        certs = tmp / "certs"
        assert c.run([*FEDSIM, "certs", "--dir", str(certs)]).returncode == 0
        port = free_port()
        link = f"127.0.0.1:{port}"
        c.start("superlink", [*FEDSIM, "superlink", "--certs", str(certs), "--port", str(port)])
        for i in range(3):
            cmd = [*FEDSIM, "supernode", "--superlink", link, "--partition-id", str(i)]
            cmd += ["--num-partitions", "3", "--ca", str(certs / "ca.crt")]
            cmd += ["--port", str(free_port())] + (["--fast"] if fast else [])
            c.start(f"node{i}", cmd)
        out = tmp / "runs"
        res = c.run(
            [
                *FEDSIM,
                "run",
                "--superlink",
                link,
                "--ca",
                str(certs / "ca.crt"),
                *WORKLOAD,
                f"rounds={rounds}",
                f"output_dir={out}",
            ]
        )
        assert res.returncode == 0, res.stderr
        run_dir = out / "digits_iid" / "fedavg" / "seed-0"
        try:
            wait_for(
                lambda: (run_record(run_dir) or {}).get("status") in ("complete", "failed"),
                120 + 90 * rounds,
                "the run to finish",
            )
        except TimeoutError:
            print(dump_logs(c), file=sys.stderr)
            raise
        return round_times(run_dir)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--only", default=",".join(CONFIGS))
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "deploy_latency")
    a = ap.parse_args()
    results: dict[str, dict[str, object]] = {}
    with tempfile.TemporaryDirectory() as d:
        base = inline_times(Path(d) / "inline", a.rounds)
        floor = statistics.median(base[1:])
        results["inline"] = {"round_s": base, "median_round_s": floor, "overhead_s": 0.0}
        for name in a.only.split(","):
            conf = CONFIGS[name]
            t0 = time.monotonic()
            times = deployed_times(Path(d) / name, a.rounds, conf["env"], conf["fast"])  # type: ignore[arg-type]
            med = statistics.median(times[1:])
            results[name] = {
                "round_s": times,
                "median_round_s": med,
                "overhead_s": med - floor,
                "wall_s": time.monotonic() - t0,
            }
            print(f"{name}: median round {med:.2f} s, overhead {med - floor:.2f} s", flush=True)
    load = os.getloadavg()
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.with_suffix(".json").write_text(json.dumps(results, indent=1))
    lines = [
        "# Deployment latency on loopback (3 SuperNodes, TLS)",
        "",
        f"`python bench/deploy_latency.py --rounds {a.rounds}` on {platform.node()}, "
        f"{os.cpu_count()} CPUs, load average at the end {load[0]:.1f}/{load[1]:.1f}/{load[2]:.1f} "
        "(the machine was shared with other jobs: absolute numbers are noisy, compare rows).",
        "",
        "Workload: " + " ".join(f"`{w}`" for w in WORKLOAD) + " — almost no compute, so a",
        "round is almost all orchestration.  overhead = median deployment round (rounds 2..R)",
        "minus the median inline round.",
        "",
        "| configuration | median round (s) | overhead per round (s) | rounds (s) |",
        "|---|---|---|---|",
    ]
    for name, r in results.items():
        rounds = ", ".join(f"{t:.1f}" for t in r["round_s"])  # type: ignore[attr-defined]
        lines.append(f"| {name} | {r['median_round_s']:.2f} | {r['overhead_s']:.2f} | {rounds} |")
    a.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
