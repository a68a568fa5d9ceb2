"""Human-readable views of a partition: a text table and a label/domain heatmap.

The table is what ``fedsim`` prints or logs before training; the heatmap goes to the run
directory as a PNG and, through :func:`partition_heatmap_array`, to TensorBoard's
``add_image`` (``dataformats="HWC"``).  The heatmap is drawn with numpy
(:mod:`fedsim.tracking.raster`): a run draws it before its first round, where matplotlib's import
and first draw cost about a second (``bench/results/startup.md``); it needs no display
and gives the same pixels on every machine.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
from PIL import Image

from fedsim.data.partition import label_skew
from fedsim.tracking import raster

#: Most client rows printed in full; beyond this the table shows the first and last half.
MAX_ROWS = 40
#: Most client columns drawn in a heatmap; beyond this an evenly spaced subset is drawn.
MAX_COLUMNS = 100
#: Classes listed in the "top classes" column.
TOP_CLASSES = 3


def _domain_names(domain_names: Sequence[str] | None, num_domains: int) -> list[str]:
    names = list(domain_names or [])
    return names + [f"d{d}" for d in range(len(names), num_domains)]


def _num_domains(domains: np.ndarray | None, domain_names: Sequence[str] | None) -> int:
    inferred = int(np.max(domains)) + 1 if domains is not None and len(domains) else 1
    return max(inferred, len(domain_names or []))


def _shares(counts: np.ndarray, names: Sequence[str], top: int) -> str:
    """``"7:40% 1:35%"``: the ``top`` largest entries of ``counts`` as shares."""
    total = counts.sum()
    if total == 0:
        return "-"
    order = np.argsort(-counts, kind="stable")[:top]
    return " ".join(f"{names[i]}:{100 * counts[i] / total:.0f}%" for i in order if counts[i] > 0)


def partition_table(
    partitions: Sequence[np.ndarray],
    labels: np.ndarray,
    domains: np.ndarray | None,
    domain_names: Sequence[str] | None,
    num_classes: int,
    max_rows: int = MAX_ROWS,
) -> str:
    """A plain-text table of a partition, one row per client, plus summary lines.

    Parameters
    ----------
    partitions
        Per-client index arrays (as returned by :func:`fedsim.data.partition.partition`).
    labels
        Label of every sample.
    domains
        Source index of every sample, or ``None`` for a single source.
    domain_names
        Name of every source (``dataset.sources[d].name``); missing names become ``d<i>``.
    num_classes
        Number of classes.
    max_rows
        With more clients than this, only the first and last ``max_rows // 2`` rows are
        shown; the summary always covers every client.

    Returns
    -------
    str
        Columns ``client``, ``samples``, ``classes`` (distinct labels held), ``top classes``
        (``label:share``) and, with several sources, ``domains`` (``name:share``).
    """
    labels = np.asarray(labels)
    num_clients = len(partitions)
    sizes = np.array([len(p) for p in partitions], dtype=np.int64)
    num_domains = _num_domains(domains, domain_names)
    names = _domain_names(domain_names, num_domains)
    show_domains = domains is not None and num_domains > 1
    class_names = [str(c) for c in range(num_classes)]

    if num_clients > max_rows:
        half = max(max_rows // 2, 1)
        shown = [*range(half), *range(num_clients - half, num_clients)]
    else:
        shown = list(range(num_clients))

    header = ["client", "samples", "classes", "top classes"]
    if show_domains:
        header.append("domains")
    rows: list[list[str]] = []
    for k in shown:
        idx = np.asarray(partitions[k], dtype=np.int64)
        counts = np.bincount(labels[idx], minlength=num_classes)
        row = [str(k), str(sizes[k]), str(int(np.count_nonzero(counts))), ""]
        row[3] = _shares(counts, class_names, TOP_CLASSES)
        if show_domains:
            assert domains is not None
            dcounts = np.bincount(np.asarray(domains)[idx], minlength=num_domains)
            row.append(_shares(dcounts, names, num_domains))
        rows.append(row)

    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    right = {0, 1, 2}

    def fmt(cells: Sequence[str]) -> str:
        return "  ".join(
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    lines = [fmt(header), fmt(["-" * w for w in widths])]
    for i, row in enumerate(rows):
        if num_clients > max_rows and i == len(rows) // 2:
            lines.append(f"... {num_clients - len(rows)} clients not shown ...")
        lines.append(fmt(row))

    total = int(sizes.sum())
    empty = int(np.count_nonzero(sizes == 0))
    lines.append("")
    lines.append(f"clients: {num_clients} ({empty} empty)")
    if num_clients:
        lines.append(
            f"samples: {total} total, min {sizes.min()} / median {np.median(sizes):g} "
            f"/ max {sizes.max()} per client"
        )
    lines.append(
        f"label skew (mean TV distance to the global label distribution): "
        f"{label_skew(partitions, labels, num_classes):.3f}"
    )
    return "\n".join(lines)


def _shown_clients(num_clients: int, max_columns: int) -> npt.NDArray[np.int64]:
    if num_clients <= max_columns:
        return np.arange(num_clients, dtype=np.int64)
    return np.unique(np.linspace(0, num_clients - 1, max_columns).round().astype(np.int64))


def partition_heatmap_array(
    partitions: Sequence[np.ndarray],
    labels: np.ndarray,
    domains: np.ndarray | None,
    domain_names: Sequence[str] | None,
    num_classes: int,
    max_columns: int = MAX_COLUMNS,
) -> npt.NDArray[np.uint8]:
    """Two heatmaps as an ``H x W x 3`` ``uint8`` RGB array: label x client sample counts
    (top) and domain x client sample counts (bottom), each with its colour bar.

    With more than ``max_columns`` clients an evenly spaced subset of clients is drawn and
    the title says so.  Ready for ``SummaryWriter.add_image(tag, array,
    dataformats="HWC")``.
    """
    labels = np.asarray(labels)
    num_clients = len(partitions)
    num_domains = _num_domains(domains, domain_names)
    names = _domain_names(domain_names, num_domains)
    dom = np.zeros(labels.shape, dtype=np.int64) if domains is None else np.asarray(domains)
    shown = _shown_clients(num_clients, max_columns)

    by_label = np.zeros((num_classes, shown.size), dtype=np.int64)
    by_domain = np.zeros((num_domains, shown.size), dtype=np.int64)
    for j, k in enumerate(shown):
        idx = np.asarray(partitions[k], dtype=np.int64)
        by_label[:, j] = np.bincount(labels[idx], minlength=num_classes)
        by_domain[:, j] = np.bincount(dom[idx], minlength=num_domains)

    if shown.size < num_clients:
        title = f"partition: showing {shown.size} of {num_clients} clients (evenly spaced)"
    else:
        title = f"partition: {num_clients} clients"
    clients = [str(k) for k in shown]
    classes = [str(c) for c in range(num_classes)]
    left = max(raster.text_width(n) for n in [*classes, *names]) + 6  # columns line up
    return raster.stack(
        [
            raster.label(title),
            raster.heat_panel(by_label, classes, clients, "label x client counts", left=left),
            raster.heat_panel(by_domain, names, clients, "domain x client counts", left=left),
            raster.label("client"),
        ]
    )


def partition_heatmap(
    partitions: Sequence[np.ndarray],
    labels: np.ndarray,
    domains: np.ndarray | None,
    domain_names: Sequence[str] | None,
    num_classes: int,
    path: str | Path,
    max_columns: int = MAX_COLUMNS,
) -> Path:
    """Write the :func:`partition_heatmap_array` as an RGB PNG to ``path``; returns it.

    Parent directories are created.  The PNG holds exactly the pixels of
    :func:`partition_heatmap_array`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = partition_heatmap_array(
        partitions, labels, domains, domain_names, num_classes, max_columns
    )
    Image.fromarray(pixels).save(path, format="PNG")
    return path
