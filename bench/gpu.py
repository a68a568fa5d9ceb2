"""GPU benchmark in the shape of pfl-research's CIFAR-10 benchmark: fedsim vs a plain loop.

    python -m bench.gpu                          # on a CUDA machine: both models, appends results/gpu.md
    python -m bench.gpu --out DIR                # gpu.md and gpu.json into DIR (bench/gpu_campaign.sh)
    python -m bench.gpu --device cpu --clients 12 --per-round 3 --samples 8 --rounds 2 \\
        --models cnn_cifar --repeats 1 --no-write       # the CPU smoke test (tests/)

Shape (pfl-research, Granqvist et al. 2024, arXiv 2404.06430, CIFAR-10 benchmark): 50
clients per round, 50 images each, batch 10, 1 local epoch, FedAvg with SGD, the simple
CNN.  pfl-research draws its clients from all 50,000 CIFAR-10 training images; the
repository's balanced subset has 7,500, so the federation here is 150 clients x 50 images
(``--clients``, ``--samples``; ``max_samples`` caps the training file at their product)
and the global test set is the subset's 1,500 test images.  The models are the simple CNN
(``backbone=cnn_cifar``, the NIID-Bench LeNet-style CNN, 62,006 parameters, at
``--cnn-width``) and ResNet-18 with the CIFAR stem (``backbone=resnet18``,
``--resnet-width``).  ``--data synthetic`` uses random CIFAR-shaped images instead (speed
does not depend on pixel values), ``--data FILE.npz`` any ``x``/``y`` file.

Contenders, each in a fresh process (``bench.run_one``), interleaved, medians of
``--repeats``: ``plain`` (bench.plain_loop: the same training as a plain PyTorch loop,
client by client, on the same device), ``inline`` (fedsim, clients one by one) and ``vec``
(fedsim with ``runtime.vectorize=auto``: a round's clients in one batched ``torch.func``
step, their data moved to the device once per round).  ``--precision bf16`` runs every
contender under bf16 autocast (CUDA only).  Reported: seconds per round and training
images per second (``rounds x per_round x samples / loop seconds``; the loop includes round
1, with its CUDA warm-up, and the final evaluation, alike for every contender), the ratio
of images/s to the plain loop's, and for fedsim the median time of rounds 2.. (from its
``metrics.jsonl``).  ``--deadline-s`` stops starting new repeats once that much time has
passed (at least one repeat always runs); the table then says how many it has.

Results: appended to ``bench/results/gpu.md`` (refused unless ``--device`` is CUDA), or with
``--out DIR`` written to ``DIR/gpu.md`` and ``DIR/gpu.json`` (every run's raw numbers,
rewritten after each run so that an interrupted campaign keeps what it measured).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.compare_runtimes import machine, measure

HERE = Path(__file__).resolve().parent
NAMES = {
    "plain": "plain PyTorch loop",
    "inline": "fedsim (clients one by one)",
    "vec": "fedsim runtime.vectorize=auto",
}
CIFAR_TRAIN = "cifar10/cifar10_train.npz"
CIFAR_TEST = "cifar10/cifar10_test.npz"
TARGETS = {"inline": 0.85, "vec": 2.0}  # x the plain loop's images/s (issue 24, simple CNN)


def data_root() -> Path:
    """Where relative data paths resolve, as fedsim resolves them (``$FEDSIM_DATA``)."""
    env = os.environ.get("FEDSIM_DATA", "")
    return Path(env) if env else HERE.parent.parent / "shared" / "data"


def scenario(out: Path, clients: int, per_round: int, samples: int, data: str) -> Path:
    """A scenario file: ``clients`` IID clients of ``samples`` images, ``per_round`` each round."""
    n = clients * samples
    if data == "cifar":
        with np.load(data_root() / CIFAR_TRAIN) as f:
            have = len(f["y"])
        if n > have:
            raise SystemExit(
                f"bench.gpu: {clients} x {samples} images need {n}; the CIFAR-10 subset has "
                f"{have} (use fewer clients, or --data synthetic)"
            )
        source = (
            f"{{name: cifar10, format: npz, train: {CIFAR_TRAIN}, test: {CIFAR_TEST}, "
            f"max_samples: {n}}}"
        )
        test_fraction = 0.2  # unused: the source has a test file
    else:
        if data == "synthetic":
            rng = np.random.default_rng(0)
            path = out / "synthetic_cifar.npz"
            np.savez(
                path,
                x=rng.integers(0, 256, (n + 1000, 32, 32, 3), dtype=np.uint8),
                y=rng.integers(0, 10, n + 1000),
            )
            data = str(path)
        source = f"{{name: images, format: npz, train: {data}, max_samples: {n}}}"
        with np.load(data) as f:
            total = len(f["y"])
        if total <= n:
            raise SystemExit(f"bench.gpu: {data} has {total} images, need more than {n}")
        test_fraction = min(0.5, 1000 / total)
    scn = out / "gpu_bench.yaml"
    scn.write_text(
        f"""name: gpu_bench
