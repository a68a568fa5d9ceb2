"""Does augmentation in the shared loop matter?  Two paired comparisons, same budget:

A. FedAvg, ``resnet18`` (CIFAR stem, ``--width``, 0.25 by default for this 2-core CPU) on
   the CIFAR-10 subset, Dirichlet(0.5) over 10 clients (``scenario=cifar10_dirichlet``),
   ``train.augment.recipe=none`` vs ``cifar`` (pad 4 + crop + flip).
B. FedBN, ``cnn_digits`` on ``digits_feature_shift`` at 32 px, ``none`` vs
   ``fraug_digits`` (FRAug's official Digits transforms), 20 local steps x batch 64,
   SGD lr 0.01 momentum 0.5 (the official Digits optimiser).

    .venv/bin/python scripts/augmentation_results.py [--seeds 0 1 2] [--rounds-cifar 30]
        [--rounds-digits 50] [--width 0.25] [--only cifar|digits]

Each seed fixes the partition and the initial model for both arms (paired).  Resumable:
a run whose ``run.json`` says complete is skipped; a run with a checkpoint
(``checkpoint_every=5``) continues with ``fedsim resume``.  After every finished run the
tables are rewritten from what is complete: ``docs/results/augmentation.md`` and
``docs/results/augmentation.json`` (protocol, per arm the seeds and per-seed values, the
paired difference with its 95 % CI and paired-t / Wilcoxon p when >= 2 pairs).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from paired_stats import diff_cell, final_metrics, mean_sd, paired, status

from fedsim.engine.checkpoint import CHECKPOINT_FILE

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "runs" / "augmentation"
DOC = ROOT / "docs" / "results" / "augmentation.md"
SUMMARY = ROOT / "docs" / "results" / "augmentation.json"

#: comparison -> (strategy, scenario overrides, (arm label, recipe) pairs, metric)
COMPARISONS: dict[str, dict[str, Any]] = {
    "cifar": {
        "title": "FedAvg, resnet18, CIFAR-10 subset, Dirichlet(0.5), 10 clients",
        "strategy": "fedavg",
        "overrides": ["scenario=cifar10_dirichlet", "backbone=resnet18"],
        "arms": (("none", "none"), ("cifar", "cifar")),
        "metrics": ("eval/acc", "eval/acc_p10", "eval/global_acc"),
    },
    "digits": {
        "title": "FedBN, cnn_digits, digits_feature_shift at 32 px",
        "strategy": "fedbn",
        "overrides": [
            "scenario=digits_feature_shift",
            "scenario.dataset.image_size=32",
            "backbone=cnn_digits",
            "train.local_steps=20",
            "train.batch_size=64",
            "train.lr=0.01",
            "train.momentum=0.5",
            "train.persist_optimizer=true",
        ],
        "arms": (("none", "none"), ("fraug_digits", "fraug_digits")),
        # FedBN has no global model: per-domain accuracies instead
        "metrics": (
            "eval/acc",
            "eval/acc_domain/mnist",
            "eval/acc_domain/usps",
            "eval/acc_domain/mnistm",
        ),
    },
}


def run_dir(name: str, arm: str, strategy: str, seed: int) -> Path:
    return OUT / f"{name}-{arm}" / strategy / f"seed-{seed}"


def fedsim() -> str:
    return str(Path(sys.executable).parent / "fedsim")


def run_one(name: str, arm: str, recipe: str, seed: int, rounds: int, width: float) -> None:
    spec = COMPARISONS[name]
    path = run_dir(name, arm, spec["strategy"], seed)
    if status(path) == "complete":
        return
    t0 = time.time()
    if (path / CHECKPOINT_FILE).exists():
        cmd = [fedsim(), "resume", str(path)]
    else:
        cmd = [
            fedsim(), "run", *spec["overrides"], f"strategy={spec['strategy']}",
            f"train.augment.recipe={recipe}", f"experiment={name}-{arm}", f"seed={seed}",
            f"rounds={rounds}", f"backbone.width={width}", "checkpoint_every=5",
            "runtime.threads=1", f"output_dir={OUT}", "progress=false", "overwrite=true",
        ]  # fmt: skip
    subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    print(f"{name} {arm} seed {seed}: {time.time() - t0:.0f} s", flush=True)


def summarise(seeds: list[int], rounds: dict[str, int], width: float) -> dict[str, Any]:
    summary: dict[str, Any] = {
        "protocol": {"seeds": seeds, "runtime.threads": 1},
        "comparisons": {},
    }
    for name, spec in COMPARISONS.items():
        arms = spec["arms"]
        done = [
            s
            for s in seeds
            if all(status(run_dir(name, a, spec["strategy"], s)) == "complete" for a, _ in arms)
        ]
        comp: dict[str, Any] = {"title": spec["title"], "seeds": done, "arms": {}, "paired": {}}
        if done:  # the budget the runs were made with (not this invocation's flags)
            first = run_dir(name, arms[0][0], spec["strategy"], done[0])
            config = json.loads((first / "run.json").read_text())["config"]
            comp["rounds"] = int(config["rounds"])
            comp["width"] = float(config["backbone"]["width"])
        for arm, recipe in arms:
            comp["arms"][arm] = {
                "augment": recipe,
                "per_seed": {
                    m: [final_metrics(run_dir(name, arm, spec["strategy"], s))[m] for s in done]
                    for m in spec["metrics"]
                },
            }
        if done:
            (a0, _), (a1, _) = arms
            for m in spec["metrics"]:
                comp["paired"][m] = paired(
                    comp["arms"][a0]["per_seed"][m], comp["arms"][a1]["per_seed"][m]
                )
        summary["comparisons"][name] = comp
    return summary


def markdown(summary: dict[str, Any], command: str) -> str:
    lines = [
        "# Augmentation in the shared training loop: does it matter?",
        "",
        f"Produced by `{command}` (resumable; this file is rewritten after every run).",
        "Final-round metrics; `eval/acc` is the mean over clients of each client's held-out "
        "accuracy, `eval/global_acc` the global model on the global test set.  Paired: each "
        "seed fixes the partition and the initial model for both arms.",
        "",
        "Rounds and width per comparison are those the runs were made with (their "
        "`run.json`); the rest of the protocol is in the script's docstring.",
        "",
    ]
    for comp in summary["comparisons"].values():
        budget = f" ({comp['rounds']} rounds, width {comp['width']:g})" if "rounds" in comp else ""
        lines += [
            f"## {comp['title']}{budget}",
            "",
            f"Seeds complete: {comp['seeds'] or 'none yet'}",
            "",
        ]
        if not comp["seeds"]:
            continue
        (a0, _), (a1, _) = [(k, v) for k, v in comp["arms"].items()]
        lines += [
            f"| metric | {a0} (mean ± sd) | {a1} (mean ± sd) | {a1} − {a0} [95 % CI] "
            "| paired t p | Wilcoxon p |",
            "|---|---|---|---|---|---|",
        ]
        for m, stat in comp["paired"].items():
            cells = [mean_sd(comp["arms"][arm]["per_seed"][m]) for arm in (a0, a1)]
            t_p, w_p = stat.get("t_p", float("nan")), stat.get("wilcoxon_p", float("nan"))
            lines.append(
                f"| {m} | {cells[0]} | {cells[1]} | {diff_cell(stat)} | {t_p:.3f} | {w_p:.3f} |"
            )
        lines.append("")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--rounds-cifar", type=int, default=30)
    parser.add_argument("--rounds-digits", type=int, default=50)
    parser.add_argument("--width", type=float, default=0.25)
    parser.add_argument("--only", choices=sorted(COMPARISONS), default=None)
    parser.add_argument("--report-only", action="store_true")
    ns = parser.parse_args()
    rounds = {"cifar": ns.rounds_cifar, "digits": ns.rounds_digits}
    given = [a for a in sys.argv[1:] if a != "--report-only"]
    command = "python scripts/augmentation_results.py " + " ".join(given)

    def report() -> None:
        summary = summarise(ns.seeds, rounds, ns.width)
        DOC.write_text(markdown(summary, command.strip()))
        SUMMARY.write_text(json.dumps(summary, indent=2) + "\n")

    for seed in [] if ns.report_only else ns.seeds:  # seed by seed: complete pairs first
        for name, spec in COMPARISONS.items():
            if ns.only and name != ns.only:
                continue
            for arm, recipe in spec["arms"]:
                run_one(name, arm, recipe, seed, rounds[name], ns.width)
                report()
    report()
    return 0


if __name__ == "__main__":
    sys.exit(main())
