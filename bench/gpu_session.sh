#!/usr/bin/env bash
# The GPU checks of one lease on a lent machine, within a time budget, results under $OUT:
#   soak      issue 11's soak, every lease: the eight d2l networks x 10 epochs x {fp32, bf16} with
#             default flags, ResNet-18 three more times, then --memory-format contiguous and
#             channels-last once each. Each run is timed from command start to exit and must
#             finish inside the book's test-accuracy band (`convnets models --json`); the script
#             exits non-zero naming every run that failed, ran out of time or missed the band.
#             soak-fp32, soak-bf16 and soak-resnet are its three parts, for leases whose commands
#             cannot hold all of it; $SOAK_FLAGS adds flags to every run (e.g. --cuda-graphs).
#   d2l       bench/d2l_train_ch6.py: PyTorch's d2l loop, 10-epoch wall times to set beside the soak's
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
variants=${VARIANTS:-";--cuda-graphs;--precision bf16 --memory-format channels-last"}
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

# The networks d2l trains, cheapest first, and the soak's verdicts (one line per run).
d2l_nets=${SOAK_NETS:-"lenet-bn-scratch lenet-bn resnet18 densenet googlenet nin alexnet vgg11-small"}
soak_failed=()
"$bin" models --json > /tmp/models.jsonl
# soak_run NAME NET [ARGS...]: one 10-epoch training, its raw output in soak-raw.txt, its verdict
# (wall time, test accuracy against the book's band, first epoch against the later ones) in
# soak.tsv and the log.
soak_run() {
    local name=$1 net=$2
    shift 2
    local dir=/tmp/soak/$name
    rm -rf "$dir"
    if [ "$(left)" -lt 20 ]; then
        soak_failed+=("$name (not run: out of time)")
        echo "$name: not run, out of time" | tee -a "$log"
        return
    fi
    echo "=== $name: $bin train $net --device cuda $* ${SOAK_FLAGS:-}" >> "$OUT/soak-raw.txt"
    local t0 t1 code
    t0=$(date +%s.%N)
    # shellcheck disable=SC2086
    timeout "$(left)" "$bin" train "$net" --device cuda --data "$data" --out "$dir" "$@" ${SOAK_FLAGS:-} \
        >> "$OUT/soak-raw.txt" 2>&1
    code=$?
    t1=$(date +%s.%N)
    local verdict
    verdict=$(python3 - "$name" "$net" "$code" "$t0" "$t1" "$dir" <<'PY'
import json, statistics, sys
name, net, code, t0, t1, run = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5]), sys.argv[6]
book = next(json.loads(l)["book"] for l in open("/tmp/models.jsonl") if json.loads(l)["name"] == net)
lo, hi = book["test_acc_band"]
try:
    epochs = json.load(open(f"{run}/metrics.json"))["epochs"]
except (OSError, ValueError):
    epochs = []
acc = epochs[-1]["test_acc"] if epochs else float("nan")
first = epochs[0]["wall_seconds"] if epochs else float("nan")
later = statistics.median(e["wall_seconds"] for e in epochs[1:]) if len(epochs) > 1 else float("nan")
if code != 0:
    why = f"exit {code}" + (" (timed out)" if code == 124 else "")
elif len(epochs) != 10:
    why = f"{len(epochs)} epochs"
elif not lo <= acc <= hi:
    why = f"test acc {acc:.3f} outside the book's band {lo:.3f}-{hi:.3f}"
else:
    why = "ok"
print(f"{name}\t{net}\t{code}\t{t1 - t0:.1f}\t{len(epochs)}\t{acc:.3f}\t{lo:.3f}-{hi:.3f}\t{first:.1f}\t{later:.1f}\t{why}")
PY
)
    echo "$verdict" >> "$OUT/soak.tsv"
    echo "$verdict" | awk -F'\t' '{printf "%-26s wall %6s s  test acc %s (band %s)  epoch 1 %5s s, later %5s s  %s\n", $1, $4, $6, $7, $8, $9, $10}' | tee -a "$log"
    case "$verdict" in
    *$'\t'ok) ;;
    *) soak_failed+=("$name: ${verdict##*$'\t'}") ;;
    esac
}
soak_header() {
    [ -f "$OUT/soak.tsv" ] || printf 'run\tnet\texit\twall_s\tepochs\ttest_acc\tband\tfirst_epoch_s\tlater_epoch_s\tverdict\n' > "$OUT/soak.tsv"
}

for section in $sections; do
    case $section in
    soak | soak-fp32 | soak-bf16 | soak-resnet)
        soak_header
        say "$section (${SOAK_FLAGS:-default flags})"
        if [ "$section" = soak ] || [ "$section" = soak-fp32 ]; then
            for net in $d2l_nets; do soak_run "$net-fp32" "$net"; done
        fi
        if [ "$section" = soak ] || [ "$section" = soak-bf16 ]; then
            for net in $d2l_nets; do soak_run "$net-bf16" "$net" --precision bf16; done
        fi
        if [ "$section" = soak ] || [ "$section" = soak-resnet ]; then
            for i in 2 3 4; do soak_run "resnet18-fp32-run$i" resnet18; done
            soak_run resnet18-contiguous resnet18 --memory-format contiguous
            soak_run resnet18-channels-last resnet18 --memory-format channels-last
        fi ;;
    d2l)
        say "PyTorch's d2l loop (train_ch6), 10 epochs, wall time per network"
        python3 bench/d2l_train_ch6.py --data "$data" --device cuda $d2l_nets 2>>"$OUT/d2l-raw.txt" \
            | tee "$OUT/d2l.jsonl" | python3 -c "
import sys, json
for l in sys.stdin:
    r = json.loads(l)
    print(f\"{r['net']:<17} PyTorch d2l: wall {r['wall_s']:>6.1f} s, test acc {r.get('test_acc', float('nan')):.3f}\", flush=True)
" | tee -a "$log" ;;
    smoke)
        say "smoke: lenet-bn 2 epochs, eager / graphs / bf16"
        for variant in "" "--cuda-graphs" "--precision bf16" "--precision bf16 --memory-format channels-last"; do
            # shellcheck disable=SC2086
            "$bin" train lenet-bn --device cuda --epochs 2 --data "$data" --out "/tmp/smoke$RANDOM" $variant 2>&1 \
                | grep -v "^\s*$" | tail -4 | sed "s/^/[${variant:-eager}] /" | tee -a "$log"
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
        for variant in "" "--cuda-graphs"; do
            # shellcheck disable=SC2086
            "$bin" bench lenet-bn resnet18 --device cuda --data "$data" --steps 10 --warmup 5 --json $variant 2>>"$log" \
                | python3 -c "
import sys, json
for l in sys.stdin:
    r = json.loads(l)
    print(f\"${variant:-eager} {r['model']:<10} GPU MiB {r['peak_gpu_mib']} (warm-up {r['warmup_gpu_mib']})\")
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
        say "bf16 10-epoch trainings (test accuracy vs the book's band, convnets models --json)"
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
if [ ${#soak_failed[@]} -gt 0 ]; then
    printf 'SOAK FAILED: %s\n' "${soak_failed[@]}" | tee -a "$log"
    exit 1
fi
