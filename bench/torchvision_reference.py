#!/usr/bin/env python3
"""Reference files from torchvision 0.26 (PyTorch 2.11) for convnets' torchvision networks.

Needs torch and torchvision (a venv outside the repository: pip install torch==2.11.0
torchvision==0.26.0).

  keys OUT.json
      Every network's state_dict keys and shapes, in order (3 channels, 1000 classes).
  parity NET SIZE OUT.safetensors [--all-grads]
      A parity file for `convnets parity OUT --net tv-NET`: weights from a formula that
      convnets computes too (so the file need not hold them), an input of shape
      (2, 3, SIZE, SIZE), targets [1, 3], 10 classes; eval-mode logits, one train-mode step's
      logits, loss and gradients (dropout at p = 0, key `dropout_off`, so that networks with
      dropout compare too), and the running statistics after it. Without --all-grads only
      the gradients of tensors of at most 20,000 values are kept (a small file to commit).
  color OUT.json
      torchvision.transforms.v2.functional's adjust_brightness/contrast/saturation/hue on a
      3x12x16 and a 1x12x16 uint8 image (torch.manual_seed(0), randint), at fixed factors.
  load-export NET FILE.safetensors
      Loads a file `convnets export` wrote into torchvision's NET with strict=True and prints
      its eval-mode logits on the parity input (3 x 224 x 224), for comparison with convnets'.

The formula (float64, then float32), for the k-th key in sorted order and its i-th value
(row-major): b = sin(0.7 i + 1.3 k + 0.1); weights of 2 or more dimensions b * sqrt(6 / fan_in),
batch-norm weights 1 + 0.2 b, running variances 0.5 + b^2, biases and running means 0.1 b,
num_batches_tracked 0.
"""
import json
import math
import sys

import torch
import torch.nn.functional as F
import torchvision
from safetensors.torch import save_file

NETS = {
    "alexnet": lambda **kw: torchvision.models.alexnet(**kw),
    "vgg11": lambda **kw: torchvision.models.vgg11(**kw),
    "vgg11-bn": lambda **kw: torchvision.models.vgg11_bn(**kw),
    # As torchvision builds it for its published weights: transform_input on, aux heads kept.
    "googlenet": lambda **kw: torchvision.models.googlenet(
        aux_logits=True, transform_input=True, init_weights=False, **kw
    ),
    "resnet18": lambda **kw: torchvision.models.resnet18(**kw),
    "resnet34": lambda **kw: torchvision.models.resnet34(**kw),
    "resnet50": lambda **kw: torchvision.models.resnet50(**kw),
    "densenet121": lambda **kw: torchvision.models.densenet121(**kw),
}


def formula(name, k, t):
    if name.endswith("num_batches_tracked"):
        return torch.zeros_like(t)
    i = torch.arange(t.numel(), dtype=torch.float64)
    b = torch.sin(i * 0.7 + (1.3 * k + 0.1))
    if t.dim() >= 2:
        v = b * math.sqrt(6.0 / (t.numel() // t.shape[0]))
    elif name.endswith("running_var"):
        v = 0.5 + b * b
    elif name.endswith("running_mean") or name.endswith("bias"):
        v = 0.1 * b
    else:
        v = 1.0 + 0.2 * b
    return v.to(torch.float32).reshape(t.shape)


def keys(out):
    table = {}
    for name, build in NETS.items():
        sd = build().state_dict()
        table[f"tv-{name}"] = [[k, list(v.shape)] for k, v in sd.items()]
    with open(out, "w") as f:
        json.dump(table, f, indent=0)
        f.write("\n")


def parity(name, size, out, all_grads):
    torch.manual_seed(0)
    net = NETS[name](num_classes=10)
    sd = net.state_dict()
    names = sorted(sd)
    net.load_state_dict({n: formula(n, names.index(n), sd[n]) for n in sd})
    x = torch.sin(torch.arange(2 * 3 * size * size, dtype=torch.float64) * 0.05).float().reshape(2, 3, size, size)
    target = torch.tensor([1, 3])
    files = {"weights_formula": torch.ones(1), "input": x, "target": target}
    net.eval()
    with torch.no_grad():
        files["logits_eval"] = net(x)
    net.train()
    # Dropout at p = 0 (every unit kept, as convnets' training pass without dropout), so that
    # the training step of networks that have it compares too.
    for m in net.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    files["dropout_off"] = torch.ones(1)
    if name == "googlenet":
        # convnets never runs the auxiliary heads (torchvision drops them when it loads its
        # published weights without aux_logits=True).
        net.aux1 = net.aux2 = None
        net.aux_logits = False
    logits = net(x)
    loss = F.cross_entropy(logits, target)
    loss.backward()
    files["logits_train"] = logits.detach()
    files["loss_train"] = loss.detach()
    for n, p in net.named_parameters():
        if p.grad is not None and (all_grads or p.numel() <= 20000):
            files[f"grad.{n}"] = p.grad
    for n, b in net.named_buffers():
        if n.endswith("running_mean") or n.endswith("running_var"):
            files[f"after_train.{n}"] = b
    save_file({k: v.contiguous() for k, v in files.items()}, out)


def color(out):
    import torchvision.transforms.v2.functional as TF
    torch.manual_seed(0)
    rgb = torch.randint(0, 256, (3, 12, 16), dtype=torch.uint8)
    grey = torch.randint(0, 256, (1, 12, 16), dtype=torch.uint8)
    cases = []
    for image, name in [(rgb, "rgb"), (grey, "grey")]:
        for op, factors in [
            ("brightness", [0.5, 1.4]),
            ("contrast", [0.3, 1.8]),
            ("saturation", [0.0, 0.5, 2.0]),
            ("hue", [-0.3, 0.1, 0.45]),
        ]:
            for f in factors:
                result = getattr(TF, f"adjust_{op}")(image, f)
                cases.append({"image": name, "op": op, "factor": f, "output": result.flatten().tolist()})
    with open(out, "w") as f:
        json.dump({"rgb": rgb.flatten().tolist(), "grey": grey.flatten().tolist(), "cases": cases}, f)
        f.write("\n")


def load_export(name, path):
    from safetensors.torch import load_file
    net = NETS[name](num_classes=1000)
    state = load_file(path)
    net.load_state_dict(state, strict=True)  # raises on any missing, unexpected or misshapen key
    net.eval()
    x = torch.sin(torch.arange(3 * 224 * 224, dtype=torch.float64) * 0.05).float().reshape(1, 3, 224, 224)
    with torch.no_grad():
        logits = net(x)
    print(f"{name}: strict load of {len(state)} tensors ok; logits[:5] {[round(float(v), 5) for v in logits[0, :5]]}")


if __name__ == "__main__":
    if sys.argv[1] == "keys":
        keys(sys.argv[2])
    elif sys.argv[1] == "parity":
        parity(sys.argv[2], int(sys.argv[3]), sys.argv[4], "--all-grads" in sys.argv)
    elif sys.argv[1] == "color":
        color(sys.argv[2])
    elif sys.argv[1] == "load-export":
        load_export(sys.argv[2], sys.argv[3])
    else:
        sys.exit(__doc__)
