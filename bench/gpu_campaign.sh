#!/usr/bin/env bash
# The GPU campaign: one command on a CUDA host that proves fedsim trains on the GPU and
# measures how fast, in at most ~8 minutes, writing everything into OUTDIR.
#
#   bash bench/gpu_campaign.sh OUTDIR [--dry-run] [-- BENCH_ARGS...]
#
# The host has Python 3.12 with torch, torchvision, timm and tensorboard, and no package
# index.  The checkout brings .gpu_wheels/ and .gpu_data/ (scripts/prepare_gpu_campaign.py
# fills them on a machine with PyPI).  Steps, each timed and logged:
#   1. device: nvidia-smi, torch, CUDA, driver (env.txt);
#   2. install: exactly the wheels that .gpu_wheels/requirements.txt pins (what fedsim's
#      campaign paths need and the host lacks; pip install --no-index --no-deps, so the
#      host's torch stays as it is) and fedsim (--no-deps) into a target folder,
#      $FEDSIM_GPU_SITE (default .gpu_site/), put first on PYTHONPATH; then a check that
#      fedsim, flwr, hydra and omegaconf import (one line saying what is missing if not);
#   3. tests: pytest -m gpu on every test file with gpu-marked tests (pytest-gpu.xml/.txt);
#   4. bench: python -m bench.gpu (CIFAR-10 subset, 150 clients x 50 images, 50 per round,
#      batch 10, cnn_cifar and resnet18, plain loop vs fedsim sequential vs vectorised,
#      medians of 3), gpu.md and gpu.json; BENCH_ARGS go to bench.gpu.
# campaign.md sums it up.  The exit status is non-zero when a step failed.
#
# --dry-run: the same steps on the CPU at a tiny budget (no install; the gpu tests skip;
# bench.gpu on the CPU with 6 clients), so that the script is exercised without a GPU
# (tests/test_bench_gpu.py).  Budget: CAMPAIGN_BUDGET_S seconds (default 480).  Python:
# $PYTHON (default python3; in a dry run .venv/bin/python when present).
# the step functions run through `step NAME FUNCTION`, which shellcheck cannot follow
# shellcheck disable=SC2317
set -uo pipefail

usage() {
    echo "usage: bash bench/gpu_campaign.sh OUTDIR [--dry-run] [-- BENCH_ARGS...]" >&2
    exit 2
}

OUT=""
DRY=0
BENCH_EXTRA=()
while (($#)); do
    case "$1" in
    --dry-run) DRY=1 ;;
    --) shift; BENCH_EXTRA=("$@"); break ;;
    -h | --help) usage ;;
    -*) echo "gpu_campaign: unknown option $1" >&2; usage ;;
    *) [[ -z "$OUT" ]] || usage; OUT=$1 ;;
    esac
    shift
done
[[ -n "$OUT" ]] || usage

mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd) || exit 1 # relative to the caller's directory
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO" || exit 1
if ((DRY)) && [[ -z "${PYTHON:-}" && -x "$REPO/.venv/bin/python" ]]; then
    PYTHON="$REPO/.venv/bin/python"
fi
PY=${PYTHON:-python3}
BUDGET=${CAMPAIGN_BUDGET_S:-480}
SITE=${FEDSIM_GPU_SITE:-$REPO/.gpu_site}
WHEELS=${FEDSIM_GPU_WHEELS:-$REPO/.gpu_wheels}
START=$SECONDS
STEPS=()
FAILED=0

exec > >(tee "$OUT/campaign.log") 2>&1

export FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_UPDATE_CHECK=1
export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1 RAY_USAGE_STATS_ENABLED=0
export PYTHONDONTWRITEBYTECODE=1
if [[ -d "$REPO/.gpu_data" ]]; then
    export FEDSIM_DATA="$REPO/.gpu_data"
fi

left() { echo $((BUDGET - (SECONDS - START))); }

# step NAME COMMAND...: run, time and record one step; a failure does not stop the campaign
step() {
    local name=$1 t0=$SECONDS rc
    shift
    echo
    echo "=== $name ($(left) s of the budget left)"
    "$@"
    rc=$?
    STEPS+=("| $name | $([[ $rc -eq 0 ]] && echo ok || echo "failed (exit $rc)") | $((SECONDS - t0)) |")
    ((rc == 0)) || FAILED=1
    return "$rc"
}

