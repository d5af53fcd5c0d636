#!/usr/bin/env python3
"""How much of convnets' own step is oneDNN's convolution and matrix-product kernels, and what that
leaves as the best ratio against PyTorch: the convnets side of the "kernel bound".

    python3 bench/kernel_time.py [--steps N] [--warmup N] [--convnets-args '--precision bf16']
        [--torch-json docs/results/cpu/<run>/<precision>-large.json] net ...

For each network it runs `convnets bench` twice: once as is, for its train and eval rates, and
once with ONEDNN_VERBOSE=profile_exec, where oneDNN prints the execution time of every primitive
it runs. The convolution, inner-product and matmul primitives up to the last backward primitive
belong to the training steps (bench's warm-up, timed and pipeline-fed steps), the rest to the
evaluation passes, which bench runs last. Their sums per step are the time convnets spends in
those kernels; the rest of its step is everything else (batch norms, pooling, activations,
allocation, autograd).

With `--torch-json` (a JSON file `bench/vs_pytorch.py` wrote), it also prints the bound: PyTorch's
best variant's time per example over convnets' kernel time per example, the ratio convnets would
reach if it spent no time outside these kernels. A bound under 1.3 means 1.3 cannot be had with
these kernels. Matrix products libtorch hands to MKL instead of oneDNN (float32 linear layers in
training) are not counted as kernel time, which can only raise the bound.
"""
import argparse, json, os, subprocess, sys

HERE = os.path.dirname(os.path.abspath(__file__))
CONVNETS = os.environ.get("CONVNETS", os.path.join(HERE, "..", "target", "release", "convnets"))
KERNELS = ("convolution", "inner_product", "matmul")


def kernel_ms(lines):
    """(train ms, eval ms) of oneDNN's kernels in a `convnets bench` run's verbose output."""
    primitives = []  # (kind, propagation, ms) in the order they ran
    for line in lines:
        fields = line.split(",")
        if len(fields) < 8 or fields[:4] != ["onednn_verbose", "v1", "primitive", "exec"]:
            continue
        primitives.append((fields[5], fields[7], float(fields[-1])))
    # bench evaluates last, after its training steps: evaluation is what runs after the last
    # backward primitive. (NCHW networks' convolutions run as forward_training primitives even
    # without gradients, so the first forward_inference one does not mark it.)
    backward = [i for i, (_, prop, _) in enumerate(primitives) if prop.startswith("backward")]
    split = backward[-1] + 1 if backward else 0
    kernels = [(i, ms) for i, (kind, _, ms) in enumerate(primitives) if kind in KERNELS]
    return sum(ms for i, ms in kernels if i < split), sum(ms for i, ms in kernels if i >= split)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("nets", nargs="+")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--convnets-args", default="")
    p.add_argument("--torch-json", help="a vs_pytorch.py JSON file, for PyTorch's best variant per network")
    a = p.parse_args()
    torch_best = {}
    if a.torch_json:
        with open(a.torch_json) as f:
            for row in json.load(f):
                torch_best[row["network"]] = row["torch"]
    print(f"{'network':<14} {'train ms':>9} {'kernels':>8} {'share':>6} {'bound':>6}   "
          f"{'eval ms':>8} {'kernels':>8} {'share':>6} {'bound':>6}", flush=True)
    rows = []
    for name in a.nets:
        common = ["bench", name, "--steps", str(a.steps), "--warmup", str(a.warmup)] + a.convnets_args.split()
        plain = subprocess.run([CONVNETS] + common + ["--json"], check=True, capture_output=True, text=True).stdout
        rates = json.loads(plain.strip().splitlines()[-1])
        env = dict(os.environ, ONEDNN_VERBOSE="profile_exec")
        verbose = subprocess.run([CONVNETS] + common, check=True, capture_output=True, text=True, env=env)
        train_ms, eval_ms = kernel_ms((verbose.stdout + verbose.stderr).splitlines())
        batch = rates["batch"]
        # bench runs warm-up + timed + pipeline-fed training steps, and warm-up + timed eval passes.
        per_step = train_ms / (a.warmup + 2 * a.steps)
        per_pass = eval_ms / (a.warmup + a.steps)
        row = dict(network=name, convnets_args=a.convnets_args, batch=batch,
                   train_step_ms=1000 * batch / rates["train_examples_per_s"], train_kernel_ms=per_step,
                   eval_pass_ms=1000 * batch / rates["eval_examples_per_s"], eval_kernel_ms=per_pass)
        cells = []
        for kind in ("train", "eval"):
            total = row[f"{kind}_step_ms" if kind == "train" else "eval_pass_ms"]
            kernels = row[f"{kind}_kernel_ms"]
            row[f"{kind}_kernel_share"] = kernels / total
            torch = torch_best.get(name)
            if torch and kernels > 0:
                torch_ms = 1000 * batch / torch[f"{kind}_examples_per_s"]
                row[f"{kind}_bound"] = torch_ms / kernels
            bound = row.get(f"{kind}_bound")
            cells.append(f"{total:>9.1f} {kernels:>8.1f} {kernels / total:>6.2f} "
                         f"{bound if bound is not None else float('nan'):>6.2f}")
        print(f"{name:<14} {cells[0]}   {cells[1]}", flush=True)
        rows.append(row)
    with open(os.environ.get("BENCH_JSON", os.devnull), "w") as f:
        json.dump(rows, f, indent=1)


if __name__ == "__main__":
    sys.exit(main())
