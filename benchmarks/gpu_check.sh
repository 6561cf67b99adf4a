#!/usr/bin/env bash
# One GPU session's measurements for issue 17, in one go (about 6-8 minutes on an H100/H200,
# stopped at BUDGET_S seconds, default 540: the checks left are printed as skipped).
# Prints one JSON line per check to stdout (the benchmarks' last lines, labelled "check") and
# each run's full output to $OUT (default ./gpu_check_out). From the repository root:
#     . .venv/bin/activate && bash benchmarks/gpu_check.sh
# Needs CUDA; no Ray. Checks run in order of importance.
set -uo pipefail
OUT=${OUT:-./gpu_check_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
BUDGET_S=${BUDGET_S:-540}
START=$SECONDS

run() {  # run LABEL TIMEOUT_S COMMAND...: the command's last line with "check": LABEL added
    local label=$1 limit=$2
    shift 2
    local left=$((BUDGET_S - (SECONDS - START)))
    if ((left < 30)); then
        printf '{"check": "%s", "skipped": "budget"}\n' "$label"
        return
    fi
    ((limit > left)) && limit=$left
    timeout "$limit" "$@" > "$OUT/$label.log" 2>&1
    local rc=$?
    local last
    last=$(tail -n 1 "$OUT/$label.log")
    if [[ $rc -eq 0 && $last == \{* ]]; then
        python -c 'import json,sys; d=json.loads(sys.argv[2]); print(json.dumps({"check": sys.argv[1], **d}))' "$label" "$last"
    else
        printf '{"check": "%s", "error": "exit %s", "log": "%s"}\n' "$label" "$rc" "$OUT/$label.log"
    fi
}

python -c 'import json, torch; print(json.dumps({"check": "device", "torch": torch.__version__, "cuda": torch.cuda.is_available(), "name": torch.cuda.get_device_name() if torch.cuda.is_available() else None}))'
# Per step on CUDA: host reads, kernel launches, copies, syncs (before/now); the two paths
# train alike; a mid-epoch NaN is reported with its step (JSON lines of its own).
timeout 180 python benchmarks/step_check.py --width 64 --batch 256 > "$OUT/step_check.log" 2>&1
grep '^{' "$OUT/step_check.log" || echo '{"check": "step_check", "error": "see '"$OUT"'/step_check.log"}'

# Issue 17's target: ratio >= 0.9 and >= 35,000 img/s at width 64, batch 512.
TT="python benchmarks/train_throughput.py --width 64 --batch 512 --steps 10 --repeats 5"
run throughput 120 $TT
# What each change is worth: the previous data path and the previous per-step sync.
run throughput_host_rows_and_sync 120 $TT --host-rows --host-sync
# Three trials packed on the one GPU against one alone.
run packing_3 150 python benchmarks/packing.py --trials 3 --seconds 20 --width 64 --batch 512
run throughput_host_rows 120 $TT --host-rows
run throughput_host_sync 120 $TT --host-sync
# Whether a compile mode pays (compilation takes a minute or more).
run throughput_compile_reduce_overhead 240 $TT --compile reduce-overhead
run throughput_compile_default 240 $TT --compile default

# The recipe's accuracy on the GPU, when CIFAR-10 is at hand (a few epochs only here).
if [[ -f benchmarks/fidelity.py && -f ../shared/data/cifar10/train.parquet ]]; then
    run fidelity 240 python benchmarks/fidelity.py --recipe lightly_cifar10 --epochs 5 --eval-every 5
fi
