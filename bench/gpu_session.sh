#!/usr/bin/env bash
# Every GPU check of one lease on a lent machine, within a time budget: a correctness smoke test
# (eager vs CUDA graphs, fp32 vs bf16), `convnets bench` variants, the side-by-side comparison
# with PyTorch, then 10-epoch bf16 trainings for the accuracy check while time is left.
# Expects a `--features cuda` binary at .device/convnets, Fashion-MNIST in .device/fashion-mnist,
# PyTorch 2.11 as python3, and $OUT for results. Usage: bench/gpu_session.sh [SECONDS]
set -u
budget=${1:-500}
start=$(date +%s)
left() { echo $((budget - ($(date +%s) - start))); }
export PYTHONUNBUFFERED=1
torch_dir=$(python3 -c "import torch, os; print(os.path.dirname(torch.__file__))")
site=$(dirname "$torch_dir")
LD_LIBRARY_PATH="$torch_dir/lib:$(ls -d "$site"/nvidia/*/lib | paste -sd:)"
export LD_LIBRARY_PATH
export CONVNETS_BIN=$PWD/.device/convnets
bin=$CONVNETS_BIN
data=.device/fashion-mnist
log=$OUT/log.txt
say() { echo "== $* ($(left) s left)" | tee -a "$log"; }

nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv | tee -a "$log"
nproc | tee -a "$log"

say "smoke: lenet-bn 2 epochs, eager / graphs / bf16"
for variant in "--no-graphs" "" "--precision bf16" "--precision bf16 --channels-last"; do
    # shellcheck disable=SC2086
    "$bin" train lenet-bn --device cuda --epochs 2 --data "$data" --out "/tmp/smoke$RANDOM" $variant 2>&1 \
        | grep -v "^\s*$" | tail -4 | sed "s/^/[${variant:-graphs}] /" | tee -a "$log"
done

say "convnets bench variants (all networks, one process each)"
for variant in "--no-graphs" "" "--precision bf16 --channels-last"; do
    # shellcheck disable=SC2086
    "$bin" bench --device cuda --data "$data" --steps 30 --warmup 5 --json $variant 2>>"$log" \
        | sed "s/^/{\"variant\":\"${variant:-graphs}\",\"r\":/; s/$/}/" >> "$OUT/bench.jsonl"
    tail -n 8 "$OUT/bench.jsonl" | python3 -c "
import sys, json
for l in sys.stdin:
    d = json.loads(l); r = d['r']
    print(f\"{d['variant']:<34} {r['model']:<17} train {r['train_examples_per_s']:>10.0f} epoch {r['epoch_examples_per_s']:>10.0f} eval {r['eval_examples_per_s']:>10.0f} data {r['data_examples_per_s']:>9.0f} gpu {r['peak_gpu_mib']} MiB graphs {r['cuda_graphs']}\")
" | tee -a "$log"
done

say "vs PyTorch, fp32 both sides"
BENCH_JSON=$OUT/vs_fp32.json python3 bench/vs_pytorch.py --device cuda --steps 30 --warmup 5 2>&1 | tee -a "$log"
say "bf16 10-epoch trainings (test accuracy vs REFERENCE.md)"
# Cheapest first; each starts only with its estimated time left.
for pair in lenet-bn:40 lenet-bn-scratch:40 resnet18:90 vs:120 densenet:90 googlenet:120 nin:150 alexnet:150 vgg11-small:200; do
    net=${pair%%:*}; need=${pair##*:}
    if [ "$net" = vs ]; then
        [ "$(left)" -lt "$need" ] && continue
        say "vs PyTorch: bf16 + channels-last both sides"
        BENCH_JSON=$OUT/vs_bf16.json python3 bench/vs_pytorch.py --device cuda --steps 30 --warmup 5 \
            --torch-precision bf16 --convnets-args "--precision bf16 --channels-last" 2>&1 | tee -a "$log"
        continue
    fi
    if [ "$(left)" -lt "$need" ]; then say "skip $net (needs ~$need s)"; continue; fi
    t0=$(date +%s)
    "$bin" train "$net" --device cuda --data "$data" --precision bf16 --channels-last --out "/tmp/bf16-$net" \
        2>&1 | grep -E "^epoch|test acc|examples/sec" | tr '\n' ' ' | sed "s/^/$net: /" | tee -a "$log"
    echo " [$(( $(date +%s) - t0 )) s]" | tee -a "$log"
done
say "done"
