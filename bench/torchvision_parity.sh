#!/usr/bin/env bash
# Full-size parity of convnets' torchvision networks with torchvision 0.26: for each network,
# a parity file at 3 x 224 x 224 with every gradient (bench/torchvision_reference.py), replayed by
# `convnets parity`; then a convnets export loaded back into torchvision with strict=True.
# Usage: bench/torchvision_parity.sh PYTHON [net ...]   (PYTHON: a venv's with torch and torchvision)
set -uo pipefail
cd "$(dirname "$0")/.."
python=${1:?usage: bench/torchvision_parity.sh PYTHON [net ...]}
shift
nets=("$@")
[ ${#nets[@]} -gt 0 ] || nets=(alexnet vgg11 vgg11-bn googlenet resnet18 resnet34 resnet50 densenet121)
bin=target/release/convnets
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$python" -c 'import torch, torchvision; print(f"torch {torch.__version__}, torchvision {torchvision.__version__}")'
lscpu | grep -E "^Model name" || true
for net in "${nets[@]}"; do
  echo "== tv-$net"
  "$python" bench/torchvision_reference.py parity "$net" 224 "$tmp/$net.safetensors" --all-grads 2>/dev/null
  "$bin" parity "$tmp/$net.safetensors" --net "tv-$net" | grep -E "FAIL|logits|loss_train|passed"
  # The round trip: formula weights -> convnets run -> export -> torchvision, strict.
  "$python" - "$net" "$tmp" <<'PY'
import sys, torch
sys.path.insert(0, "bench")
from torchvision_reference import NETS, formula
name, tmp = sys.argv[1], sys.argv[2]
net = NETS[name]()
sd = net.state_dict(); names = sorted(sd)
torch.save({n: formula(n, names.index(n), sd[n]) for n in sd}, f"{tmp}/{name}.pth")
PY
  rm -rf "$tmp/run-$net"
  "$bin" import "$tmp/$net.pth" --net "tv-$net" --out "$tmp/run-$net" >/dev/null
  "$bin" export "$tmp/run-$net" --out "$tmp/$net-export.safetensors" >/dev/null
  "$python" bench/torchvision_reference.py load-export "$net" "$tmp/$net-export.safetensors" 2>/dev/null
  rm -f "$tmp/$net.safetensors" "$tmp/$net.pth" "$tmp/$net-export.safetensors"
done
