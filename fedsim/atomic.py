"""One way to write a file so that a reader never sees half of it.

Write to ``.<name>.tmp`` beside it, flush, fsync, then rename over it; when anything
fails the temporary file is removed (a directory that forbids even that leaves it for the
next run to clean) and the error is raised as it came, so callers turn an ``OSError``
into their one-line fault.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def write_atomic(path: Path, data: bytes | str) -> None:
    """Replace ``path`` by ``data`` (bytes, or text) atomically; no ``.tmp`` left behind."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):  # a directory that forbids it: the next run does
            tmp.unlink(missing_ok=True)
        raise
