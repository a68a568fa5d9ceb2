"""Helper of tests/test_faults_io.py, run as root of a private user and mount namespace
(``unshare -Urm``): mounts a small tmpfs, runs ``fedsim`` on it and writes a JSON report
of what happened.  The mount vanishes with the namespace, so the report carries the
observations.  Every process it starts is stopped by its PID.

``enospc OUT SIZE OVERRIDES...``: a run on a tmpfs of SIZE bytes until the disk is full,
then the tmpfs grown (space freed) and the run resumed.
``readonly OUT OVERRIDES...``: a run into a read-only tmpfs.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path


def _sh(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True, text=True)


def _fedsim(*args: str) -> tuple[int, str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "fedsim.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        _, err = proc.communicate(timeout=500)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=60)
    return proc.returncode, err


def _rows(run_dir: Path) -> list[dict[str, object]]:
    path = run_dir / "metrics.jsonl"
    return [json.loads(ln) for ln in path.read_text().splitlines()] if path.exists() else []


def enospc(out: Path, size: int, overrides: list[str]) -> dict[str, object]:
    out.mkdir(parents=True, exist_ok=True)
    _sh("mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(out))
    run_dir = out / "digits_iid" / "fedavg" / "seed-0"
    rc, err = _fedsim("run", *overrides, "checkpoint_every=1", f"output_dir={out}")
    report: dict[str, object] = {"fault_rc": rc, "fault_err": err}
    status = run_dir / "run.json"
    report["status_after_fault"] = json.loads(status.read_text()) if status.exists() else None
    report["tmp_files_after_fault"] = [str(p) for p in out.rglob("*.tmp")]
    _sh("mount", "-o", "remount,size=256m", str(out))  # space freed
    rc, err = _fedsim("resume", str(run_dir))
    report.update(resume_rc=rc, resume_err=err, rows_after_resume=_rows(run_dir))
    return report


def readonly(out: Path, overrides: list[str]) -> dict[str, object]:
    out.mkdir(parents=True, exist_ok=True)
    _sh("mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(out))
    _sh("mount", "-o", "remount,ro", str(out))
    rc, err = _fedsim("run", *overrides, f"output_dir={out}/runs")
    return {"ro_start_rc": rc, "ro_start_err": err, "ro_start_files": os.listdir(out)}


def main() -> None:
    report_path, mode, out = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
    if mode == "enospc":
        report = enospc(out, int(sys.argv[4]), sys.argv[5:])
    else:
        report = readonly(out, sys.argv[4:])
    report_path.write_text(json.dumps(report))


if __name__ == "__main__":
    main()
