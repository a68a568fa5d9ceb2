"""One training step of K clients: sequential vs the two ways to batch it with ``torch.func``.

    python -m bench.vmap_step --repeats 3

Contenders, per backbone and K (one torch thread, batch 32, inputs of the backbone's
digits shape):

* ``sequential`` -- K ordinary forward/backward passes on one module (what
  ``runtime.vectorize=off`` does);
* ``vmap_grad`` -- one ``vmap(grad_and_value(loss))`` over the stacked parameters (the
  batched step fedsim used before);
* ``vmap_forward`` -- one ``vmap`` of the forward pass, the K losses summed, one ordinary
  backward pass (each client's loss depends on its own row of the stacked parameters
  only, so the gradient of the sum is every client's own gradient;
  :mod:`fedsim.algorithms.vmap_train` does this now).

Each figure is the median, over repeats, of one fresh process's mean step time (after
warm-up); contenders are interleaved repeat by repeat.  The table is appended to
``bench/results/vmap_step.md`` with the machine and command.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
MODES = ("sequential", "vmap_grad", "vmap_forward")


def child(backbone: str, k: int, mode: str, steps: int) -> float:
    """Mean milliseconds per step of ``mode`` (runs in a fresh process)."""
    import torch
    import torch.nn.functional as F
    from torch.func import functional_call, grad_and_value, vmap

    from fedsim.config import BackboneConfig
    from fedsim.models.modelzoo import initial_model

    torch.set_num_threads(1)
    batch = 32
    model = initial_model(BackboneConfig(name=backbone, width=0.25), (1, 28, 28), 10, 0)
    model.train()
    params = {n: torch.stack([p.detach()] * k) for n, p in model.named_parameters()}
    buffers = {n: torch.stack([b.detach()] * k) for n, b in model.named_buffers()}
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(k, batch, 1, 28, 28, generator=gen)
    y = torch.randint(0, 10, (k, batch), generator=gen)

    def loss_one(p, b, xb, yb):  # type: ignore[no-untyped-def]
        return F.cross_entropy(functional_call(model, (p, b), (xb,)), yb)

    grad_step = vmap(grad_and_value(loss_one))
    forward = vmap(lambda p, b, xb: functional_call(model, (p, b), (xb,)))

    def step() -> None:
        if mode == "vmap_grad":
            grad_step(params, buffers, x, y)
        elif mode == "vmap_forward":
            leaves = {n: v.detach().requires_grad_(True) for n, v in params.items()}
            out = forward(leaves, buffers, x)
            losses = F.cross_entropy(out.flatten(0, 1), y.flatten(), reduction="none")
            torch.autograd.grad(losses.view(k, batch).mean(1).sum(), list(leaves.values()))
        else:
            for i in range(k):
                model.zero_grad(set_to_none=True)
                F.cross_entropy(model(x[i]), y[i]).backward()

    for _ in range(3):
        step()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return 1e3 * (time.perf_counter() - t0) / steps


def machine() -> str:
    from bench.compare_runtimes import machine as describe

    return describe()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--backbones", default="logreg,cnn_digits")
    ap.add_argument("--clients", default="10,50")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--steps", type=int, default=0, help="steps per measurement (0: by model)")
    ap.add_argument("--child", nargs=3, metavar=("BACKBONE", "K", "MODE"))
    ap.add_argument("--no-write", action="store_true")
    ns = ap.parse_args()
    if ns.child:
        backbone, k, mode = ns.child
        steps = ns.steps or (200 if backbone == "logreg" else 10)
        print(json.dumps({"ms": child(backbone, int(k), mode, steps)}))
        return
    cells = [(b, int(k)) for b in ns.backbones.split(",") for k in ns.clients.split(",")]
    got: dict[tuple[str, int, str], list[float]] = {}
    for rep in range(ns.repeats):
        for b, k in cells:
            for mode in MODES:  # interleaved
                cmd = [sys.executable, "-m", "bench.vmap_step", "--child", b, str(k), mode]
                if ns.steps:
                    cmd += ["--steps", str(ns.steps)]
                out = subprocess.run(cmd, capture_output=True, text=True, cwd=HERE.parent)
                if out.returncode != 0:
                    raise RuntimeError(out.stderr[-2000:])
                ms = json.loads(out.stdout.strip().splitlines()[-1])["ms"]
                got.setdefault((b, k, mode), []).append(ms)
                print(f"[{rep + 1}/{ns.repeats}] {b} K={k} {mode}: {ms:.2f} ms", file=sys.stderr)
    lines = [
        f"## vmap step -- {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        "",
        f"Machine: {machine()}.  Command: `python -m bench.vmap_step {' '.join(sys.argv[1:])}`.",
        "Milliseconds per training step of K clients (batch 32, one torch thread); medians "
        f"of {ns.repeats} fresh processes, contenders interleaved.",
        "",
        "| backbone | K | sequential | vmap_grad | vmap_forward | vmap_forward / sequential |",
        "|---|---|---|---|---|---|",
    ]
    for b, k in cells:
        med = {m: statistics.median(got[(b, k, m)]) for m in MODES}
        lines.append(
            f"| {b} | {k} | {med['sequential']:.2f} | {med['vmap_grad']:.2f} | "
            f"{med['vmap_forward']:.2f} | {med['vmap_forward'] / med['sequential']:.2f} |"
        )
    text = "\n".join(lines) + "\n"
    print(text)
    if not ns.no_write:
        with (HERE / "results" / "vmap_step.md").open("a") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