num_clients: {clients}
dataset:
  sources: [{source}]
  test_fraction: {test_fraction:.6f}
partition: {{kind: iid}}
participation: {{clients_per_round: {per_round}}}
evaluation: {{holdout_fraction: 0.0, fraction: 0.0, global_test: true}}
"""
    )
    return scn


def resolve_data(spec: str) -> str:
    """``auto``: the CIFAR-10 subset when it is under the data root, else synthetic."""
    if spec == "auto":
        return "cifar" if (data_root() / CIFAR_TRAIN).exists() else "synthetic"
    if spec == "cifar" and not (data_root() / CIFAR_TRAIN).exists():
        raise SystemExit(f"bench.gpu: {data_root() / CIFAR_TRAIN} not found (set FEDSIM_DATA)")
    return spec


def gpu_line(device: str) -> str:
    """The accelerator, its driver and torch's CUDA, for the results' device line."""
    if not device.startswith("cuda"):
        return "no GPU (device cpu)"
    parts = []
    if shutil.which("nvidia-smi"):
        q = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
            capture_output=True,
            text=True,
        )
        if q.returncode == 0 and q.stdout.strip():
            name, driver, mem = (s.strip() for s in q.stdout.splitlines()[0].rsplit(",", 2))
            parts.append(f"{name} ({mem}), driver {driver}")
    import torch

    parts.append(f"CUDA {torch.version.cuda}")
    return ", ".join(parts)


def round_times(run_dir: Path) -> list[float]:
    """fedsim's ``time/round_s`` of every round of the run under ``run_dir``."""
    times = []
    for path in run_dir.rglob("metrics.jsonl"):
        for line in path.read_text().splitlines():
            row = json.loads(line)
            if "time/round_s" in row:
                times.append(float(row["time/round_s"]))
    return times


def summarise(runs: list[dict[str, Any]], args: argparse.Namespace) -> list[dict[str, Any]]:
    """Medians per (model, contender), with images/s relative to the plain loop."""
    images = args.rounds * args.per_round * args.samples
    out = []
    for model in args.models.split(","):
        rows = {}
        for mode in args.modes.split(","):
            mine = [r for r in runs if r["model"] == model and r["mode"] == mode]
            if not mine:
                continue
            loop = statistics.median(r["loop_s"] for r in mine)
            steady = [statistics.median(r["round_s"][1:]) for r in mine if len(r["round_s"]) > 1]
            rows[mode] = {
                "model": model,
                "width": mine[0]["width"],
                "mode": mode,
                "repeats": len(mine),
                "loop_s": loop,
                "s_per_round": loop / args.rounds,
                "images_per_s": images / loop,
                "steady_s_per_round": statistics.median(steady) if steady else None,
                "global_acc": mine[0]["global_acc"],
            }
        base = rows.get("plain")
        for row in rows.values():
            row["vs_plain"] = base["loop_s"] / row["loop_s"] if base else None
        out += rows.values()
    return out


