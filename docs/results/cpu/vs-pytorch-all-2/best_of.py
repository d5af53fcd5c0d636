#!/usr/bin/env python3
"""Issue 21's table as the best of several runs of run.sh: each side (every PyTorch variant, and
convnets) keeps its best train and eval rates over the runs, as `vs_pytorch.py --rounds R` does
within one run.

    best_of.py [--kernel-time DIR] [--torch-only RUN_DIR] RUN_DIR[:NET,NET...] [RUN_DIR ...]

`--torch-only` adds a run whose PyTorch rates count but whose convnets rates do not (a run of
another convnets commit: PyTorch's side is the same code in every run). `RUN_DIR:NET,NET` counts
that run's convnets rates for the networks named only (those whose convnets code it shares with
the others). Each RUN_DIR holds run.sh's <precision>-<group>.json files. Prints one markdown table per
precision: the best PyTorch variant's rates, convnets', their ratios, and the kernel bound, the
ratio convnets would reach if it spent no time outside oneDNN's convolution and matrix-product
kernels: from convnets' own kernel time where DIR holds `bench/kernel_time.py`'s JSON for the
network, in <precision>*.json (marked *), else from PyTorch's eager kernels' (vs_pytorch.py
--kernel-share), which convnets' fused and reordered steps can beat."""
import json
import sys
from pathlib import Path

ORDER = ["lenet-bn", "lenet-bn-scratch", "alexnet", "vgg11-small", "nin", "googlenet", "resnet18", "densenet"]


def merged(runs, precision, torch_only=()):
    """network -> {"torch": {variant: (train, eval)}, "convnets": (train, eval), "kernel": {kind: s/example}}

    `runs` are RUN_DIR or RUN_DIR:NET,NET (convnets' rates for those networks only)."""
    nets = {}
    for spec in list(runs) + list(torch_only):
        run, _, names = spec.partition(":")
        counted = set(names.split(",")) if names else None
        for path in sorted(Path(run).glob(f"{precision}-*.json")):
            for row in json.loads(path.read_text()):
                net = nets.setdefault(row["network"], {"torch": {}, "convnets": (0.0, 0.0), "kernel": {}})
                for m in row["torch_variants"]:
                    old = net["torch"].get(m["variant"], (0.0, 0.0))
                    net["torch"][m["variant"]] = (max(old[0], m["train_examples_per_s"]),
                                                  max(old[1], m["eval_examples_per_s"]))
                    for kind in ("train", "eval"):
                        if f"{kind}_kernel_share" in m:
                            t = m[f"{kind}_kernel_share"] / m[f"{kind}_examples_per_s"]
                            net["kernel"][kind] = min(net["kernel"].get(kind, t), t)
                if spec in torch_only or (counted is not None and row["network"] not in counted):
                    continue
                c = row["convnets"]
                net["convnets"] = (max(net["convnets"][0], c["train_examples_per_s"]),
                                   max(net["convnets"][1], c["eval_examples_per_s"]))
    return nets


def convnets_kernel_ms(directory, precision):
    """network -> {kind: convnets' kernel ms per example} from kernel_time.py's JSON files."""
    paths = sorted(Path(directory).glob(f"{precision}*.json")) if directory else []
    return {row["network"]: {kind: row[f"{kind}_kernel_ms"] / row["batch"] for kind in ("train", "eval")}
            for path in paths for row in json.loads(path.read_text())}


def main():
    args = sys.argv[1:]
    kernel_dir, torch_only = None, []
    while args[:1] in (["--kernel-time"], ["--torch-only"]):
        if args[0] == "--kernel-time":
            kernel_dir = args[1]
        else:
            torch_only.append(args[1])
        args = args[2:]
    runs = args
    for precision in ("fp32", "bf16"):
        nets = merged(runs, precision, torch_only)
        own_kernels = convnets_kernel_ms(kernel_dir, precision)
        extra = f", PyTorch's of {len(runs) + len(torch_only)}" if torch_only else ""
        print(f"\n{precision}, best of {len(runs)} run{'s' if len(runs) > 1 else ''}{extra}\n")
        print("| network | best PyTorch train (variant) | convnets | ratio | bound | "
              "best PyTorch eval (variant) | convnets | ratio | bound |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for name in [n for n in ORDER if n in nets]:
            net = nets[name]
            cells = []
            for i, kind in enumerate(("train", "eval")):
                variant, rates = max(net["torch"].items(), key=lambda kv: kv[1][i])
                rate = net["convnets"][i]
                ratio = rate / rates[i]
                if name in own_kernels:
                    bound = f"{1000 / (rates[i] * own_kernels[name][kind]):.2f}*"
                elif kind in net["kernel"]:
                    bound = f"{1 / (rates[i] * net['kernel'][kind]):.2f}"
                else:
                    bound = "-"
                shown = f"**{ratio:.2f}**" if ratio >= 1.3 else f"{ratio:.2f}"
                cells += [f"{rates[i]:,.1f} ({variant})", f"{rate:,.1f}", shown, bound]
            print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
