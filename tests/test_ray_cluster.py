"""``runtime.address``: a run joins an existing Ray cluster that the test starts itself.

The slow test starts a Ray head (and a second node) with ``ray start`` in a session of
its own, runs a 2-round experiment with ``runtime=ray runtime.address=127.0.0.1:PORT``,
and then stops exactly the processes of that session (found by session id in /proc, by
PID; never ``ray stop``, which stops every Ray on the machine by name), also when the
test fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fedsim.engine.conf import compose
from fedsim.errors import ConfigError

RAY = Path(sys.executable).with_name("ray")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def session_pids(sid: int) -> list[int]:
    """Processes whose session id is ``sid`` (field 6 of /proc/<pid>/stat)."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()  # after "(comm)": state ppid pgrp session
        if int(fields[3]) == sid:
            out.append(int(entry.name))
    return out


def stop_session(sid: int) -> None:
    """SIGTERM the session's processes, then SIGKILL what is left after 10 s."""
    for sig, wait_s in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
        pids = session_pids(sid)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + wait_s
        while session_pids(sid) and time.monotonic() < deadline:
            time.sleep(0.2)
    assert not session_pids(sid), f"processes of session {sid} survived SIGKILL"


def ray_start(*args: str) -> int:
    """``ray start`` in a new session; returns that session's id (= the command's PID)."""
    proc = subprocess.Popen(
        [str(RAY), "start", "--disable-usage-stats", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    out, _ = proc.communicate(timeout=180)
    if proc.returncode != 0:
        stop_session(proc.pid)
        pytest.fail(f"ray start {' '.join(args)} failed:\n{out[-2000:]}")
    return proc.pid


@pytest.fixture
def ray_cluster() -> Iterator[tuple[str, Path]]:
    """A head with 1 CPU and a second node with 1 CPU; yields (address, session logs)."""
    if not RAY.exists():
        pytest.skip(f"{RAY} not found (Ray is not installed)")
    temp = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))  # short: Ray's socket paths
    port = free_port()
    address = f"127.0.0.1:{port}"
    sessions: list[int] = []
    try:
        one_cpu = ["--num-cpus", "1"]
        sessions.append(
            ray_start(
                "--head",
                "--port",
                str(port),
                "--ray-client-server-port",
                str(free_port()),
                "--include-dashboard=false",
                "--temp-dir",
                str(temp),
                *one_cpu,
            )
        )
        sessions.append(ray_start("--address", address, *one_cpu))
        yield address, temp / "session_latest" / "logs"
    finally:
        for sid in reversed(sessions):
            stop_session(sid)
        shutil.rmtree(temp, ignore_errors=True)


@pytest.mark.slow
def test_a_run_joins_an_existing_two_node_cluster(
    ray_cluster: tuple[str, Path], tmp_path: Path
) -> None:
    address, logs = ray_cluster
    env = {**os.environ, "FLWR_HOME": str(tmp_path / "flwr")}

    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "fedsim.cli",
            "run",
            "runtime=ray",
            f"runtime.address={address}",
            "runtime.client_cpus=1",
            "runtime.threads=1",
            "rounds=2",
            "scenario.num_clients=2",
            "backbone=mlp",
            "progress=false",
            f"output_dir={tmp_path}",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )

    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = tmp_path / "digits_iid" / "fedavg" / "seed-0"
    record = json.loads((run_dir / "run.json").read_text())
    assert record["status"] == "complete" and record["final"]["rounds"] == 2
    assert record["config"]["runtime"]["address"] == address
    log = (run_dir / "fedsim.log").read_text()
    assert f"joined the Ray cluster at {address}: 2 nodes, 2 CPUs, 0 GPUs" in log
    # the cluster, not a private instance, ran the ClientApps: its session logs hold
    # this driver's log and the workers (actors) it started
    assert list(logs.glob("python-core-driver-*.log")), sorted(p.name for p in logs.iterdir())
    assert list(logs.glob("python-core-worker-*.log"))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["runtime=ray", "runtime.address=nowhere"], "runtime.address: 'nowhere' is not a"),
        (["runtime=ray", "runtime.address=ray://h:99999"], "is not a Ray address"),
        (["runtime.address=auto"], "only runtime=ray joins a cluster, got runtime=inline"),
        (["runtime=ray", "runtime.client_cpus=0"], "runtime.client_cpus: must be > 0, got 0.0"),
        (["runtime=ray", "runtime.client_gpus=-1"], "runtime.client_gpus: must be >= 0"),
    ],
)
def test_bad_runtime_values_are_refused_before_anything_runs(
    tmp_path: Path, overrides: list[str], message: str
) -> None:
    with pytest.raises(ConfigError, match=message.replace(".", r"\.").replace("?", r"\?")):
        compose([f"output_dir={tmp_path}", *overrides])


@pytest.mark.parametrize("address", ["", "auto", "10.0.0.5:6379", "ray://head.example:10001"])
def test_ray_addresses_are_accepted(tmp_path: Path, address: str) -> None:
    cfg = compose([f"output_dir={tmp_path}", "runtime=ray", f"runtime.address={address}"])
    assert cfg.runtime.address == address
