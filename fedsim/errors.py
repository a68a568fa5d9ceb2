"""User-facing errors: one clear line, a non-zero exit, no traceback.

Library code raises these for anything a user can fix (a bad value, a missing file);
the CLI prints ``str(error)`` and exits with :data:`EXIT_USER_ERROR`.  Programming
errors stay ordinary exceptions so that their tracebacks are kept.
"""

from __future__ import annotations

EXIT_USER_ERROR = 2
EXIT_RUN_FAILED = 1


class UserError(Exception):
    """Something the user can fix; the message says what, where and what is allowed."""

    #: the CLI's exit status for this error
    exit_code = EXIT_USER_ERROR


class ConfigError(UserError):
    """A configuration or scenario value is invalid."""


class DataError(UserError):
    """A data file is missing, unreadable or inconsistent."""


class CheckpointError(UserError):
    """A checkpoint or run directory cannot be used to resume."""


class RunFailed(UserError):
    """A run that started ended on a fault of its environment (a full disk, a directory
    that became read-only, a file that vanished): exit status 1, not a bad input."""

    exit_code = EXIT_RUN_FAILED


class Interrupted(KeyboardInterrupt):
    """A run stopped by a signal (SIGINT, SIGTERM); the CLI exits with 128 + its number."""

    def __init__(self, signum: int, detail: str = "") -> None:
        super().__init__(detail or f"signal {signum}")
        self.signum = signum
