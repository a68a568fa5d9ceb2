"""GPU benchmark in the shape of pfl-research's CIFAR-10 benchmark: fedsim vs a plain loop.

    python -m bench.gpu                                  # on a CUDA machine: both models
    python -m bench.gpu --device cpu --clients 20 --per-round 4 --rounds 2 --samples 12 \\
        --models cnn_digits --repeats 1 --no-write      # the CPU smoke test (tests/)

Shape (pfl-research, Granqvist et al. 2024, arXiv 2404.06430, CIFAR-10 benchmark): 1,000
clients, 50 per round, batch 10, 1 local epoch, FedAvg with SGD.  The models are the
small CNN (``backbone=cnn_digits``, the FedBN digits CNN, at ``--cnn-width``) and
ResNet-18 at reduced width (``backbone=resnet18``, ``--resnet-width``).  The data are
CIFAR-shaped (32x32x3) synthetic images by default (speed does not depend on pixel
values; the repository's CIFAR-10 copy has 7,500 images, too few for 1,000 x 50), or any
npz file with ``x`` (uint8 NxHxWx3) and ``y`` via ``--data``.

Contenders, each in a fresh process (``bench.run_one``), medians of ``--repeats``:
``plain`` (bench.plain_loop: the same training as a plain PyTorch loop, client by
client), ``inline`` (fedsim, clients one by one) and ``vec`` (fedsim with
``runtime.vectorize=auto``: a round's clients in one batched ``torch.func`` step on the
device, data moved to the device once per round).  ``--precision bf16`` runs every
contender under bf16 autocast (CUDA only).  Reported: seconds per round and training
images per second (``rounds x per_round x samples / loop seconds``, the loop including
the final evaluation).  Results are appended to ``bench/results/gpu.md``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.compare_runtimes import machine, measure

HERE = Path(__file__).resolve().parent


def scenario(out: Path, clients: int, per_round: int, samples: int, data: str) -> Path:
    """A scenario file: ``clients`` IID clients of ``samples`` images, ``per_round`` each round."""
    if data == "synthetic":
        rng = np.random.default_rng(0)
        n = clients * samples
        path = out / "synthetic_cifar.npz"
        np.savez(
            path,
            x=rng.integers(0, 256, (n + 1000, 32, 32, 3), dtype=np.uint8),
            y=rng.integers(0, 10, n + 1000),
        )
        data = str(path)
    scn = out / "gpu_bench.yaml"
    scn.write_text(
        f"""name: gpu_bench
num_clients: {clients}
dataset:
  sources: [{{name: cifar, format: npz, train: {data}}}]
  test_fraction: {1000 / (clients * samples + 1000):.6f}
partition: {{kind: iid}}
participation: {{clients_per_round: {per_round}}}
evaluation: {{holdout_fraction: 0.0, fraction: 0.0, global_test: true}}
"""
    )
    return scn


def main(argv: list[str] | None = None) -> str:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--clients", type=int, default=1000)
    ap.add_argument("--per-round", type=int, default=50)
    ap.add_argument("--samples", type=int, default=50, help="images per client")
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--batch", type=int, default=10)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--models", default="cnn_digits,resnet18")
    ap.add_argument("--cnn-width", type=float, default=1.0)
    ap.add_argument("--resnet-width", type=float, default=0.25)
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--modes", default="plain,inline,vec")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--data", default="synthetic")
    ap.add_argument("--no-write", action="store_true", help="print only (tests)")
    args = ap.parse_args(argv)
    modes = args.modes.split(",")
    names = {
        "plain": "plain PyTorch loop",
        "inline": "fedsim (clients one by one)",
        "vec": "fedsim runtime.vectorize=auto",
    }
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        scn = scenario(Path(tmp), args.clients, args.per_round, args.samples, args.data)
        for model in args.models.split(","):
            width = args.resnet_width if model == "resnet18" else args.cnn_width
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
            ]
            res: dict[str, list[dict]] = {m: [] for m in modes}
            for rep in range(args.repeats):
                for mode in modes:
                    r = measure("custom", mode, extra)
                    res[mode].append(r)
                    print(
                        f"[{rep + 1}/{args.repeats}] {model} {mode}: loop {r['loop_s']:.2f} s",
                        file=sys.stderr,
                    )
            images = args.rounds * args.per_round * args.samples
            base = statistics.median(r["loop_s"] for r in res[modes[0]])
            for mode in modes:
                loop = statistics.median(r["loop_s"] for r in res[mode])
                acc = res[mode][0].get("global_acc")
                rows.append(
                    f"| {model} (width {width:g}) | {names.get(mode, mode)} | {loop / args.rounds:.3f} "
                    f"| {images / loop:,.0f} | {loop / base:.2f} | "
                    + (f"{acc:.4f}" if acc is not None else "—")
                    + " |"
                )
    cmd = "python -m bench.gpu " + " ".join(sys.argv[1:] if argv is None else argv)
    text = (
        "\n".join(
            [
                f"## gpu — {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
                "",
                f"Machine: {machine()}, device {args.device}.  Command: `{cmd}`.  {args.clients} clients "
                f"x {args.samples} images, {args.per_round} per round, {args.rounds} rounds, batch "
                f"{args.batch}, 1 local epoch, {args.precision}; medians of {args.repeats} fresh processes.",
                "",
                f"| model | contender | s / round | images / s | loop / {modes[0]} | final accuracy |",
                "|---|---|---|---|---|---|",
                *rows,
            ]
        )
        + "\n"
    )
    print(text)
    if not args.no_write:
        with open(HERE / "results" / "gpu.md", "a") as f:
            f.write(text + "\n")
    return text


if __name__ == "__main__":
    main()
