"""The written form of a comparison: ``summary.md`` (with its notes) and ``summary.csv``."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedsim.analysis.rundirs import BYTES_KEYS, BYTES_WORDS, Run
from fedsim.analysis.stats import LEVEL, higher_is_better, t_halfwidth

if TYPE_CHECKING:
    from fedsim.analysis.comparison import Column, Comparison, Group


def _cell(mean: float, std: float, n: int, total: int, col: Column) -> str:
    if n == 0:
        return "—" + (f" (0/{total})" if col.reach and total else "")
    text = f"{mean / col.scale:.{col.digits}f}"
    if math.isfinite(std):
        text += f" ± {std / col.scale:.{col.digits}f}"
    if col.reach and n < total:
        text += f" ({n}/{total})"
    return text


def _ci_cell(mean: float, std: float, n: int, digits: int) -> str:
    half = t_halfwidth(std, n)
    if not math.isfinite(half):
        return "—"
    return f"[{mean - half:.{digits}f}, {mean + half:.{digits}f}]"


def _p(p: float) -> str:
    if not math.isfinite(p):
        return "—"
    return f"{p:.3f}" if p >= 0.001 else f"{p:.1e}"


def _runs_cell(group: Group) -> str:
    used = group.used
    text = str(len(used))
    if group.incomplete_only:
        return f"{text} incomplete"
    left = len(group.runs) - len(used)
    return text + (f" (+{left} incomplete)" if left else "")


def summary_markdown(c: Comparison) -> str:
    """The table with its definitions, the paired tests, the incomplete runs and a
    settings check."""
    show_overrides = any(g.overrides for g in c.groups)
    final = f"{c.metric}_final"
    head = ["strategy", *(["overrides"] if show_overrides else []), "seeds"]
    for col in c.columns:
        head.append(col.header)
        if col.key == final:
            head.append(f"{LEVEL:.0%} CI")
    lines = [
        f"# Comparison of `{c.root.name}`",
        "",
        f"{_n(len(c.runs), 'run')} in {_n(len(c.groups), 'group')} under `{c.root}`; "
        f"metric `{c.metric}` "
        f"({'higher' if higher_is_better(c.metric) else 'lower'} is better)"
        + (f", target {c.target:g}." if c.target is not None else "."),
        "",
        "| " + " | ".join(head) + " |",
        "|" + "|".join("---" for _ in head) + "|",
    ]
    for g in c.groups:
        n = len(g.used)
        row = [c.label(g), *([g.overrides or "—"] if show_overrides else []), _runs_cell(g)]
        for col in c.columns:
            row.append(_cell(*c.cells[g.name][col.key], n, col))
            if col.key == final:
                mean, std, k = c.cells[g.name][col.key]
                row.append(_ci_cell(mean, std, k, col.digits))
        lines.append("| " + " | ".join(row) + " |")
    bytes_keys = " + ".join(f"`{k}`" for k in BYTES_KEYS[c.bytes_mode])
    best = "max" if higher_is_better(c.metric) else "min"
    lines += [
        "",
        "Notes:",
        "",
        "- Cells are mean ± std over seeds; std is the sample standard deviation "
        "(ddof=1), shown only with two or more seeds.",
        f"- **{LEVEL:.0%} CI**: Student-t confidence interval of the mean final "
        f"`{c.metric}` over seeds, mean ± t(0.975, n−1)·std/√n; — below two seeds.",
        f"- **final**: the value at the last round that recorded `{c.metric}`; "
        f"**best**: the {best} over rounds.",
    ]
    if c.target is not None:
        op = "≥" if higher_is_better(c.metric) else "≤"
        lines.append(
            f"- **rounds to {op} {c.target:g}**: the first round at which `{c.metric}` "
            f"{op} {c.target:g}; **MB to {op} {c.target:g}**: the cumulative bytes sent "
            f"{BYTES_WORDS[c.bytes_mode]} ({bytes_keys}) after that round, in MB "
            "(10^6 bytes). — means no seed reached the target; (k/n) means k of n seeds "
            "did, and the mean is over those k."
        )
    lines += [
        f"- **MB total**: cumulative bytes {BYTES_WORDS[c.bytes_mode]} after the last round; "
        "**wall s**: wall-clock seconds of the run (`time/elapsed_s`).",
        "- A row uses the complete runs of its group; a group without a complete run yet "
        "uses its incomplete runs up to their last round (seeds column: *incomplete*).",
    ]
    lines += _paired_section(c)
    lines += ["", "## Incomplete runs", ""]
    if c.incomplete:
        for r in c.incomplete:
            lines.append(f"- `{r.group}/seed-{r.seed}`: {progress(r)}")
    else:
        lines.append("None: every run is complete.")
    lines += ["", "## Settings", ""]
    if c.differing:
        lines.append(
            "Runs differ in settings other than strategy, seed and the swept keys; "
            "the rows are not a controlled comparison:"
        )
        lines += [""] + [f"- `{k}`: {', '.join(v)}" for k, v in c.differing.items()]
    else:
        lines.append(
            "All runs share the same settings except strategy, seed and the swept keys "
            "(checked on each run's `run.json`)."
        )
    lines += ["", "## Runs", "", "| group | seed | status | rounds | directory |"]
    lines.append("|---|---|---|---|---|")
    for r in c.runs:
        rounds = f"{r.last_round}" + (f"/{r.planned_rounds}" if r.planned_rounds else "")
        lines.append(f"| {r.group} | {r.seed} | {r.status} | {rounds} | `{r.path}` |")
    return "\n".join(lines) + "\n"


def _paired_section(c: Comparison) -> list[str]:
    """Each group against the baseline on the seeds both have (final ``metric``)."""
    if c.baseline is None:
        return [
            "",
            "## Paired tests",
            "",
            "None: no baseline (pass `--baseline <strategy or group>`; the default is "
            "`fedavg` when exactly one group runs it).",
        ]
    base = next(g for g in c.groups if g.name == c.baseline)
    lines = [
        "",
        f"## Paired tests against `{c.label(base)}`",
        "",
        f"| strategy | pairs | mean difference | {LEVEL:.0%} CI of the difference "
        "| paired t p | Wilcoxon p |",
        "|---|---|---|---|---|---|",
    ]
    digits = 4
    for name, t in c.tests.items():
        group = next(g for g in c.groups if g.name == name)
        label = c.label(group) + (f" ({group.overrides})" if group.overrides else "")
        diff = f"{t.mean_diff:+.{digits}f}" if math.isfinite(t.mean_diff) else "—"
        ci = (
            f"[{t.ci_low:+.{digits}f}, {t.ci_high:+.{digits}f}]" if math.isfinite(t.ci_low) else "—"
        )
        lines.append(f"| {label} | {t.n} | {diff} | {ci} | {_p(t.t_p)} | {_p(t.wilcoxon_p)} |")
    smallest = min((t.n for t in c.tests.values()), default=0)
    lines += [
        "",
        "Notes:",
        "",
        f"- Pairs are runs of the two groups with the same seed (fedsim's seed fixes the "
        f"partition, the initial model and the client sampling); the difference is the "
        f"group's final `{c.metric}` minus the baseline's. A pair is used only when both "
        "runs are complete and, where both wrote `partition.txt`, their partitions agree.",
        "- **paired t p**: two-sided paired t-test (Student; `scipy.stats.ttest_rel`) of "
        "the per-seed differences; the CI of the difference is the Student-t interval "
        "of their mean. Both assume roughly normal differences.",
        "- **Wilcoxon p**: two-sided Wilcoxon signed-rank test (`scipy.stats.wilcoxon`, "
        "exact distribution for small samples, zero differences dropped); it assumes no "
        "normality, but with n pairs its smallest possible p is 2/2^n"
        + (f" ({2 / 2**smallest:.3g} for n = {smallest})" if smallest else "")
        + ", so few seeds cannot reach p < 0.05.",
        "- — : fewer than two pairs, or differences without spread (t-test), or all "
        "differences zero (Wilcoxon). No correction for testing several strategies.",
    ]
    lines += [f"- {note}" for note in c.unpaired]
    return lines


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def progress(run: Run) -> str:
    of = f" of {run.planned_rounds}" if run.planned_rounds else ""
    return f"{run.status}, {run.last_round}{of} rounds recorded"


def write_csv(c: Comparison, path: Path) -> None:
    """One row per group: raw numbers (bytes in bytes), ``<column>_mean/_std/_n/_ci95``
    (the Student-t half-width), and the paired test against the baseline."""
    head = ["strategy", "overrides", "group", "runs_used", "runs_total", "incomplete_only"]
    head += ["metric", "target", "bytes"]
    for col in c.columns:
        head += [f"{col.key}_mean", f"{col.key}_std", f"{col.key}_n", f"{col.key}_ci95"]
    head += ["baseline", "pairs", "mean_diff", "diff_ci95_low", "diff_ci95_high"]
    head += ["paired_t_p", "wilcoxon_p"]

    def num(x: float) -> str:
        return "" if math.isnan(x) else repr(x)

    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(head)
        for g in c.groups:
            row: list[Any] = [
                g.strategy,
                g.overrides,
                g.name,
                len(g.used),
                len(g.runs),
                g.incomplete_only,
                c.metric,
                "" if c.target is None else c.target,
                c.bytes_mode,
            ]
            for col in c.columns:
                mean, std, n = c.cells[g.name][col.key]
                row += [num(mean), num(std), n, num(t_halfwidth(std, n))]
            t = c.tests.get(g.name)
            row.append(c.baseline or "")
            if t is None:
                row += [""] * 6
            else:
                row += [t.n, num(t.mean_diff), num(t.ci_low), num(t.ci_high)]
                row += [num(t.t_p), num(t.wilcoxon_p)]
            w.writerow(row)
