"""User-facing errors: one clear line, a non-zero exit, no traceback.

Library code raises these for anything a user can fix (a bad value, a missing file);
the CLI prints ``str(error)`` and exits with :data:`EXIT_USER_ERROR`.  Programming
errors stay ordinary exceptions so that their tracebacks are kept.
"""

from __future__ import annotations

EXIT_USER_ERROR = 2


class UserError(Exception):
    """Something the user can fix; the message says what, where and what is allowed."""


class ConfigError(UserError):
    """A configuration or scenario value is invalid."""


class DataError(UserError):
    """A data file is missing, unreadable or inconsistent."""


class CheckpointError(UserError):
    """A checkpoint or run directory cannot be used to resume."""
