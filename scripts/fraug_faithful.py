"""FRAug vs FedBN on digits_feature_shift at the faithful protocol, paired over seeds.

    .venv/bin/python scripts/fraug_faithful.py [--seeds 0 1 2 3 4] [--rounds 150]
        [--width 0.25] [--with-fedavg] [--variants fraug_lamg0 --doc OTHER.md] [--report-only]

The protocol of the official FRAug Digits run (``docs/results/audit_fraug.md``) as far as
fedsim and this machine go:

* ``digits_feature_shift`` (MNIST, USPS, MNIST-M: one client per domain, 743 training
  images each, of which 669 train and 74 form the selection split) at 32 px, 3 channels;
* the official input augmentation (``train.augment.recipe=fraug_digits``:
  RandomResizedCrop(0.7-1), ColorJitter 0.3, RandomGrayscale 0.1);
* a separate 10 % selection split per client (``evaluation.validation_fraction=0.1``,
  ``holdout_fraction=0``: the other 90 % train); every round each client's test accuracy
  is scored on the whole test file of its domain (``evaluation.test=domain_file``: MNIST
  10,000, USPS 2,007, MNIST-M 2,000 images) and reported at its best selection round
  (``eval/acc_at_best_val``) and at the last round;
* ``--rounds`` x 20 local iterations x batch 64, SGD lr 0.01, momentum 0.5, optimiser
  state kept (the official schedule is 300 rounds; 150 is what the CPU allows);
* ``cnn_digits`` at ``--width`` (1.0 is the official model; 0.25 on a CPU);
* every strategy the same seeds: a seed fixes the partition, the splits and the initial
  model, so the comparison is paired.

Resumable: complete runs are skipped; a run with a checkpoint (every 10 rounds) continues
with ``fedsim resume``.  Seed by seed, so an interrupted sweep has complete pairs.  After
every run the report is rewritten from what is complete: ``docs/results/fraug_faithful.md``
and ``docs/results/fraug_faithful.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from paired_stats import diff_cell, final_metrics, mean_sd, paired, status, wilcoxon_cell

from fedsim.engine.checkpoint import CHECKPOINT_FILE

ROOT = Path(__file__).resolve().parents[1]
DOMAINS = ("mnist", "usps", "mnistm")
PROTOCOL = {
    "scenario": "digits_feature_shift",
    "image_size": 32,
    "augment": "fraug_digits",
    "validation_fraction": 0.1,
    "test": "domain_file",
    "local_steps": 20,
    "batch_size": 64,
    "lr": 0.01,
    "momentum": 0.5,
}


#: ``--variants``: name -> (registered strategy, extra overrides).  A variant's runs live
#: under their own experiment (``fraug_faithful-<width>-<name>``), paired with the same
#: FedBN runs.  ``fraug_lamg0`` drops the generator's distance reward (``- lam_G Dist_G``,
#: unbounded: it diverges in every seed of the faithful runs, fraug_faithful_notes.md).
VARIANTS: dict[str, tuple[str, list[str]]] = {
    "fraug_lamg0": ("fraug", ["strategy.lam_g=0"]),
}


def experiment(strategy: str, width: float) -> str:
    base = f"fraug_faithful-{width:g}"
    return f"{base}-{strategy}" if strategy in VARIANTS else base


def overrides(
    strategy: str, seed: int, rounds: int, width: float, out: Path, every: int = 10
) -> list[str]:
    registered, extra = VARIANTS.get(strategy, (strategy, []))
    return [*_overrides(registered, seed, rounds, width, out, every), *extra,
            f"experiment={experiment(strategy, width)}"]  # fmt: skip


def _overrides(
    strategy: str, seed: int, rounds: int, width: float, out: Path, every: int
) -> list[str]:
    p = PROTOCOL
    return [
        f"scenario={p['scenario']}", f"scenario.dataset.image_size={p['image_size']}",
        f"train.augment.recipe={p['augment']}",
        f"scenario.evaluation.validation_fraction={p['validation_fraction']}",
        "scenario.evaluation.holdout_fraction=0", f"scenario.evaluation.test={p['test']}",
        "scenario.evaluation.global_test=false", f"strategy={strategy}",
        f"train.local_steps={p['local_steps']}", f"train.batch_size={p['batch_size']}",
        f"train.lr={p['lr']}", f"train.momentum={p['momentum']}",
        "train.persist_optimizer=true", "backbone=cnn_digits", f"backbone.width={width}",
        f"seed={seed}", f"rounds={rounds}", "eval_every=1", f"checkpoint_every={every}",
        "runtime.threads=1", f"output_dir={out}",
        "progress=false", "overwrite=true",
    ]  # fmt: skip


def run_dir(out: Path, strategy: str, seed: int, width: float) -> Path:
    registered = VARIANTS.get(strategy, (strategy, []))[0]
    return out / experiment(strategy, width) / registered / f"seed-{seed}"


def run_one(
    strategy: str, seed: int, rounds: int, width: float, out: Path, every: int = 10
) -> None:
    path = run_dir(out, strategy, seed, width)
    if status(path) == "complete":
        return
    fedsim = str(Path(sys.executable).parent / "fedsim")
    if (path / CHECKPOINT_FILE).exists():
        cmd = [fedsim, "resume", str(path)]
    else:
        cmd = [fedsim, "run", *overrides(strategy, seed, rounds, width, out, every)]
    t0 = time.time()
    subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    print(f"{strategy} seed {seed}: {time.time() - t0:.0f} s", flush=True)


def figures(final: dict[str, float]) -> dict[str, float]:
    """Per domain and mean, at the best selection round and at the last round."""
    out = {"best/mean": final["eval/acc_at_best_val"], "last/mean": final["eval/acc"]}
    for d in DOMAINS:
        out[f"best/{d}"] = final[f"eval/acc_at_best_val_domain/{d}"]
        out[f"last/{d}"] = final[f"eval/acc_domain/{d}"]
    return out


def summarise(strategies: list[str], seeds: list[int], rounds: int, width: float,
              out: Path) -> dict[str, Any]:  # fmt: skip
    done = [s for s in seeds if all(status(run_dir(out, st, s, width)) == "complete"
                                    for st in strategies)]  # fmt: skip
    per: dict[str, Any] = {}
    for st in strategies:
        rows = [figures(final_metrics(run_dir(out, st, s, width))) for s in done]
        keys = list(rows[0]) if rows else []
        per[st] = {"seeds": done, "per_seed": {k: [r[k] for r in rows] for k in keys}}
    stats: dict[str, Any] = {}
    if done:
        pairs = [(other, "fedbn") for other in strategies if other != "fedbn"]
        pairs += [(v, VARIANTS[v][0]) for v in strategies if v in VARIANTS]  # vs its base
        for other, base in pairs:
            if base in per:
                stats[f"{other}-{base}"] = {
                    k: paired(per[base]["per_seed"][k], per[other]["per_seed"][k])
                    for k in per[base]["per_seed"]
                }
    return {
        "protocol": {**PROTOCOL, "rounds": rounds, "width": width, "holdout_fraction": 0.0},
        "strategies": per,
        "paired": stats,
        "course": {st: course(out, st, done, width, rounds) for st in strategies} if done else {},
    }


#: windows of rounds over which ``course`` averages the test accuracy
WINDOWS = ((1, 50), (51, 100), (101, 130), (131, 150))


def course(out: Path, strategy: str, seeds: list[int], width: float, rounds: int) -> dict:
    """Over the seeds: the mean test accuracy (%) per window of rounds, and the selection
    split's behaviour: each client's best selection accuracy (%), how many rounds tie at
    it, and the round selected (the first of them)."""
    acc: dict[str, list[float]] = {f"{lo}-{hi}": [] for lo, hi in WINDOWS if lo <= rounds}
    best, ties, chosen = [], [], []
    for seed in seeds:
        path = run_dir(out, strategy, seed, width) / "metrics.jsonl"
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        for lo, hi in WINDOWS:
            acc_w = [r["eval/acc"] for r in rows if lo <= r["round"] <= hi and "eval/acc" in r]
            if acc_w:
                acc[f"{lo}-{hi}"] += acc_w
        for key in sorted(k for k in rows[0] if k.startswith("eval/val_acc_client/")):
            vals = [r[key] for r in rows]
            top = max(vals)
            best.append(100 * top)
            ties.append(vals.count(top))
            chosen.append(rows[vals.index(top)]["round"])
    return {
        "acc_by_window": {w: round(100 * statistics.fmean(v), 2) for w, v in acc.items() if v},
        "best_val_acc": [round(min(best), 1), round(max(best), 1)],
        "max_tied_rounds": max(ties),
        "selected_round": {
            "median": statistics.median(chosen),
            "min": min(chosen),
            "max": max(chosen),
        },
    }


def markdown(summary: dict[str, Any], command: str, doc: Path) -> str:
    """The report; the written discussion comes from ``<doc stem>_notes.md`` beside it."""
    proto = summary["protocol"]
    per = summary["strategies"]
    lines = [
        "# FRAug vs FedBN at the faithful protocol (digits_feature_shift, 32 px)",
        "",
        f"Produced by `{command}`; summary `{doc.with_suffix('.json').name}` (rewritten after "
        "every run).",
        "",
        f"Protocol: {proto['rounds']} rounds x {proto['local_steps']} local iterations, batch "
        f"{proto['batch_size']}, SGD lr {proto['lr']}, momentum {proto['momentum']}, "
        f"optimiser state kept; `cnn_digits` width {proto['width']}; augmentation "
        f"`{proto['augment']}`; 10 % selection split per client, the rest trains; test = "
        "the whole test file of the client's domain (MNIST 10,000, USPS 2,007, MNIST-M "
        "2,000).  *best*: each client's test accuracy at its best selection round; *last*: "
        "the last round.  Accuracy in %, mean ± sd over the seeds listed; differences in "
        "points with a 95 % t interval; paired t and Wilcoxon two-sided p.",
        "",
    ]
    seeds = next(iter(per.values()))["seeds"] if per else []
    lines.append(f"Seeds complete (every strategy): {seeds or 'none yet'}")
    lines.append("")
    if not seeds:
        return "\n".join(lines) + "\n"
    keys = list(next(iter(per.values()))["per_seed"])
    lines += ["| figure | " + " | ".join(per) + " |", "|---" * (len(per) + 1) + "|"]
    for k in keys:
        lines.append(f"| {k} | " + " | ".join(mean_sd(per[s]["per_seed"][k]) for s in per) + " |")
    for pair, table in summary["paired"].items():
        lines += ["", f"### {pair} (paired over seeds {seeds})", "",
                  "| figure | difference [95 % CI] | paired t p | Wilcoxon p |",
                  "|---|---|---|---|"]  # fmt: skip
        for k, st in table.items():
            lines.append(
                f"| {k} | {diff_cell(st)} | {st.get('t_p', float('nan')):.3f} "
                f"| {wilcoxon_cell(st)} |"
            )
    if summary.get("course"):
        windows = list(next(iter(summary["course"].values()))["acc_by_window"])
        lines += ["", "### Course over rounds and the selection split", "",
                  "Mean test accuracy (%) over the rounds of each window, all seeds; the "
                  "selection split per client: best selection accuracy (min–max over "
                  "clients and seeds), most rounds tied at it, and the round selected (the "
                  "first best).", "",
                  "| strategy | " + " | ".join(f"r{w}" for w in windows)
                  + " | best selection acc | most tied rounds | selected round: median (min–max) |",
                  "|---" * (len(windows) + 4) + "|"]  # fmt: skip
        for st, c in summary["course"].items():
            sel = c["selected_round"]
            lines.append(
                f"| {st} | " + " | ".join(f"{c['acc_by_window'][w]:.1f}" for w in windows)
                + f" | {c['best_val_acc'][0]:.1f}–{c['best_val_acc'][1]:.1f} "
                f"| {c['max_tied_rounds']} | {sel['median']:g} ({sel['min']}–{sel['max']}) |"
            )  # fmt: skip
    notes = doc.with_name(f"{doc.stem}_notes.md")
    if notes.exists():
        lines += ["", notes.read_text().rstrip()]
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--rounds", type=int, default=150)
    ap.add_argument("--width", type=float, default=0.25)
    ap.add_argument("--with-fedavg", action="store_true")
    ap.add_argument("--variants", nargs="*", default=[], choices=sorted(VARIANTS),
                    help="also run these variants (give them their own --doc)")  # fmt: skip
    ap.add_argument("--out", type=Path, default=ROOT / "runs")
    ap.add_argument("--doc", type=Path, default=ROOT / "docs" / "results" / "fraug_faithful.md")
    ap.add_argument("--report-only", action="store_true")
    ap.add_argument("--checkpoint-every", type=int, default=10)
    ns = ap.parse_args()
    strategies = ["fedbn", "fraug", *(["fedavg"] if ns.with_fedavg else []), *ns.variants]
    given = [a for a in sys.argv[1:] if a != "--report-only"]
    command = "python scripts/fraug_faithful.py " + " ".join(given)

    def report() -> None:
        summary = summarise(strategies, ns.seeds, ns.rounds, ns.width, ns.out)
        ns.doc.write_text(markdown(summary, command.strip(), ns.doc))
        ns.doc.with_suffix(".json").write_text(json.dumps(summary, indent=2) + "\n")

    if not ns.report_only:
        for seed in ns.seeds:
            for strategy in strategies:
                run_one(strategy, seed, ns.rounds, ns.width, ns.out, ns.checkpoint_every)
                report()
    report()
    return 0


if __name__ == "__main__":
    sys.exit(main())
