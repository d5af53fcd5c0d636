#!/usr/bin/env bash
# The GPU checks of one lease on a lent machine, within a time budget, results under $OUT:
#   smoke     lenet-bn, 2 epochs: eager vs CUDA graphs, fp32 vs bf16 (losses must agree)
#   variants  `convnets bench` of every network per variant in $VARIANTS (';'-separated)
#   memory    GPU memory of lenet-bn and resnet18 with and without CUDA graphs
#   vs-fp32   bench/vs_pytorch.py, fp32 on both sides
#   vs-bf16   bench/vs_pytorch.py, bf16 autocast + channels-last on both sides
#   train     10-epoch bf16 trainings for the accuracy check, cheapest first, while time is left
# Expects a `--features cuda` binary at .device/convnets, Fashion-MNIST in .device/fashion-mnist
# and PyTorch 2.11 as python3. Usage: bench/gpu_session.sh SECONDS [SECTION...]
set -u
budget=${1:-500}
shift
sections=${*:-smoke variants vs-fp32 train vs-bf16}
variants=${VARIANTS:-"--no-graphs;;--precision bf16 --memory-format channels-last"}
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
echo "cores: $(nproc)" | tee -a "$log"

for section in $sections; do
    case $section in
    smoke)
        say "smoke: lenet-bn 2 epochs, eager / graphs / bf16"
        for variant in "--no-graphs" "" "--precision bf16" "--precision bf16 --memory-format channels-last"; do
            # shellcheck disable=SC2086
            "$bin" train lenet-bn --device cuda --epochs 2 --data "$data" --out "/tmp/smoke$RANDOM" $variant 2>&1 \
                | grep -v "^\s*$" | tail -4 | sed "s/^/[${variant:-graphs}] /" | tee -a "$log"
        done ;;
    variants)
        IFS=';' read -ra list <<< "$variants"
        for variant in "${list[@]}"; do
            say "convnets bench ${variant:-(defaults)}"
            # shellcheck disable=SC2086
            "$bin" bench --device cuda --data "$data" --steps 30 --warmup 5 --json $variant ${NETS:-} 2>>"$log" \
                | sed "s/^/{\"variant\":\"${variant:-defaults}\",\"r\":/; s/$/}/" | tee -a "$OUT/bench.jsonl" | python3 -c "
import sys, json
for l in sys.stdin:
    d = json.loads(l); r = d['r']
    print(f\"{r['model']:<17} train {r['train_examples_per_s']:>9.0f} epoch {r['epoch_examples_per_s']:>9.0f} eval {r['eval_examples_per_s']:>9.0f} data {r['data_examples_per_s']:>9.0f} GPU MiB {r['peak_gpu_mib']} (warm-up {r['warmup_gpu_mib']}) graphs {r['cuda_graphs']}\", flush=True)
" | tee -a "$log"
        done ;;
    memory)
        say "GPU memory with and without CUDA graphs"
        for variant in "--no-graphs" ""; do
            # shellcheck disable=SC2086
            "$bin" bench lenet-bn resnet18 --device cuda --data "$data" --steps 10 --warmup 5 --json $variant 2>>"$log" \
                | python3 -c "
import sys, json
for l in sys.stdin:
    r = json.loads(l)
    print(f\"${variant:-graphs} {r['model']:<10} GPU MiB {r['peak_gpu_mib']} (warm-up {r['warmup_gpu_mib']})\")
" | tee -a "$log"
        done ;;
    vs-fp32)
        say "vs PyTorch, fp32 both sides"
        BENCH_JSON=$OUT/vs_fp32.json python3 bench/vs_pytorch.py --device cuda --steps 30 --warmup 5 2>&1 | tee -a "$log" ;;
    vs-bf16)
        [ "$(left)" -lt 100 ] && { say "skip vs-bf16"; continue; }
        say "vs PyTorch: bf16 + channels-last both sides"
        BENCH_JSON=$OUT/vs_bf16.json python3 bench/vs_pytorch.py --device cuda --steps 30 --warmup 5 \
            --torch-precision bf16 --convnets-args "--precision bf16 --memory-format channels-last" 2>&1 | tee -a "$log" ;;
    train)
        say "bf16 10-epoch trainings (test accuracy vs REFERENCE.md)"
        for pair in ${TRAIN:-lenet-bn:40 lenet-bn-scratch:40 resnet18:90 densenet:90 googlenet:120 nin:150 alexnet:150 vgg11-small:200}; do
            net=${pair%%:*}; need=${pair##*:}
            if [ "$(left)" -lt "$need" ]; then say "skip $net (needs ~$need s)"; continue; fi
            t0=$(date +%s)
            "$bin" train "$net" --device cuda --data "$data" --precision bf16 --out "/tmp/bf16-$net" \
                2>&1 | grep -E "^epoch|test acc|examples/sec" | tr '\n' ' ' | sed "s/^/$net: /" | tee -a "$log"
            echo " [$(( $(date +%s) - t0 )) s]" | tee -a "$log"
        done ;;
    esac
done
say "done"
