"""What a batch of augmentation costs next to a training step, on the CPU.

    python -m bench.augment --repeats 3

For each recipe (``cifar``, ``fraug_digits``, ``simclr``) at batch 64 of 3x32x32
normalised images: one fedsim augment call (``Augmenter.__call__``: draw, then apply), the
same pipeline in kornia (if it is importable; it is not a fedsim dependency), and, as the
yardstick, one training step (forward, cross-entropy, backward, SGD step) of fedsim's
``cnn_digits`` and ``resnet18`` (width 1, 32 px, 3 channels, 10 classes) at batch 64.

Every repeat is a fresh process that builds every contender, warms each up, then times
them interleaved, round by round (each round times each contender for a fixed number of
calls), so a load change on a shared machine hits all of them alike.  A figure is the
median over the processes of each process's median time per call.  Each measuring
process runs with ``torch.set_num_threads(--threads)`` (1 by default: the figures are
single-core).  Writes (appends a dated section to) ``bench/results/augment.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from bench.compare_runtimes import machine

RECIPES = ("cifar", "fraug_digits", "simclr")
MODELS = ("cnn_digits", "resnet18")
RESULTS = Path(__file__).resolve().parent / "results" / "augment.md"
# images normalised with CIFAR-10's channel statistics
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)


def kornia_pipeline(recipe: str) -> Any:
    """The recipe as kornia augmentations on [0, 1] pixels (torchvision's conventions)."""
    import kornia.augmentation as K
    import torch

    table: dict[str, list[Any]] = {
        "cifar": [K.RandomCrop((32, 32), padding=4), K.RandomHorizontalFlip(p=0.5)],
        "fraug_digits": [
            K.RandomResizedCrop((32, 32), scale=(0.7, 1.0), ratio=(3 / 4, 4 / 3)),
            K.ColorJitter(0.3, 0.3, 0.3, 0.3, p=1.0),
            K.RandomGrayscale(p=0.1),
        ],
        "simclr": [
            K.RandomResizedCrop((32, 32), scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)),
            K.RandomHorizontalFlip(p=0.5),
            K.ColorJitter(0.4, 0.4, 0.4, 0.1, p=0.8),
            K.RandomGrayscale(p=0.2),
        ],
    }
    return torch.nn.Sequential(*table[recipe])


def on_pixels(pipeline: Any, x: Any, mean: Any, std: Any) -> Any:
    """Run a [0, 1]-pixel pipeline on normalised images, as fedsim's call does."""
    return (pipeline(x * std + mean) - mean) / std


def contenders(batch: int) -> dict[str, tuple[Callable[[], object], int]]:
    """Name -> (one call, calls per timed round)."""
    import torch
    import torch.nn.functional as F

    from fedsim.config import AugmentConfig, BackboneConfig
    from fedsim.data.augment import build_augmenter
    from fedsim.models.backbones import build_backbone

    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    x = (torch.rand(batch, 3, 32, 32, generator=torch.Generator().manual_seed(0)) - mean) / std
    y = torch.randint(0, 10, (batch,), generator=torch.Generator().manual_seed(1))
    out: dict[str, tuple[Callable[[], object], int]] = {}
    gen = torch.Generator().manual_seed(2)
    for recipe in RECIPES:
        aug = build_augmenter(AugmentConfig(recipe=recipe), mean.flatten(), std.flatten())
        assert aug is not None
        out[f"fedsim/{recipe}"] = (partial(aug, x, gen), 20)
    try:
        import kornia  # noqa: F401  (only to see whether it is installed)
    except ImportError:
        pass
    else:
        for recipe in RECIPES:
            out[f"kornia/{recipe}"] = (
                partial(on_pixels, kornia_pipeline(recipe), x, mean, std),
                20,
            )
    for name in MODELS:
        model = build_backbone(BackboneConfig(name=name, width=1.0), (3, 32, 32), 10)
        opt = torch.optim.SGD(model.parameters(), lr=0.01)

        def step(model: torch.nn.Module = model, opt: torch.optim.Optimizer = opt) -> None:
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()

        out[f"step/{name}"] = (step, 2 if name == "cnn_digits" else 1)
    return out


def worker(batch: int, rounds: int, threads: int) -> None:
    """One measuring process: prints ``{name: median seconds per call}`` as JSON."""
    import torch

    torch.set_num_threads(threads)
    runs = contenders(batch)
    for fn, calls in runs.values():  # warm-up
        for _ in range(max(3, calls)):
            fn()
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, (fn, calls) in runs.items():
            for _ in range(calls):
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
    print(json.dumps({name: statistics.median(ts) for name, ts in times.items()}))


def kornia_version() -> str | None:
    try:
        import kornia
    except ImportError:
        return None
    return str(kornia.__version__)


def load_average() -> str:
    try:
        return " / ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "unknown"


