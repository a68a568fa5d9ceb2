"""Scale: 1,000 ... 1,000,000 registered clients at 100 per round.

    python -m bench.scale --clients 1000,100000,1000000 --rounds 5 runtime.threads=1

Each size runs in a fresh process on a synthetic 8x8 dataset with 2 samples per client
(orchestration is what is measured: the data content is irrelevant), logistic
regression, runtime=inline.  Reported: peak RSS of the process, RSS after the dataset
is built (the "dataset" baseline), and the median time per round (rounds 2..R).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
CHILD = r'''
import json, resource, sys, tempfile
from pathlib import Path
import numpy as np
n, rounds, out, extra = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4:]
rng = np.random.default_rng(0)
data = Path(out) / "synthetic.npz"
np.savez(data, x=rng.integers(0, 256, (2 * n + 1000, 8, 8), dtype=np.uint8), y=rng.integers(0, 10, 2 * n + 1000))
scn = Path(out) / "scale.yaml"
scn.write_text(f"""name: scale
num_clients: {n}
dataset:
  sources: [{{name: synth, format: npz, train: {data}}}]
  test_fraction: 0.0
partition: {{kind: iid}}
participation: {{clients_per_round: 100}}
evaluation: {{holdout_fraction: 0.0, fraction: 0.0, global_test: false}}
""")
from fedsim.engine.conf import compose
from fedsim.data.federation import load_federation
cfg = compose([f"scenario={scn}", "backbone=logreg", f"rounds={rounds}", "train.batch_size=2",
               f"output_dir={out}/runs", "progress=false", f"eval_every={rounds}", *extra])
load_federation(cfg.scenario, cfg.seed)
rss_data = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
from fedsim.engine.runner import execute
rec = execute(cfg)
rows = [json.loads(l) for l in open(Path(rec["run_dir"]) / "metrics.jsonl")]
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"clients": n, "rss_after_data_mib": rss_data, "peak_rss_mib": peak,
                  "round_s": [r["time/round_s"] for r in rows]}))
'''


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", default="1000,10000,100000")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("extra", nargs="*", help="fedsim overrides, e.g. runtime.threads=1")
    args = ap.parse_intermixed_args()
    rows = []
    for n in [int(c) for c in args.clients.split(",")]:
        reps = []
        for _ in range(args.repeats):
            with tempfile.TemporaryDirectory() as out:
                res = subprocess.run(
                    [sys.executable, "-c", CHILD, str(n), str(args.rounds), out, *args.extra],
                    capture_output=True,
                    text=True,
                    cwd=HERE.parent,
                    timeout=3600,
                )
                if res.returncode != 0:
                    raise RuntimeError(res.stderr[-3000:])
                reps.append(json.loads(res.stdout.strip().splitlines()[-1]))
        per_round = statistics.median(statistics.median(r["round_s"][1:]) for r in reps)
        peak = statistics.median(r["peak_rss_mib"] for r in reps)
        base = statistics.median(r["rss_after_data_mib"] for r in reps)
        rows.append((n, per_round, peak, base))
        print(
            f"{n} clients: {per_round * 1000:.1f} ms/round, peak {peak:.0f} MiB (after data {base:.0f} MiB)",
            file=sys.stderr,
        )
    from bench.compare_runtimes import machine

    lines = [
        f"## scale — {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        "",
        f"Machine: {machine()}.  Command: `python -m bench.scale --clients {args.clients} --rounds {args.rounds} "
        f"--repeats {args.repeats}{''.join(' ' + e for e in args.extra)}`.  Medians of {args.repeats} fresh processes; time per round = median of rounds 2..{args.rounds}.",
        "",
        "| registered clients | per round | time per round (ms) | peak RSS (MiB) | RSS after data (MiB) | peak − data (MiB) |",
        "|---|---|---|---|---|---|",
    ]
    for n, t, peak, base in rows:
        lines.append(
            f"| {n:,} | 100 | {t * 1000:.1f} | {peak:.0f} | {base:.0f} | {peak - base:.0f} |"
        )
    text = "\n".join(lines) + "\n"
    print(text)
    with open(HERE / "results" / "scale.md", "a") as f:
        f.write(text + "\n")


if __name__ == "__main__":
    main()
