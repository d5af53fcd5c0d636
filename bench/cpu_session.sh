#!/usr/bin/env bash
# Issue 21's CPU measurements in one command, for a session on a CPU these notes have not
# measured (AVX-512, AVX512-BF16, AMX), results under $OUT (default
# docs/results/cpu/session-<date>):
#   kernels  `convnets bench NET --cpu-kernels shim` against `--cpu-kernels onednn` for the eight
#            networks ($NETS) in fp32 and bf16 ($PRECISIONS), $ROUNDS interleaved rounds (default 2)
#            of $STEPS steps (default 5), each side's best;
#            kernels.txt has one line per network and precision with the ratio, which says where
#            the shim's weight-gradient and Winograd kernels should be on by default (the policy's
#            Auto keeps them off on AVX-512 until measured)
#   table    docs/results/cpu/vs-pytorch-all/run.sh: the eight networks against PyTorch's best
#            variant, fp32 and bf16 (about 45 minutes per precision on two cores)
# Run from the repository root after `cargo build --release`, with PyTorch 2.11's python as $PY
# for the table. Usage: bench/cpu_session.sh [SECTION...] (default: kernels table)
set -euo pipefail
sections=${*:-kernels table}
out=${OUT:-docs/results/cpu/session-$(date -u +%F)}
bin=${CONVNETS_BIN:-target/release/convnets}
rounds=${ROUNDS:-2}
steps=${STEPS:-5}
for section in $sections; do
    case $section in
    kernels | table) ;;
    *)
        echo "unknown section '$section' (kernels, table)" >&2
        exit 2
        ;;
    esac
done
mkdir -p "$out"
{
    lscpu | grep -E '^Model name|^CPU\(s\)'
    echo "flags: $(grep -o -w 'avx2\|avx512f\|avx512_bf16\|amx_bf16' /proc/cpuinfo | sort -u | tr '\n' ' ')"
    echo "date: $(date -u +%F), commit $(git rev-parse --short HEAD)"
} | tee "$out/cpu.txt"

for section in $sections; do
    case $section in
    kernels)
        raw=$out/kernels.jsonl
        : > "$raw"
        for precision in ${PRECISIONS:-fp32 bf16}; do
            for net in ${NETS:-lenet-bn lenet-bn-scratch alexnet vgg11-small nin googlenet resnet18 densenet}; do
                for round in $(seq "$rounds"); do
                    for kernels in shim onednn; do
                        echo "== $net $precision --cpu-kernels $kernels, round $round" >&2
                        "$bin" bench "$net" --precision "$precision" --cpu-kernels "$kernels" --steps "$steps" \
                            --warmup 2 --json 2> /dev/null |
                            sed "s/^{/{\"cpu_kernels\":\"$kernels\",/" >> "$raw"
                    done
                done
            done
        done
        # Each side's best of the rounds, and shim over oneDNN.
        python3 - "$raw" << 'EOF' | tee "$out/kernels.txt"
import json, sys
best = {}
for line in open(sys.argv[1]):
    r = json.loads(line)
    key = (r["model"], r["precision"], r["cpu_kernels"])
    old = best.get(key, {"train_examples_per_s": 0, "eval_examples_per_s": 0})
    best[key] = {k: max(old[k], r[k]) for k in ("train_examples_per_s", "eval_examples_per_s")}
    best[key]["winograd"] = r["winograd_convolutions"]
print(f"{'network':<18}{'precision':<10}{'train shim':>12}{'onednn':>10}{'ratio':>7}{'eval shim':>12}{'onednn':>10}{'ratio':>7}{'winograd':>10}")
for (model, precision, kernels), shim in best.items():
    if kernels != "shim":
        continue
    onednn = best[(model, precision, "onednn")]
    t, e = (shim[k] / onednn[k] for k in ("train_examples_per_s", "eval_examples_per_s"))
    print(f"{model:<18}{precision:<10}{shim['train_examples_per_s']:>12.1f}{onednn['train_examples_per_s']:>10.1f}{t:>7.2f}"
          f"{shim['eval_examples_per_s']:>12.1f}{onednn['eval_examples_per_s']:>10.1f}{e:>7.2f}{shim['winograd']:>10}")
EOF
        ;;
    table)
        HERE=$out CONVNETS_BIN=$bin PRECISIONS=${PRECISIONS:-fp32 bf16} bash docs/results/cpu/vs-pytorch-all/run.sh
        ;;
    esac
done
