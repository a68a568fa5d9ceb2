"""How many of seed 0's pooled training images (the SimCLR pool of
``scripts/fedossl_results.py --pretrain-epochs``) another seed's clients hold.

    PYTHONPATH=$PWD .venv/bin/python scripts/simclr_pool_overlap.py mnist_open_world \
        scenario.dataset.sources.0.max_samples=1500 --seeds 1 2

Images are matched by the rank order of their pixels, which the per-seed normalisation
does not change.
"""

from __future__ import annotations

import argparse
import hashlib

import numpy as np


def pool(scenario: str, seed: int, overrides: list[str]) -> set[str]:
    from fedsim.data.federation import load_federation
    from fedsim.engine.conf import compose

    cfg = compose([f"scenario={scenario}", f"seed={seed}", *overrides])
    fed = load_federation(cfg.scenario, cfg.seed)
    x = fed.data.train_x[np.sort(np.concatenate(fed.train_parts))].numpy()
    return {hashlib.sha1(np.argsort(im.reshape(-1), kind="stable").tobytes()).hexdigest()
            for im in x}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("scenario")
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    ap.add_argument("overrides", nargs="*", help="the scenario overrides")
    ns = ap.parse_args()
    base = pool(ns.scenario, 0, ns.overrides)
    for seed in ns.seeds:
        other = pool(ns.scenario, seed, ns.overrides)
        print(f"{ns.scenario} seed {seed}: {len(base & other)} of seed 0's {len(base)} images")


if __name__ == "__main__":
    main()
