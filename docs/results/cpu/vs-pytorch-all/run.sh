#!/usr/bin/env bash
# Issue 21's table: the eight d2l networks, fp32 and bf16, convnets against PyTorch's eager,
# channels-last, torch.compile and compile-max-autotune variants, with the kernel-share bound.
# Run from the repository root with PyTorch's venv python as $PY; writes <precision>.txt and
# <precision>-<group>.json here, or in $HERE. NET_GROUPS=large (or small) runs one group of
# networks only; VARIANTS=... another list of PyTorch variants for both groups; ROUNDS=R each
# side's best of R interleaved rounds. The large networks skip eager PyTorch, which was the
# slowest variant for each of them in every earlier table.
set -euo pipefail
here=${HERE:-docs/results/cpu/vs-pytorch-all}
PY=${PY:-python3}
for precision in ${PRECISIONS:-fp32 bf16}; do
    log=$here/$precision.txt
    {
        lscpu | grep -E '^Model name|^CPU\(s\)'
        echo "flags: $(grep -o -w 'avx2\|avx512f\|avx512_bf16\|amx_bf16' /proc/cpuinfo | sort -u | tr '\n' ' ')"
        echo "date: $(date -u +%F)"
    } > "$log"
    convnets_args=""
    [ "$precision" = bf16 ] && convnets_args="--precision bf16"
    # The LeNets take microseconds per example: more steps for a steady figure.
    for group in "small:10:3:eager,channels-last,compile,compile-max-autotune:lenet-bn lenet-bn-scratch" \
        "large:5:2:channels-last,compile,compile-max-autotune:alexnet vgg11-small nin googlenet resnet18 densenet"; do
        IFS=: read -r name steps warmup variants nets <<< "$group"
        variants=${VARIANTS:-$variants}
        case " ${NET_GROUPS:-small large} " in *" $name "*) ;; *) continue ;; esac
        echo "command: bench/vs_pytorch.py --steps $steps --warmup $warmup --torch-variants $variants --kernel-share --rounds ${ROUNDS:-1} --torch-precision $precision --convnets-args '$convnets_args' $nets" >> "$log"
        # shellcheck disable=SC2086
        BENCH_JSON=$here/$precision-$name.json $PY bench/vs_pytorch.py --steps "$steps" --warmup "$warmup" \
            --torch-variants "$variants" --kernel-share --rounds "${ROUNDS:-1}" --torch-precision "$precision" \
            --convnets-args "$convnets_args" $nets 2>&1 | tee -a "$log"
    done
done