device_info() {
    {
        echo "date: $(date -u '+%Y-%m-%d %H:%M UTC')"
        echo "checkout: $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)$(
            [[ -n "$(git -C "$REPO" status --porcelain --untracked-files=no 2>/dev/null)" ]] && echo ' (modified)')"
        echo "python: $PY ($("$PY" -c 'import sys; print(sys.version.split()[0])'))"
        if command -v nvidia-smi >/dev/null; then
            nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv
            nvidia-smi
        else
            echo "nvidia-smi: not found"
        fi
        "$PY" - <<'EOF'
import importlib.metadata as md

import torch

print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}")
for name in ("torchvision", "timm", "tensorboard", "numpy", "protobuf", "grpcio", "pillow"):
    try:
        print(f"{name} {md.version(name)}")
    except md.PackageNotFoundError:
        print(f"{name} absent")
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print(f"cuda device 0: {p.name}, {p.total_memory / 2**30:.1f} GiB, capability {p.major}.{p.minor}, "
          f"{torch.cuda.device_count()} device(s)")
else:
    print("cuda: not available")
EOF
    } 2>&1 | tee "$OUT/env.txt"
    return "${PIPESTATUS[0]}"
}

# The wheels the host lacks (exactly those requirements.txt pins), and fedsim, into $SITE;
# the host's packages are not touched.
install() {
    local req="$WHEELS/requirements.txt" want have stamp
    if [[ ! -f "$req" ]]; then
        echo "gpu_campaign: $req not found: run scripts/prepare_gpu_campaign.py on a machine with PyPI and copy the checkout with .gpu_wheels/ and .gpu_data/"
        return 1
    fi
    want=$(sed -n 's/^# python-version: *//p' "$req")
    have=$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])') || return 1
    if [[ "$want" != "$have" ]]; then
        echo "gpu_campaign: $req holds wheels for Python ${want:-unknown} but $PY is Python $have: run scripts/prepare_gpu_campaign.py --python-version $have"
        return 1
    fi
    stamp=$(cat "$req" <(ls "$WHEELS") <("$PY" -c 'import sys; print(sys.version)') | sha256sum | cut -c1-16)
    if [[ -f "$SITE/.campaign-stamp" && "$(cat "$SITE/.campaign-stamp")" == "$stamp" ]]; then
        echo "wheels already installed in $SITE"
    else
        rm -rf "$SITE" && mkdir -p "$SITE" || return 1
        echo "installing the $(grep -c '^[^#]' "$req") wheels that $req pins into $SITE (no index, no dependency resolution)"
        "$PY" -m pip install --quiet --no-index --no-deps --find-links "$WHEELS" --target "$SITE" \
            -r "$req" || return 1
        echo "$stamp" >"$SITE/.campaign-stamp"
    fi
    local had_build=0
    [[ -e "$REPO/build" ]] && had_build=1
    # fedsim itself; pip builds it with the setuptools wheel of $WHEELS
    "$PY" -m pip install --quiet --no-index --find-links "$WHEELS" --no-deps --upgrade \
        --target "$SITE" "$REPO" || return 1
    ((had_build)) || rm -rf "$REPO/build" # setuptools' in-tree build folder, stale next time
    import_check
}

# What the tests and the benchmark import, from $SITE and the host; one line when it fails.
import_check() {
    "$PY" - "$WHEELS/requirements.txt" <<'EOF'
import importlib
import sys

for name in ("fedsim", "flwr", "hydra", "omegaconf", "fedsim.engine.runner", "fedsim.tracking.report", "pytest"):
    try:
        importlib.import_module(name)
    except Exception as e:
        why = " ".join(f"{type(e).__name__}: {e}".split())
        sys.exit(f"gpu_campaign: `import {name}` fails after the install: {why} (the wheels "
                 f"of {sys.argv[1]} and the host's own packages do not cover it)")
import fedsim, flwr, torch

print(f"fedsim from {fedsim.__file__}, flwr {flwr.__version__} from {flwr.__file__}, "
      f"torch {torch.__version__} from {torch.__file__}")
EOF
}

