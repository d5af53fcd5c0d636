#!/usr/bin/env bash
# Data-parallel cost on this machine's CPUs: every network trained for one short epoch by one
# process and by two (Gloo on loopback, --nproc 2), at d2l's input size, and the bytes and time
# of the gradient all-reduce per step that the two-process run reports. Writes a Markdown table
# (stdout) for docs/distributed.md.
#
#   bench/distributed.sh [BINARY] [EXAMPLES] [BATCH]     (default: target/release/convnets 128 32)
set -euo pipefail
bin="${1:-target/release/convnets}"
examples="${2:-128}"
batch="${3:-32}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# The first EXAMPLES training images of the embedded sample (and 32 test images), as IDX files.
python3 - "$work/data" "$examples" <<'PY'
import gzip, os, struct, sys
dst, n = sys.argv[1], int(sys.argv[2])
src = os.path.join(os.path.dirname(os.path.abspath("Cargo.toml")), "data", "sample")
os.makedirs(dst, exist_ok=True)
for prefix, count in (("train", n), ("t10k", 32)):
    images = gzip.open(f"{src}/{prefix}-images-idx3-ubyte.gz").read()
    labels = gzip.open(f"{src}/{prefix}-labels-idx1-ubyte.gz").read()
    open(f"{dst}/{prefix}-images-idx3-ubyte", "wb").write(struct.pack(">IIII", 0x803, count, 28, 28) + images[16:16 + count * 784])
    open(f"{dst}/{prefix}-labels-idx1-ubyte", "wb").write(struct.pack(">II", 0x801, count) + labels[8:8 + count])
PY

echo "| network | gradients (MB) | 1 process (examples/s) | 2 processes (examples/s) | all-reduce per step (ms) | share of the step |"
echo "|---|---:|---:|---:|---:|---:|"
for net in lenet-bn alexnet vgg11 nin googlenet resnet18 densenet; do
    common=(train "$net" --epochs 1 --batch-size "$batch" --data "$work/data" --device cpu)
    one=$("$bin" "${common[@]}" --out "$work/$net-1" 2>/dev/null | sed -n 's/^\([0-9.]*\) examples\/sec.*/\1/p')
    two_out=$("$bin" "${common[@]}" --out "$work/$net-2" --nproc 2 2>/dev/null)
    two=$(sed -n 's/^\([0-9.]*\) examples\/sec.*/\1/p' <<<"$two_out")
    read -r mb ms share < <(sed -n 's/^gradient all-reduce over 2 processes: \([0-9.]*\) MB and \([0-9.]*\) ms per step (\([0-9]*%\).*/\1 \2 \3/p' <<<"$two_out")
    echo "| $net | $mb | $one | $two | $ms | $share |"
done
