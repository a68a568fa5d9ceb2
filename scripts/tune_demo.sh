#!/usr/bin/env bash
# Equal-budget tuning of FedAvg and FedProx on digits with label skew, once without and once
# with Optuna's median pruner (the same 8 candidates per strategy, search seed 0), then each
# best setting on 4 fresh seeds and the comparison with intervals and paired tests
# (docs/results/tune_demo.md).  Resumable: the studies live in <output_dir>/<experiment>/
# optuna.db and complete runs are reused.  Usage: scripts/tune_demo.sh [output_dir]
set -euo pipefail
OUT=${1:-runs}
COMMON=(--strategies fedavg,fedprox --trials 8 --seeds 1,2,3,4
    --space train.lr=log:0.01:0.3 --space fedprox:strategy.mu=log:0.001:1
    scenario=digits_dirichlet_0.1 rounds=10 backbone.width=0.25 runtime.threads=1
    progress=false output_dir="$OUT")
fedsim tune "${COMMON[@]}" --pruner none experiment=tune_demo
fedsim tune "${COMMON[@]}" --pruner median experiment=tune_demo_median
fedsim compare "$OUT/tune_demo" --baseline fedavg --target 0.6
fedsim compare "$OUT/tune_demo_median" --baseline fedavg --target 0.6
