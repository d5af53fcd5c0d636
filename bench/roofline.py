#!/usr/bin/env python3
"""How close each side of a `bench/vs_pytorch.py` table runs to the CPU's multiply-add peak, and
the ratio that peak leaves: the arithmetic side of issue 21's bound ("a convolution already at the
cores' FMA peak").

    ~/.cache/convnets/torch-venv/bin/python bench/roofline.py --json docs/results/cpu/<run>/fp32-large.json
        [--threads N] [--peak-gflops G]

It counts each network's multiply-adds per example, as the direct algorithm both sides run does
them: a convolution's taps that fall on padding are skipped (oneDNN does not multiply by them;
torchinfo's mult-adds count them: a fifth too many for ResNet-18 at 96 pixels, two thirds on
its 3x3 maps), a linear layer is in x out. Training is the forward pass, the weights' gradients (as many multiply-adds) and the
inputs' gradients (as many, but none for the images). Batch norms, pooling and activations are
not counted: they are memory-bound and small. The peak is `bench/fma_peak.c` (compiled with
-march=native) on as many threads as PyTorch and convnets use, unless --peak-gflops gives it.

Per network it prints each side's GFLOP/s as a share of the peak, and the ceiling: PyTorch's best
variant's time per example over the time the arithmetic takes at the peak, the ratio an
implementation doing the same arithmetic could reach at most. A ceiling under 1.3 means 1.3
needs fewer multiply-adds (Winograd's or FFT convolutions), not faster code; convnets' Winograd
layers (csrc/winograd.cpp) are counted at the direct algorithm's multiply-adds, so its share of
the peak can pass 100%. Float32 only: for a
bf16 table the float32 peak is the wrong ceiling.
"""
import argparse, json, os, subprocess, sys, tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import vs_pytorch  # noqa: E402  (its network definitions and d2l settings)


def valid_taps(size, kernel, stride, padding, dilation, out):
    """Sum over the output positions along one side of the kernel taps that land inside the input."""
    return sum(sum(1 for k in range(kernel) if 0 <= o * stride - padding + k * dilation < size) for o in range(out))


def multiply_adds(name):
    """(forward, training) multiply-adds per example of a vs_pytorch network."""
    import torch
    from torch import nn
    g = dict(torch=torch, nn=nn, F=torch.nn.functional)
    exec(vs_pytorch.MODELS, g)
    builder, _, _, side = vs_pytorch.NETS[name]
    net = g[builder]().eval()
    layers = []  # multiply-adds of each convolution and linear layer, in the order they run

    def count(module, inputs, output):
        x = inputs[0]
        if isinstance(module, nn.Conv2d):
            taps = 1
            for axis in (0, 1):
                taps *= valid_taps(x.shape[2 + axis], module.kernel_size[axis], module.stride[axis],
                                   module.padding[axis], module.dilation[axis], output.shape[2 + axis])
            layers.append(taps * module.out_channels * module.in_channels // module.groups)
        else:
            layers.append(module.in_features * module.out_features)

    for m in net.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            m.register_forward_hook(count)
    with torch.no_grad():
        net(torch.zeros(1, 1, side, side))
    forward = sum(layers)
    # Weight gradients as many as the forward; input gradients too, but the first layer's input
    # is the images.
    return forward, 3 * forward - layers[0]


def fma_peak(threads):
    with tempfile.TemporaryDirectory() as tmp:
        exe = os.path.join(tmp, "fma_peak")
        subprocess.run(["cc", "-O2", "-march=native", "-fopenmp", os.path.join(HERE, "fma_peak.c"), "-o", exe],
                       check=True)
        out = subprocess.run([exe, str(threads)], check=True, capture_output=True, text=True).stdout
    return float(out.split()[1])


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--json", required=True, action="append", help="a JSON file bench/vs_pytorch.py wrote (repeatable)")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="threads of the peak (default: all, as both sides)")
    p.add_argument("--peak-gflops", type=float, help="the float32 multiply-add peak, instead of measuring it")
    a = p.parse_args()
    rows = [row for path in a.json for row in json.load(open(path))]
    if any(row["torch_precision"] != "fp32" for row in rows):
        p.error("float32 tables only: the peak is float32 multiply-adds")
    peak = a.peak_gflops or fma_peak(a.threads)
    print(f"float32 multiply-add peak: {peak:.1f} GFLOP/s on {a.threads} threads")
    print(f"{'network':<17} {'kind':<5} {'MFLOP/ex':>9} {'torch GF/s':>10} {'% peak':>6} {'convnets GF/s':>13} "
          f"{'% peak':>6} {'ratio':>6} {'ceiling':>7}")
    for row in rows:
        forward, training = multiply_adds(row["network"])
        for kind, macs in (("train", training), ("eval", forward)):
            flop = 2 * macs
            torch_rate = row["torch"][f"{kind}_examples_per_s"] * flop / 1e9
            ours_rate = row["convnets"][f"{kind}_examples_per_s"] * flop / 1e9
            print(f"{row['network']:<17} {kind:<5} {flop / 1e6:>9.1f} {torch_rate:>10.1f} {100 * torch_rate / peak:>6.0f} "
                  f"{ours_rate:>13.1f} {100 * ours_rate / peak:>6.0f} {ours_rate / torch_rate:>6.2f} "
                  f"{peak / torch_rate:>7.2f}")


if __name__ == "__main__":
    main()