def report(
    results: list[dict[str, float]], args: argparse.Namespace, command: str, load: str
) -> str:
    med = {name: 1000 * statistics.median(r[name] for r in results) for name in results[0]}
    spread = {
        name: (1000 * min(r[name] for r in results), 1000 * max(r[name] for r in results))
        for name in results[0]
    }
    resnet, cnn = med["step/resnet18"], med["step/cnn_digits"]
    have_kornia = "kornia/cifar" in med
    lines = [
        f"## augment — {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        "",
        f"Command: `{command}`.",
        f"Machine: {machine()}; `nproc` = {len(os.sched_getaffinity(0))}; "
        f"kornia {kornia_version() or 'not installed'}; load average (1 / 5 / 15 min) {load}.",
        f"Each figure: median over {args.repeats} fresh processes of each process's median "
        f"time per call (batch {args.batch}, 3x32x32, {args.rounds} interleaved rounds per "
        f"process after a warm-up); `torch.set_num_threads({args.threads})` in every measuring "
        "process.  Range over the processes in brackets.",
        "",
        "| recipe | fedsim (ms/batch) | % of resnet18 step | % of cnn_digits step "
        "| kornia (ms/batch) | kornia / fedsim |",
        "|---|---|---|---|---|---|",
    ]
    for recipe in RECIPES:
        ours = med[f"fedsim/{recipe}"]
        lo, hi = spread[f"fedsim/{recipe}"]
        if have_kornia:
            theirs = med[f"kornia/{recipe}"]
            klo, khi = spread[f"kornia/{recipe}"]
            kornia_cells = f"{theirs:.2f} [{klo:.2f}–{khi:.2f}] | {theirs / ours:.1f}×"
        else:
            kornia_cells = "not installed | –"
        lines.append(
            f"| {recipe} | {ours:.2f} [{lo:.2f}–{hi:.2f}] | {100 * ours / resnet:.2f} % "
            f"| {100 * ours / cnn:.1f} % | {kornia_cells} |"
        )
    lines += [
        "",
        "| training step, batch 64 (forward + backward + SGD) | ms |",
        "|---|---|",
    ]
    for name in MODELS:
        lo, hi = spread[f"step/{name}"]
        lines.append(
            f"| {name} (width 1, 32 px, 3 channels) | {med[f'step/{name}']:.1f} [{lo:.1f}–{hi:.1f}] |"
        )
    worst = max(med[f"fedsim/{r}"] for r in RECIPES)
    met = 100 * worst / resnet <= 10
    lines += [
        "",
        f"Target (a recipe costs at most 10 % of a resnet18 width-1 training step on the CPU): "
        f"**{'met' if met else 'not met'}**; the dearest recipe costs {worst:.2f} ms, "
        f"{100 * worst / resnet:.2f} % of the resnet18 step and {100 * worst / cnn:.1f} % of "
        "the cnn_digits step.",
    ]
    if have_kornia:
        ratios = [med[f"kornia/{r}"] / med[f"fedsim/{r}"] for r in RECIPES]
        lines.append(
            f"kornia takes {min(ratios):.1f}× to {max(ratios):.1f}× fedsim's time for the same "
            "pipelines.  kornia also draws its parameters from torch's global generator "
            "(`torch.distributions`, no generator argument), so per-client streams would "
            "need global seeding, which fedsim's library code never does."
        )
        if all(r > 1 for r in ratios):
            lines.append(
                "Chosen: fedsim's own plain-torch ops (`fedsim/data/augment.py`): faster than kornia "
                "on every recipe here, no new dependency, randomness from the caller's "
                "generator, and drawing split from applying so that several clients' batches "
                "are augmented in one call."
            )
        else:
            lines.append(
                "kornia is faster on at least one recipe here; fedsim keeps its own ops for "
                "the caller's generator, the draw/apply split and no new dependency."
            )
    else:
        lines.append("kornia is not installed here: the comparison was skipped.")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3, help="fresh measuring processes")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds per process")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1, help="torch threads per process")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args.batch, args.rounds, args.threads)
        return
    command = "python -m bench.augment " + " ".join(sys.argv[1:])
    if kornia_version() is None:
        print("kornia is not importable: measuring fedsim and the training steps only")
    load_before = load_average()
    results = []
    for i in range(args.repeats):
        proc = subprocess.run(
            [
                *(sys.executable, "-m", "bench.augment", "--worker"),
                *("--batch", str(args.batch), "--rounds", str(args.rounds)),
                *("--threads", str(args.threads)),
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(f"process {i + 1}/{args.repeats} done")
    load = f"{load_before} before the run, {load_average()} after"
    text = report(results, args, command.strip(), load)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    header = "" if args.out.exists() else "# Augmentation cost (`bench/augment.py`)\n\n"
    with args.out.open("a") as f:
        f.write(header + text + "\n")


if __name__ == "__main__":
    main()
