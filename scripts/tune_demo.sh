#!/usr/bin/env bash
# Equal-budget tuning of FedAvg and FedProx on digits with label skew, then 4 fresh seeds,
# then the comparison with intervals and paired tests (docs/results/tune_demo.md).
# Resumable: complete runs are reused.  Usage: scripts/tune_demo.sh [output_dir]
set -euo pipefail
OUT=${1:-runs}
fedsim tune --strategies fedavg,fedprox --trials 4 --seeds 1,2,3,4 \
    --space train.lr=log:0.01:0.3 --space fedprox:strategy.mu=log:0.001:1 \
    scenario=digits_dirichlet_0.1 rounds=10 backbone.width=0.25 runtime.threads=1 \
    progress=false experiment=tune_demo output_dir="$OUT"
fedsim compare "$OUT/tune_demo" --baseline fedavg --target 0.6
