"""Reference final metrics of short runs, and the comparison with them.

``final_metrics.json`` holds, per cell ``"<strategy>/<uplink channel>"``, the overrides
of a two-round in-process run and the final metrics it returned at the commit the file
names (``scripts/golden_metrics.py`` writes it; it leaves out wall-clock metrics and any
metric that differed between two runs).  ``tests/test_matrix.py``'s in-process cells
compare their final metrics with it, so a change that should not change behaviour shows
every number it moved.  Regenerate the file only for a change meant to move them, and
say why in the commit.
"""

from __future__ import annotations

import json
import math
from functools import cache
from pathlib import Path
from typing import Any

FILE = Path(__file__).with_name("final_metrics.json")
RTOL, ATOL = 1e-5, 1e-7


@cache
def reference() -> dict[str, Any]:
    """The whole golden file (commit, command, cells)."""
    return json.loads(FILE.read_text())


def cell(name: str, channel: str) -> dict[str, Any] | None:
    """The recorded cell of ``name`` on uplink ``channel`` (overrides, metrics), or None."""
    return reference()["cells"].get(f"{name}/{channel}")


def mismatches(key: str, expected: dict[str, float], got: dict[str, float]) -> list[str]:
    """One line per recorded metric that ``got`` lacks or that is off by more than
    ``RTOL`` relative (``ATOL`` absolute, for values near zero)."""
    out = []
    for metric, want in sorted(expected.items()):
        have = got.get(metric)
        if have is None:
            out.append(f"{key}: {metric} expected {want!r}, got nothing")
        elif not math.isclose(have, want, rel_tol=RTOL, abs_tol=ATOL) and not (
            math.isnan(have) and math.isnan(want)
        ):
            out.append(f"{key}: {metric} expected {want!r}, got {have!r}")
    return out
