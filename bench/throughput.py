"""Training throughput: fedsim against a plain PyTorch loop doing the same work.

    python -m bench.throughput --repeats 3 [--width 0.25] [--batch 64] [--clients 4]

A compute-bound vision job: FedAvg, ``resnet18`` (CIFAR stem, ``--width``) on the CIFAR-10
subset split Dirichlet(0.5) over ``--clients`` clients (``scenario=cifar10_dirichlet``),
every client one local epoch per round at batch ``--batch`` with the ``cifar`` augmentation
(pad 4 + crop + flip), SGD lr 0.05, one torch thread per process.

Contenders, each in its own fresh process, interleaved repeat by repeat:

* ``fedsim``: ``fedsim.run`` (the Python API: Flower messages, channels, wrappers, the
  tracking callbacks, everything a user's run does) for 2 rounds; the figure is round 2's
  ``time/round_s`` (round 1 pays one-off warm-up), with no evaluation in that round;
* ``plain``: the same partitions, model, batches and augmentation draws written as the
  loop a researcher would write: for each client, load the global weights, an SGD
  optimiser, for each batch: augment, forward, cross-entropy, backward, step; then the
  sample-weighted average.  Timed over its second round too.

Samples per second = training samples of the round / round time.  A figure is the median
over ``--repeats`` processes; the ratio is fedsim's / plain's.  Appends a dated section to
``bench/results/throughput.md``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.compare_runtimes import machine

RESULTS = Path(__file__).resolve().parent / "results" / "throughput.md"


def overrides(ns: argparse.Namespace, out: str) -> list[str]:
    return [
        "scenario=cifar10_dirichlet",
        f"scenario.num_clients={ns.clients}",
        "backbone=resnet18",
        f"backbone.width={ns.width}",
        "train.augment.recipe=cifar",
        f"train.batch_size={ns.batch}",
        "train.lr=0.05",
        "rounds=2",
        "eval_every=2",
        "scenario.evaluation.fraction=0",
        "scenario.evaluation.global_test=false",
        "runtime.threads=1",
        "progress=false",
        f"output_dir={out}",
    ]


def run_fedsim(ns: argparse.Namespace) -> dict[str, float]:
    import fedsim

    with tempfile.TemporaryDirectory() as out:
        result = fedsim.run(overrides=overrides(ns, out))
        rows = [
            json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()
        ]
        from fedsim.data.federation import load_federation
        from fedsim.engine.conf import compose

        cfg = compose(overrides(ns, out))
        fed = load_federation(cfg.scenario, cfg.seed)
        samples = sum(len(p) for p in fed.train_parts)
    return {"round_s": float(rows[1]["time/round_s"]), "samples": float(samples)}


def run_plain(ns: argparse.Namespace) -> dict[str, float]:
    import torch
    import torch.nn.functional as F

    from fedsim.algorithms.training import batches
    from fedsim.data.augment import build_augmenter
    from fedsim.data.federation import load_federation
    from fedsim.engine.conf import compose
    from fedsim.models.modelzoo import initial_model
    from fedsim.seeding import torch_generator

    torch.set_num_threads(1)
    cfg = compose(overrides(ns, tempfile.gettempdir()))
    fed = load_federation(cfg.scenario, cfg.seed)
    model = initial_model(cfg.backbone, fed.data.input_shape, fed.data.num_classes, cfg.seed)
    aug = build_augmenter(cfg.train.augment, fed.data.mean, fed.data.std, cfg.scenario.augment)
    assert aug is not None
    glob = {k: v.clone() for k, v in model.state_dict().items()}
    data = [fed.client(pid) for pid in range(cfg.scenario.num_clients)]
    round_s = 0.0
    for rnd in (1, 2):
        t0 = time.perf_counter()
        states, weights = [], []
        for pid, d in enumerate(data):
            model.load_state_dict(glob)
            model.train()
            opt = torch.optim.SGD(model.parameters(), lr=cfg.train.lr)
            gen = torch_generator(cfg.seed, "train", rnd, pid)
            aug_gen = torch_generator(cfg.seed, "augment", rnd, pid)
            for idx in batches(len(d.y), cfg.train.batch_size, 1, 0, gen):
                xb = aug(d.x[idx], aug_gen)
                loss = F.cross_entropy(model(xb), d.y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            states.append({k: v.detach().clone() for k, v in model.state_dict().items()})
            weights.append(len(d.y))
        total = float(sum(weights))
        for k, ref in glob.items():
            avg = sum(s[k].double() * (w / total) for s, w in zip(states, weights, strict=True))
            glob[k] = avg.to(ref.dtype)  # type: ignore[union-attr]
        round_s = time.perf_counter() - t0
    return {"round_s": round_s, "samples": float(sum(len(d.y) for d in data))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--width", type=float, default=0.25)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--worker", choices=["fedsim", "plain"], help=argparse.SUPPRESS)
    ap.add_argument("--no-write", action="store_true", help="print only")
    ns = ap.parse_args()
    if ns.worker:
        fn = run_fedsim if ns.worker == "fedsim" else run_plain
        print(json.dumps(fn(ns)))
        return
    args = ["--width", str(ns.width), "--batch", str(ns.batch), "--clients", str(ns.clients)]
    results: dict[str, list[dict[str, float]]] = {"fedsim": [], "plain": []}
    for _ in range(ns.repeats):
        for name in ("plain", "fedsim"):
            proc = subprocess.run(
                [sys.executable, "-m", "bench.throughput", "--worker", name, *args],
                capture_output=True,
                text=True,
                check=True,
            )
            results[name].append(json.loads(proc.stdout.strip().splitlines()[-1]))
    rate = {
        n: statistics.median(r["samples"] / r["round_s"] for r in rs) for n, rs in results.items()
    }
    ratio = rate["fedsim"] / rate["plain"]
    cmd = "python -m bench.throughput " + " ".join(sys.argv[1:])
    lines = [
        f"## {time.strftime('%Y-%m-%d %H:%M')} — `{cmd.strip()}`",
        "",
        f"Machine: {machine()}.  resnet18 width {ns.width}, batch {ns.batch}, {ns.clients} "
        "clients x 1 epoch, `cifar` augmentation, 1 torch thread; medians of "
        f"{ns.repeats} fresh processes per contender, interleaved.",
        "",
        "| contender | samples/s (median) | per-process samples/s |",
        "|---|---|---|",
    ]
    for name, rs in results.items():
        each = ", ".join(f"{r['samples'] / r['round_s']:.1f}" for r in rs)
        lines.append(f"| {name} | {rate[name]:.1f} | {each} |")
    verdict = "met" if ratio >= 0.95 else "not met"
    lines += ["", f"fedsim / plain = {ratio:.3f} (target >= 0.95: {verdict}).", ""]
    text = "\n".join(lines)
    print(text)
    if not ns.no_write:
        RESULTS.parent.mkdir(exist_ok=True)
        head = "" if RESULTS.exists() else "# Training throughput: fedsim vs a plain loop\n\n"
        with RESULTS.open("a") as f:
            f.write(head + text + "\n")


if __name__ == "__main__":
    main()