gpu_tests() {
    local files=()
    mapfile -t files < <(grep -l "pytest.mark.gpu" tests/test_*.py)
    echo "gpu-marked tests in: ${files[*]}"
    timeout "$1" "$PY" -m pytest -m gpu -p no:cacheprovider -rA -q --timeout 240 \
        --junitxml "$OUT/pytest-gpu.xml" "${files[@]}" 2>&1 | tee "$OUT/pytest-gpu.txt"
    return "${PIPESTATUS[0]}"
}

bench() {
    local limit=$1 rc args
    if ((DRY)); then
        args=(--device cpu --clients 6 --per-round 2 --samples 8 --rounds 2 --models cnn_cifar
            --cnn-width 0.25 --repeats 1)
    else
        # stop starting repeats when one more (about 100 s) might not fit
        args=(--deadline-s $((limit > 200 ? limit - 100 : 100)))
    fi
    timeout "$limit" "$PY" -m bench.gpu --out "$OUT" "${args[@]}" "${BENCH_EXTRA[@]}"
    rc=$?
    if ((rc != 0)) && [[ -f "$OUT/gpu.json" ]]; then
        echo "bench.gpu ended early (exit $rc); gpu.md from the runs in gpu.json"
        "$PY" -m bench.gpu --from-json "$OUT/gpu.json" >/dev/null
    fi
    return "$rc"
}

finish() {
    local total=$((SECONDS - START)) counts="no junit file"
    if [[ -f "$OUT/pytest-gpu.xml" ]]; then
        counts=$("$PY" - "$OUT/pytest-gpu.xml" <<'EOF'
import sys
import xml.etree.ElementTree as ET

root = ET.parse(sys.argv[1]).getroot()
suites = [root] if root.tag == "testsuite" else list(root)
n = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
passed = n["tests"] - n["failures"] - n["errors"] - n["skipped"]
print(f"{passed} passed, {n['failures']} failed, {n['errors']} errors, {n['skipped']} skipped")
EOF
        )
    fi
    {
        echo "# fedsim GPU campaign — $(date -u '+%Y-%m-%d %H:%M UTC')"
        echo
        echo "Command: \`bash bench/gpu_campaign.sh $OUT$( ((DRY)) && echo ' --dry-run')${BENCH_EXTRA[*]:+ -- ${BENCH_EXTRA[*]}}\`$( ((DRY)) && echo ' (dry run on the CPU: no GPU figure)')."
        echo "Total $total s (budget $BUDGET s)."
        echo
        echo '```'
        grep -v '^|\|^+\|^ *$' "$OUT/env.txt" 2>/dev/null | head -20
        echo '```'
        echo
        echo "| step | status | seconds |"
        echo "|---|---|---|"
        printf '%s\n' "${STEPS[@]}"
        echo
        echo "gpu tests: $counts (pytest-gpu.txt, pytest-gpu.xml)."
        echo
        cat "$OUT/gpu.md" 2>/dev/null || echo "no benchmark results"
    } >"$OUT/campaign.md"
    echo
    echo "=== done in $total s: $OUT/campaign.md"
}

trap finish EXIT

if ((DRY)); then
    echo "dry run: no install; $PY as it is; CUDA hidden, so everything runs on the CPU"
    export CUDA_VISIBLE_DEVICES=""
fi
step device device_info
if ((DRY)); then
    export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
else
    export PYTHONPATH="$SITE:$REPO${PYTHONPATH:+:$PYTHONPATH}"
    export PATH="$SITE/bin:$PATH"
    if [[ ! -f "$REPO/.gpu_data/cifar10/cifar10_train.npz" ]]; then
        echo "gpu_campaign: .gpu_data/cifar10 not found: run scripts/prepare_gpu_campaign.py first"
        FAILED=1
        exit 1
    fi
    step install install || exit 1
fi
step tests gpu_tests $(($(left) > 400 ? 180 : 120))
step bench bench $(($(left) - 15 > 60 ? $(left) - 15 : 60))
exit "$FAILED"
