"""Run one benchmark measurement in a fresh process and print one JSON line.

    python -m bench.run_one <job> <plain|inline|vec|ray> [override ...]

``vec`` is ``runtime=inline runtime.vectorize=auto`` (the round's clients train together).

``wall_s`` is the whole process from interpreter start (imports, data, Ray start-up,
training, final evaluation); ``loop_s`` is the round loop alone.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time

T_START = time.perf_counter()


def main() -> None:
    job, mode, *extra = sys.argv[1:]
    from bench.jobs import JOBS
    from fedsim.engine.conf import compose

    out = tempfile.mkdtemp(prefix="fedsim-bench-")
    overrides = [*JOBS[job], f"output_dir={out}", "progress=false", *extra]
    result: dict[str, object] = {"job": job, "mode": mode, "overrides": extra}
    if mode == "plain":
        from bench.plain_loop import run_plain

        cfg = compose(overrides)
        res = run_plain(cfg)
        result.update(loop_s=res.loop_s, final_acc=res.final_acc, global_acc=res.global_acc)
    else:
        from fedsim.engine.runner import execute

        os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
        runtime = (
            ["runtime=inline", "runtime.vectorize=auto"] if mode == "vec" else [f"runtime={mode}"]
        )
        cfg = compose([*runtime, *overrides])
        record = execute(cfg)
        final = record["final"]
        result.update(
            loop_s=final["wall_s"],
            final_acc=final.get("eval/acc"),
            global_acc=final.get("eval/global_acc"),
        )
    result["wall_s"] = time.perf_counter() - T_START
    print(json.dumps(result))


if __name__ == "__main__":
    main()
