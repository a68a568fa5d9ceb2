"""The benchmark jobs, as fedsim overrides (the same config drives every contender)."""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).resolve().parent

JOBS: dict[str, list[str]] = {
    # digits CNN (FedBN/FRAug shape), embedded digits, 10 clients per round, 20 rounds;
    # one evaluation at the end (held-out splits) so that every contender does the same work.
    "overhead": [
        "scenario=digits_iid",
        "backbone=cnn_digits",
        "rounds=20",
        "eval_every=20",
        "scenario.evaluation.global_test=false",
    ],
    # FLUTE job: FedAvg, logistic regression on MNIST, 1,000 IID clients of 60 samples,
    # 10 per round, 100 rounds, 1 local epoch, batch 10, SGD lr 0.05, no per-round evaluation.
    "flute": [
        f"scenario={HERE / 'scenarios' / 'flute_mnist.yaml'}",
        "backbone=logreg",
        "rounds=100",
        "eval_every=100",
        "train.local_epochs=1",
        "train.batch_size=10",
        "train.lr=0.05",
    ],
    # everything from the command line (bench.gpu builds its own scenario)
    "custom": [],
}
