"""One trial of ``fedsim tune``, in a process of its own: ``python -m fedsim.analysis.tune_child``.

Reads the resolved run configuration (JSON) on standard input and runs it like ``fedsim
run`` does (:func:`fedsim.engine.runner.execute`): SIGTERM finishes the current round, writes a
checkpoint and stops (exit status 143), which is how ``fedsim tune`` prunes a trial.  On
Linux the process also receives SIGTERM when the tuning process dies, so a killed tuning
leaves no trial running on its own.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys

from fedsim.errors import Interrupted, UserError

PARENT_ENV = "FEDSIM_TUNE_PARENT"
PR_SET_PDEATHSIG = 1


def _stop_with_parent() -> None:
    """SIGTERM when the tuning process ends (Linux ``prctl``); elsewhere a no-op."""
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    parent = os.environ.get(PARENT_ENV)
    if parent and os.getppid() != int(parent):  # it died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


def main() -> int:
    _stop_with_parent()
    console = logging.StreamHandler(sys.stderr)
    console.setLevel(logging.WARNING)
    console.setFormatter(logging.Formatter("fedsim: %(levelname)s: %(message)s"))
    logging.basicConfig(level=logging.WARNING, handlers=[console])
    from fedsim.engine.conf import from_json
    from fedsim.engine.runner import execute

    try:
        execute(from_json(sys.stdin.read()))
    except UserError as e:
        print(f"fedsim: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt as e:
        return 128 + e.signum if isinstance(e, Interrupted) else 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
