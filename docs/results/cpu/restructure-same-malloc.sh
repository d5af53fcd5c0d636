#!/bin/bash
# The restructure alone: main's binary against this one with main's effective malloc setting
# (256/512 MiB), ABBA, for the networks where the setting matters.
cd /tmp/benchcmp
for net in vgg11-small alexnet; do
  for which in old variant variant old; do
    /tmp/convnets-$which bench $net --steps 6 --warmup 2 --batch-size 32 --json 2>/dev/null | sed "s/^/$which /" >> results2.txt
  done
done
for which in old variant variant old; do
  /tmp/convnets-$which bench vgg11-small --steps 3 --warmup 1 --json 2>/dev/null | sed "s/^/$which /" >> results2.txt
done
echo done >> results2.txt