def markdown(summary: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    a = meta["args"]
    reps = sorted({s["repeats"] for s in summary})
    lines = [
        f"## gpu — {meta['date']}",
        "",
        f"Device: {meta['gpu']}.  Machine: {meta['machine']}.  Command: `{meta['command']}`.  "
        f"Data: {meta['data']}.  {a['clients']} clients x {a['samples']} images, "
        f"{a['per_round']} per round, {a['rounds']} rounds, batch {a['batch']}, 1 local epoch, "
        f"SGD lr {a['lr']}, FedAvg, {a['precision']}; medians of "
        f"{'/'.join(str(r) for r in reps)} fresh processes per contender.  The loop time "
        "includes round 1 (CUDA warm-up) and the final evaluation; `rounds 2..` is fedsim's own "
        "median round time after the first.",
        "",
        "| model | contender | s / round | images / s | x plain images/s | rounds 2.. s / round "
        "| final accuracy |",
        "|---|---|---|---|---|---|---|",
    ]
    for s in summary:
        ratio = f"{s['vs_plain']:.2f}" if s["vs_plain"] is not None else "—"
        steady = f"{s['steady_s_per_round']:.3f}" if s["steady_s_per_round"] is not None else "—"
        acc = f"{s['global_acc']:.4f}" if s["global_acc"] is not None else "—"
        lines.append(
            f"| {s['model']} (width {s['width']:g}) | {NAMES.get(s['mode'], s['mode'])} "
            f"| {s['s_per_round']:.3f} | {s['images_per_s']:,.0f} | {ratio} | {steady} | {acc} |"
        )
    cnn = {s["mode"]: s for s in summary if s["model"] == "cnn_cifar"}
    checks = [
        f"{NAMES[m]} {cnn[m]['vs_plain']:.2f}x (target >= {t:g}x: "
        + ("met" if cnn[m]["vs_plain"] >= t else "not met")
        + ")"
        for m, t in TARGETS.items()
        if m in cnn and cnn[m]["vs_plain"] is not None
    ]
    if checks:
        lines += ["", "Targets, cnn_cifar, images/s vs the plain loop: " + "; ".join(checks) + "."]
    return "\n".join(lines) + "\n"


def from_json(path: Path) -> str:
    """Rewrite ``gpu.md`` beside ``path`` from the runs it holds (after an interruption)."""
    doc = json.loads(path.read_text())
    doc["summary"] = summarise(doc["runs"], argparse.Namespace(**doc["args"]))
    path.write_text(json.dumps(doc, indent=1) + "\n")
    text = markdown(doc["summary"], doc)
    (path.parent / "gpu.md").write_text(text)
    print(text)
    return text


def main(argv: list[str] | None = None) -> str:
    ap = argparse.ArgumentParser(description="fedsim vs a plain PyTorch loop on one device")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--clients", type=int, default=150)
    ap.add_argument("--per-round", type=int, default=50)
    ap.add_argument("--samples", type=int, default=50, help="images per client")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--batch", type=int, default=10)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--models", default="cnn_cifar,resnet18")
    ap.add_argument("--cnn-width", type=float, default=1.0)
    ap.add_argument("--resnet-width", type=float, default=1.0)
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--modes", default="plain,inline,vec")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--data", default="auto", help="auto | cifar | synthetic | FILE.npz")
    ap.add_argument("--deadline-s", type=float, default=0.0, help="0 = none")
    ap.add_argument("--out", type=Path, default=None, help="write gpu.md and gpu.json here")
    ap.add_argument("--no-write", action="store_true", help="print only (tests)")
    ap.add_argument(
        "--from-json", type=Path, default=None, help="gpu.md from the runs of a (partial) gpu.json"
    )
    args = ap.parse_args(argv)
    if args.from_json is not None:
        return from_json(args.from_json)
    to_results = args.out is None and not args.no_write
    if to_results and not args.device.startswith("cuda"):
        raise SystemExit(
            "bench.gpu: results/gpu.md holds GPU figures only; use --out or --no-write"
        )
    t0 = time.perf_counter()
    data = resolve_data(args.data)
    argv_used = sys.argv[1:] if argv is None else argv
    meta: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": "python -m bench.gpu " + " ".join(argv_used),
        "machine": machine(),
        "gpu": gpu_line(args.device),
        "data": (
            f"CIFAR-10 subset ({data_root() / CIFAR_TRAIN})"
            if data == "cifar"
            else f"{data} CIFAR-shaped images"
        ),
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
    }
    runs: list[dict[str, Any]] = []
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)

    def save(summary: list[dict[str, Any]] | None = None) -> None:
        if args.out is not None:
            doc = {**meta, "runs": runs, "summary": summary}
            (args.out / "gpu.json").write_text(json.dumps(doc, indent=1) + "\n")

    with tempfile.TemporaryDirectory() as tmp:
        scn = scenario(Path(tmp), args.clients, args.per_round, args.samples, data)
        for rep in range(args.repeats):
            if rep > 0 and args.deadline_s > 0 and time.perf_counter() - t0 > args.deadline_s:
                print(f"bench.gpu: deadline reached after {rep} repeats", file=sys.stderr)
                break
            for model in args.models.split(","):
                width = args.resnet_width if model == "resnet18" else args.cnn_width
                for mode in args.modes.split(","):  # interleaved: drift hits every contender
                    run_dir = Path(tmp) / f"{model}-{mode}-{rep}"
                    extra = [
                        f"scenario={scn}",
                        f"backbone={model}",
                        f"backbone.width={width}",
                        f"rounds={args.rounds}",
                        f"eval_every={args.rounds}",
                        "train.local_epochs=1",
                        f"train.batch_size={args.batch}",
                        f"train.lr={args.lr}",
                        f"device={args.device}",
                        f"precision={args.precision}",
                        f"output_dir={run_dir}",
                    ]
                    r = measure("custom", mode, extra)
                    runs.append(
                        {
                            "model": model,
                            "width": width,
                            "mode": mode,
                            "repeat": rep + 1,
                            "loop_s": r["loop_s"],
                            "wall_s": r["wall_s"],
                            "global_acc": r.get("global_acc"),
                            "round_s": round_times(run_dir),
                        }
                    )
                    save()
                    print(
                        f"[{rep + 1}/{args.repeats}] {model} {mode}: loop {r['loop_s']:.2f} s, "
                        f"process {r['wall_s']:.1f} s",
                        file=sys.stderr,
                    )
    summary = summarise(runs, args)
    save(summary)
    text = markdown(summary, meta)
    print(text)
    if args.out is not None:
        (args.out / "gpu.md").write_text(text)
    elif to_results:
        with open(HERE / "results" / "gpu.md", "a") as f:
            f.write(text + "\n")
    return text


if __name__ == "__main__":
    main()
