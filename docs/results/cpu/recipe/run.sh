#!/bin/bash
# The plain-vs-recipe table of the README (issue 20): LeNet-BN at the book's settings on the full
# Fashion-MNIST, plain (d2l) and with the modern recipe's augmentations. The plain run's first 10
# epochs are the 10-epoch plain run (constant rate, same seed and order). Usage: run.sh DATA_DIR
set -euo pipefail
data=$1
bin=${CONVNETS_BIN:-target/release/convnets}
out=${OUT:-/tmp/recipe}
recipe="--lr-schedule cosine --auto-augment ta_wide --mixup-alpha 0.2 --cutmix-alpha 1.0 --label-smoothing 0.1 --model-ema --random-erase 0.1"
$bin train lenet-bn --data "$data" --epochs 30 --out "$out/plain30" 2>&1 | tee plain30.log
$bin train lenet-bn --data "$data" --epochs 10 $recipe --out "$out/recipe10" 2>&1 | tee recipe10.log
$bin train lenet-bn --data "$data" --epochs 30 $recipe --out "$out/recipe30" 2>&1 | tee recipe30.log
# torchvision's EMA decay (0.99998) is set for 600 ImageNet epochs; one for 30 short epochs:
$bin train lenet-bn --data "$data" --epochs 30 $recipe --model-ema-decay 0.9999 --out "$out/recipe30ema" 2>&1 | tee recipe30ema.log
