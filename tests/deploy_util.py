"""Process fixtures for deployment tests: real SuperLink/SuperNode processes, stopped by PID.

Every process is started in its own process group (its SuperExec, ServerApp and
ClientApp children share it) and :meth:`Cluster.stop_all` kills each group — also when
the test fails, because :func:`cluster` does it in ``finally``.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from fedsim.deploy import flower_env

BIN = Path(sys.executable).parent
FEDSIM = [str(BIN / "fedsim"), "deploy"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(check: Callable[[], Any], timeout: float, what: str, every: float = 0.5) -> Any:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = check()
        if value:
            return value
        time.sleep(every)
    raise TimeoutError(f"gave up after {timeout:g} s waiting for {what}")


def run_record(run_dir: Path) -> dict[str, Any] | None:
    try:
        return dict(json.loads((run_dir / "run.json").read_text()))
    except (OSError, ValueError):
        return None


class Cluster:
    """Processes of one test, by name; logs in ``<tmp>/logs``; FLWR_HOME in ``<tmp>``."""

    def __init__(self, tmp: Path, prefix: list[str] | None = None) -> None:
        self.tmp = tmp
        self.logs = tmp / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.prefix = prefix or []  # e.g. ["ip", "netns", "exec", "ns0"] per process
        self.env = flower_env(
            {"FLWR_HOME": str(tmp / "flwr-home"), "PATH": f"{BIN}:{os.environ['PATH']}"}
        )
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, cmd: list[str], prefix: list[str] | None = None) -> int:
        full = [*(self.prefix if prefix is None else prefix), *cmd]
        with open(self.logs / f"{name}.log", "ab") as out:
            self.procs[name] = subprocess.Popen(
                full, stdout=out, stderr=subprocess.STDOUT, env=self.env, start_new_session=True
            )
        return self.procs[name].pid

    def run(self, cmd: list[str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            cmd, env=self.env, capture_output=True, text=True, timeout=timeout, check=False
        )

    def log(self, name: str) -> str:
        path = self.logs / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def alive(self, name: str) -> bool:
        return self.procs[name].poll() is None

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Signal ``name``'s whole process group and reap it."""
        proc = self.procs[name]
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=15)

    def stop_all(self) -> None:
        for proc in self.procs.values():
            with suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        for name, proc in list(self.procs.items()):
            with suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
            with suppress(ProcessLookupError):  # children left in the group (SuperExec, ...)
                os.killpg(proc.pid, signal.SIGKILL)
            if proc.poll() is None:
                proc.wait(timeout=10)
            del self.procs[name]


@contextmanager
def cluster(tmp: Path, prefix: list[str] | None = None) -> Iterator[Cluster]:
    c = Cluster(tmp, prefix)
    try:
        yield c
    finally:
        c.stop_all()


def dump_logs(c: Cluster, tail: int = 40) -> str:
    """The last lines of every log (for assertion messages)."""
    parts = []
    for path in sorted(c.logs.glob("*.log")):
        lines = path.read_text(errors="replace").splitlines()[-tail:]
        parts.append(f"--- {path.name}\n" + "\n".join(lines))
    return "\n".join(parts)
