#!/bin/bash
# Before/after on the same machine, same run: each network measured by both binaries, in ABBA order.
cd /tmp/benchcmp
nets="alexnet vgg11-small nin googlenet lenet-bn-scratch lenet-bn resnet18 densenet"
i=0
for net in $nets; do
  if [ $((i % 2)) = 0 ]; then order="old new new old"; else order="new old old new"; fi
  for which in $order; do
    /tmp/convnets-$which bench $net --steps 6 --warmup 2 --batch-size 32 --json 2>/dev/null | sed "s/^/$which /" >> results.txt
  done
  i=$((i+1))
done
echo done >> results.txt
