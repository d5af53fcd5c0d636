#!/usr/bin/env bash
# The README's measured fine-tuning example, on data available offline: LeNet-BN pretrained on
# Fashion-MNIST's first five classes (T-shirt to Coat, the full training set's 30,000 images),
# then trained on a small folder of the other five (Sandal to Ankle boot: N training PNGs per
# class, 100 validation PNGs per class from the test set), fine-tuned against from scratch, the
# same epochs and seed.
# Usage: bench/finetune_example.sh PYTHON [N]   (PYTHON: one with numpy and Pillow)
set -euo pipefail
cd "$(dirname "$0")/.."
python=${1:?usage: bench/finetune_example.sh PYTHON [N]}
per_class=${2:-20}
bin=target/release/convnets
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$python" - "$work" "$per_class" <<'PY'
import gzip, os, sys
import numpy as np
from PIL import Image
work, per_class = sys.argv[1], int(sys.argv[2])
src = "../shared/data/fashion-mnist"
def load(prefix):
    with gzip.open(f"{src}/{prefix}-images-idx3-ubyte.gz") as f:
        images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)
    with gzip.open(f"{src}/{prefix}-labels-idx1-ubyte.gz") as f:
        labels = np.frombuffer(f.read(), np.uint8, offset=8)
    return images, labels
names = ["T-shirt", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
train, test = load("train"), load("t10k")
# Pretraining set: classes 0-4 as IDX files (the labels keep their numbers).
os.makedirs(f"{work}/first5")
for (images, labels), prefix in [(train, "train"), (test, "t10k")]:
    keep = labels < 5
    n = int(keep.sum())
    with open(f"{work}/first5/{prefix}-images-idx3-ubyte", "wb") as f:
        f.write(np.array([0x803, n, 28, 28], ">u4").tobytes() + images[keep].tobytes())
    with open(f"{work}/first5/{prefix}-labels-idx1-ubyte", "wb") as f:
        f.write(np.array([0x801, n], ">u4").tobytes() + labels[keep].tobytes())
# The small folder: classes 5-9, the first N training and 100 test images of each.
for (images, labels), split, n in [(train, "train", per_class), (test, "val", 100)]:
    for c in range(5, 10):
        d = f"{work}/last5/{split}/{names[c].replace(' ', '_')}"
        os.makedirs(d)
        for i, j in enumerate(np.flatnonzero(labels == c)[:n]):
            Image.fromarray(images[j]).save(f"{d}/{i}.png")
PY
lscpu | grep -E "^Model name" || true
nproc
run() { # label, args...
  local label=$1; shift
  local start end
  start=$(date +%s.%N)
  "$bin" train "$@" > "$work/$label.log" 2>&1
  end=$(date +%s.%N)
  printf '%-44s %s  (%.1f s wall)\n' "$label" "$(grep -E '^loss' "$work/$label.log")" "$(echo "$end - $start" | bc)"
}
run "pretrain lenet-bn on classes 0-4 (30,000)" lenet-bn --data "$work/first5" --out "$work/pre"
for epochs in 10 30; do
  common=(--data "$work/last5" --epochs "$epochs" --batch-size 50 --lr 0.1 --augment none)
  run "scratch, $per_class per class, $epochs epochs" lenet-bn "${common[@]}" --out "$work/scratch-$epochs"
  run "fine-tuned, $per_class per class, $epochs epochs" lenet-bn --pretrained "$work/pre" "${common[@]}" --out "$work/ft-$epochs"
  run "frozen backbone, $per_class per class, $epochs epochs" lenet-bn --pretrained "$work/pre" --freeze-backbone "${common[@]}" --out "$work/frozen-$epochs"
done
