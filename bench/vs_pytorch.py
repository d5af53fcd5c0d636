#!/usr/bin/env python3
"""Side by side: the same d2l workloads in PyTorch eager and in convnets, on this machine, in one
run, with the ratio per network. It is how convnets quotes speed.

PyTorch: `python3 -m venv ~/.cache/convnets/torch-venv && ~/.cache/convnets/torch-venv/bin/pip
install torch==2.11.0` (about 3.5 GB; convnets itself does not need it), then run this script
with that venv's python:

    ~/.cache/convnets/torch-venv/bin/python bench/vs_pytorch.py [--device cpu|cuda]
        [--steps N] [--warmup N] [--batch-size B] [--torch-variants eager,channels-last,compile,...]
        [--torch-precision fp32|bf16] [--convnets-args '--precision bf16'] [--kernel-share]
        [--rounds R] [net ...]

PyTorch's side runs each of `--torch-variants` in a process of its own: `eager` (contiguous
tensors, d2l's code as written), `channels-last` (network and batch in channels-last),
`compile` and `compile-max-autotune` (`torch.compile` of the channels-last network, default
mode or mode="max-autotune"; compilation happens in the warm-up steps, outside the timing). The
ratios are against the fastest variant, train and eval each, so every claim is a ratio from one
run on one machine against the best PyTorch a speed-minded user would write. `--kernel-share`
(CPU) profiles the eager variants too: the share of their time spent in convolution and
matrix-product kernels gives, per network, the ratio an implementation would reach against the
best variant if those kernels were all it spent time on (the "kernel bound"). `--rounds R`
measures every variant and convnets R times, round after round, and keeps each one's best train
and eval rates: on a shared machine a slow spell then falls on both sides.

Each side measures d2l's timed train step (zero grad, forward, loss, backward, step, loss read
back) on a fixed random batch, and eval-mode forward passes, after warm-up steps; each network runs
in a fresh process so that peak memory is its own (on a GPU: the allocator's peak after the
warm-up steps, on both sides). The PyTorch networks are those of the seed notebook (the project's
shared reference bench script), initialised as d2l does. On the GPU machines the device tool lends,
`bench/gpu_session.sh` runs this among the other GPU checks.
"""
import argparse, json, os, subprocess, sys, time

HERE = os.path.dirname(os.path.abspath(__file__))
CONVNETS = os.environ.get("CONVNETS_BIN", os.path.join(HERE, "..", "target", "release", "convnets"))
# convnets name -> (PyTorch builder name, lr, d2l batch, side)
NETS = {"alexnet": ("alexnet", 0.01, 128, 224), "vgg11-small": ("vgg", 0.05, 128, 224), "nin": ("nin", 0.1, 128, 224),
        "googlenet": ("googlenet", 0.1, 128, 96), "lenet-bn-scratch": ("lenet_bn_scratch", 1.0, 256, 28),
        "lenet-bn": ("lenet_bn", 1.0, 256, 28),
        "resnet18": ("resnet18", 0.05, 256, 96), "densenet": ("densenet", 0.1, 256, 96)}
BOOK = list(NETS)
# torchvision's networks (ImageNet input: 3 x 224 x 224, 1000 classes), against torchvision's own.
TORCHVISION = {"tv-alexnet": "alexnet", "tv-vgg11": "vgg11", "tv-vgg11-bn": "vgg11_bn", "tv-googlenet": "googlenet",
               "tv-resnet18": "resnet18", "tv-resnet34": "resnet34", "tv-resnet50": "resnet50",
               "tv-densenet121": "densenet121"}
NETS.update({name: (builder, 0.01, 32, 224) for name, builder in TORCHVISION.items()})


VARIANTS = ["eager", "channels-last", "compile", "compile-max-autotune"]


def torch_worker(name, device, batch, steps, warmup, precision, variant, share):
    import torch
    from torch import nn
    from torch.nn import functional as F
    g = dict(torch=torch, nn=nn, F=F)
    exec(MODELS, g)
    builder, lr, _, side = NETS[name]
    if device == "cpu":
        torch.set_num_threads(os.cpu_count())
    dev = torch.device(device)
    torch.manual_seed(0)
    if name in TORCHVISION:
        import torchvision
        # GoogLeNet as convnets runs it: transform_input on, no auxiliary heads.
        extra = dict(aux_logits=False, transform_input=True, init_weights=True) if builder == "googlenet" else {}
        net = getattr(torchvision.models, builder)(**extra)
        channels, classes = 3, 1000
    else:
        net = g[builder]()
        def init(m):
            if type(m) in (nn.Linear, nn.Conv2d):
                nn.init.xavier_uniform_(m.weight)
        net.apply(init)
        channels, classes = 1, 10
    net.to(dev); net.train()
    opt = torch.optim.SGD(net.parameters(), lr=lr); loss = nn.CrossEntropyLoss()
    X = torch.rand(batch, channels, side, side, device=dev); y = torch.randint(0, classes, (batch,), device=dev)
    # Every variant but eager lays the network and the batch out channels-last.
    if variant != "eager":
        net.to(memory_format=torch.channels_last); X = X.to(memory_format=torch.channels_last)
    if variant.startswith("compile"):
        net = torch.compile(net, mode="max-autotune" if variant == "compile-max-autotune" else None)
    cast = lambda: torch.autocast(dev.type, dtype=torch.bfloat16, enabled=precision == "bf16")

    def train_step():
        opt.zero_grad()
        with cast():
            l = loss(net(X), y)
        l.backward(); opt.step()
        float(l.detach())

    def eval_pass():  # in eval mode, under no_grad and cast
        int(net(X).argmax(1).sum())

    t = 0.0
    for i in range(warmup + steps):
        if i == warmup and device == "cuda":
            torch.cuda.reset_peak_memory_stats()  # the steady state, as convnets bench reports it
        t0 = time.perf_counter()
        train_step()
        if i >= warmup:
            t += time.perf_counter() - t0
    train = batch * steps / t
    net.eval()
    with torch.no_grad(), cast():
        for _ in range(warmup):
            net(X)
        t0 = time.perf_counter()
        for _ in range(steps):
            eval_pass()
        evaluate = batch * steps / (time.perf_counter() - t0)
    shares = kernel_shares(net, train_step, eval_pass, cast, steps) if share and device == "cpu" else {}
    peak = None
    if device == "cpu":
        with open("/proc/self/status") as f:
            peak = next(int(l.split()[1]) / 1024 for l in f if l.startswith("VmHWM:"))
    else:
        peak = torch.cuda.max_memory_allocated() / 2**20
    print(json.dumps(dict(train_examples_per_s=train, eval_examples_per_s=evaluate, peak_mib=peak,
                          threads=torch.get_num_threads(), torch=torch.__version__, variant=variant, **shares)))


# The operators whose self time is arithmetic both sides must do with the same oneDNN and BLAS
# kernels: convolutions (forward and backward) and matrix products.
KERNELS = ("mkldnn_convolution", "convolution_backward", "slow_conv", "addmm", "aten::mm", "bmm", "mkldnn_linear")


def kernel_shares(net, train_step, eval_pass, cast, steps):
    """The share of a train step's and of an eval pass's CPU time that convolution and matrix
    product kernels take (torch.profiler's self times, over `steps` more of the timed steps). The rest
    is what another implementation could at best save: `1 / share` bounds its speed-up over this
    variant."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    def share(run):
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(steps):
                run()
        events = prof.key_averages()
        total = sum(e.self_cpu_time_total for e in events)
        kernels = sum(e.self_cpu_time_total for e in events if any(k in e.key for k in KERNELS))
        return kernels / total

    def eval_without_grad():
        with torch.no_grad(), cast():
            eval_pass()

    net.train()
    train = share(train_step)
    net.eval()
    return dict(train_kernel_share=train, eval_kernel_share=share(eval_without_grad))


MODELS = r'''
def alexnet():
    return nn.Sequential(
        nn.Conv2d(1, 96, 11, 4, 1), nn.ReLU(), nn.MaxPool2d(3, 2),
        nn.Conv2d(96, 256, 5, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
        nn.Conv2d(256, 384, 3, padding=1), nn.ReLU(), nn.Conv2d(384, 384, 3, padding=1), nn.ReLU(),
        nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(), nn.MaxPool2d(3, 2), nn.Flatten(),
        nn.Linear(6400, 4096), nn.ReLU(), nn.Dropout(0.5), nn.Linear(4096, 4096), nn.ReLU(), nn.Dropout(0.5),
        nn.Linear(4096, 10))

def vgg(ratio=4):
    arch = [(1, 64), (1, 128), (2, 256), (2, 512), (2, 512)]
    layers, c = [], 1
    for n, o in arch:
        o //= ratio
        for _ in range(n):
            layers += [nn.Conv2d(c, o, 3, padding=1), nn.ReLU()]; c = o
        layers.append(nn.MaxPool2d(2, 2))
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(c * 49, 4096), nn.ReLU(), nn.Dropout(0.5),
                         nn.Linear(4096, 4096), nn.ReLU(), nn.Dropout(0.5), nn.Linear(4096, 10))

def nin():
    def blk(i, o, k, s, p):
        return nn.Sequential(nn.Conv2d(i, o, k, s, p), nn.ReLU(), nn.Conv2d(o, o, 1), nn.ReLU(), nn.Conv2d(o, o, 1), nn.ReLU())
    return nn.Sequential(blk(1, 96, 11, 4, 0), nn.MaxPool2d(3, 2), blk(96, 256, 5, 1, 2), nn.MaxPool2d(3, 2),
                         blk(256, 384, 3, 1, 1), nn.MaxPool2d(3, 2), nn.Dropout(0.5), blk(384, 10, 3, 1, 1),
                         nn.AdaptiveAvgPool2d((1, 1)), nn.Flatten())

class Inception(nn.Module):
    def __init__(self, i, c1, c2, c3, c4):
        super().__init__()
        self.p1_1 = nn.Conv2d(i, c1, 1)
        self.p2_1 = nn.Conv2d(i, c2[0], 1); self.p2_2 = nn.Conv2d(c2[0], c2[1], 3, padding=1)
        self.p3_1 = nn.Conv2d(i, c3[0], 1); self.p3_2 = nn.Conv2d(c3[0], c3[1], 5, padding=2)
        self.p4_1 = nn.MaxPool2d(3, 1, 1); self.p4_2 = nn.Conv2d(i, c4, 1)
    def forward(self, x):
        return torch.cat((F.relu(self.p1_1(x)), F.relu(self.p2_2(F.relu(self.p2_1(x)))),
                          F.relu(self.p3_2(F.relu(self.p3_1(x)))), F.relu(self.p4_2(self.p4_1(x)))), 1)

def googlenet():
    b1 = nn.Sequential(nn.Conv2d(1, 64, 7, 2, 3), nn.ReLU(), nn.MaxPool2d(3, 2, 1))
    b2 = nn.Sequential(nn.Conv2d(64, 64, 1), nn.ReLU(), nn.Conv2d(64, 192, 3, padding=1), nn.ReLU(), nn.MaxPool2d(3, 2, 1))
    b3 = nn.Sequential(Inception(192, 64, (96, 128), (16, 32), 32), Inception(256, 128, (128, 192), (32, 96), 64), nn.MaxPool2d(3, 2, 1))
    b4 = nn.Sequential(Inception(480, 192, (96, 208), (16, 48), 64), Inception(512, 160, (112, 224), (24, 64), 64),
                       Inception(512, 128, (128, 256), (24, 64), 64), Inception(512, 112, (144, 288), (32, 64), 64),
                       Inception(528, 256, (160, 320), (32, 128), 128), nn.MaxPool2d(3, 2, 1))
    b5 = nn.Sequential(Inception(832, 256, (160, 320), (32, 128), 128), Inception(832, 384, (192, 384), (48, 128), 128),
                       nn.AdaptiveAvgPool2d((1, 1)), nn.Flatten())
    return nn.Sequential(b1, b2, b3, b4, b5, nn.Linear(1024, 10))

class BatchNorm(nn.Module):
    """d2l's from-scratch batch norm, its mode taken from the module (not from autograd)."""
    def __init__(self, num_features, num_dims):
        super().__init__()
        shape = (1, num_features) if num_dims == 2 else (1, num_features, 1, 1)
        self.gamma = nn.Parameter(torch.ones(shape)); self.beta = nn.Parameter(torch.zeros(shape))
        self.register_buffer("moving_mean", torch.zeros(shape)); self.register_buffer("moving_var", torch.ones(shape))
    def forward(self, X):
        if not self.training:
            X_hat = (X - self.moving_mean) / torch.sqrt(self.moving_var + 1e-5)
        else:
            dims = 0 if X.dim() == 2 else (0, 2, 3)
            mean = X.mean(dim=dims, keepdim=True); var = ((X - mean) ** 2).mean(dim=dims, keepdim=True)
            X_hat = (X - mean) / torch.sqrt(var + 1e-5)
            with torch.no_grad():
                self.moving_mean.mul_(0.9).add_(0.1 * mean); self.moving_var.mul_(0.9).add_(0.1 * var)
        return self.gamma * X_hat + self.beta

def lenet_bn_scratch():
    return nn.Sequential(nn.Conv2d(1, 6, 5), BatchNorm(6, 4), nn.Sigmoid(), nn.AvgPool2d(2, 2),
                         nn.Conv2d(6, 16, 5), BatchNorm(16, 4), nn.Sigmoid(), nn.AvgPool2d(2, 2), nn.Flatten(),
                         nn.Linear(256, 120), BatchNorm(120, 2), nn.Sigmoid(), nn.Linear(120, 84), BatchNorm(84, 2),
                         nn.Sigmoid(), nn.Linear(84, 10))

def lenet_bn():
    return nn.Sequential(nn.Conv2d(1, 6, 5), nn.BatchNorm2d(6), nn.Sigmoid(), nn.AvgPool2d(2, 2),
                         nn.Conv2d(6, 16, 5), nn.BatchNorm2d(16), nn.Sigmoid(), nn.AvgPool2d(2, 2), nn.Flatten(),
                         nn.Linear(256, 120), nn.BatchNorm1d(120), nn.Sigmoid(), nn.Linear(120, 84), nn.BatchNorm1d(84),
                         nn.Sigmoid(), nn.Linear(84, 10))

class Residual(nn.Module):
    def __init__(self, i, o, use1x1=False, s=1):
        super().__init__()
        self.conv1 = nn.Conv2d(i, o, 3, padding=1, stride=s); self.conv2 = nn.Conv2d(o, o, 3, padding=1)
        self.conv3 = nn.Conv2d(i, o, 1, stride=s) if use1x1 else None
        self.bn1 = nn.BatchNorm2d(o); self.bn2 = nn.BatchNorm2d(o)
    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x))); y = self.bn2(self.conv2(y))
        if self.conv3: x = self.conv3(x)
        return F.relu(y + x)

def resnet18():
    def stage(i, o, n, first=False):
        return [Residual(i, o, True, 2) if k == 0 and not first else Residual(o, o) for k in range(n)]
    b1 = nn.Sequential(nn.Conv2d(1, 64, 7, 2, 3), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(3, 2, 1))
    return nn.Sequential(b1, nn.Sequential(*stage(64, 64, 2, True)), nn.Sequential(*stage(64, 128, 2)),
                         nn.Sequential(*stage(128, 256, 2)), nn.Sequential(*stage(256, 512, 2)),
                         nn.AdaptiveAvgPool2d((1, 1)), nn.Flatten(), nn.Linear(512, 10))

def densenet():
    def conv_block(i, o): return nn.Sequential(nn.BatchNorm2d(i), nn.ReLU(), nn.Conv2d(i, o, 3, padding=1))
    class DenseBlock(nn.Module):
        def __init__(self, n, i, g):
            super().__init__(); self.net = nn.Sequential(*[conv_block(i + k * g, g) for k in range(n)])
        def forward(self, x):
            for b in self.net: x = torch.cat((x, b(x)), 1)
            return x
    def transition(i, o): return nn.Sequential(nn.BatchNorm2d(i), nn.ReLU(), nn.Conv2d(i, o, 1), nn.AvgPool2d(2, 2))
    b1 = nn.Sequential(nn.Conv2d(1, 64, 7, 2, 3), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(3, 2, 1))
    c, g, blks = 64, 32, []
    for k, n in enumerate([4, 4, 4, 4]):
        blks.append(DenseBlock(n, c, g)); c += n * g
        if k != 3: blks.append(transition(c, c // 2)); c //= 2
    return nn.Sequential(b1, *blks, nn.BatchNorm2d(c), nn.ReLU(), nn.AdaptiveAvgPool2d((1, 1)), nn.Flatten(), nn.Linear(c, 10))

'''


def best_of(rounds):
    """One side's measurement over rounds: the first round's, with the best train and eval rates
    of all of them (each round's kept under `rounds`)."""
    best = dict(rounds[0])
    for kind in ("train_examples_per_s", "eval_examples_per_s"):
        best[kind] = max(r[kind] for r in rounds)
    best["rounds"] = [dict(train=r["train_examples_per_s"], eval=r["eval_examples_per_s"]) for r in rounds]
    return best


def main():
    p = argparse.ArgumentParser()
    p.add_argument("nets", nargs="*", default=BOOK, help="the book's networks by default; tv-* for torchvision's")
    p.add_argument("--device", default="cpu")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--rounds", type=int, default=1,
                   help="measure every variant and convnets this many times, interleaved, and keep each side's best")
    p.add_argument("--torch-precision", default="fp32", choices=["fp32", "bf16"],
                   help="PyTorch's side: fp32, or bf16 autocast")
    p.add_argument("--torch-variants", default="eager",
                   help=f"comma-separated, each in its own process: {', '.join(VARIANTS)}")
    p.add_argument("--variant", default="eager", choices=VARIANTS, help=argparse.SUPPRESS)
    p.add_argument("--convnets-args", default="",
                   help="extra `convnets bench` options, e.g. '--precision bf16 --memory-format channels-last'")
    p.add_argument("--kernel-share", action="store_true",
                   help="profile the eager variants (CPU) for the share of time in convolution and matrix "
                        "product kernels, and print the speed-up over the best variant that bounds any implementation")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        return torch_worker(a.worker, a.device, a.batch_size, a.steps, a.warmup, a.torch_precision, a.variant,
                            a.kernel_share)
    variants = a.torch_variants.split(",")
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        p.error(f"unknown --torch-variants {unknown}; choose from {VARIANTS}")
    rows = []
    print(f"{'network':<16} {'batch':>5} {'torch train':>12} {'convnets':>10} {'ratio':>6} "
          f"{'torch eval':>11} {'convnets':>10} {'ratio':>6} {'torch MiB':>10} {'convnets':>9}  best torch (train, eval)",
          flush=True)
    for name in a.nets:
        batch = a.batch_size or NETS[name][2]
        common = ["--steps", str(a.steps), "--warmup", str(a.warmup), "--batch-size", str(batch), "--device", a.device]
        try:
            # Round after round, every variant and convnets once each, so that a slow spell of a
            # shared machine falls on both sides; each keeps its best figures.
            torch_rounds, ours_rounds = {v: [] for v in variants}, []
            for round_index in range(a.rounds):
                for variant in variants:
                    profiled = a.kernel_share and round_index == 0 and not variant.startswith("compile")
                    torch_out = subprocess.run([sys.executable, __file__, "--worker", name, "--torch-precision",
                                                a.torch_precision, "--variant", variant] + common +
                                               (["--kernel-share"] if profiled else []),
                                               check=True, capture_output=True, text=True).stdout
                    torch_rounds[variant].append(json.loads(torch_out.strip().splitlines()[-1]))
                ours_out = subprocess.run([CONVNETS, "bench", name, "--json"] + common + a.convnets_args.split(),
                                          check=True, capture_output=True, text=True).stdout
                ours_rounds.append(json.loads(ours_out.strip().splitlines()[-1]))
            measured = [best_of(torch_rounds[v]) for v in variants]
            best_train = max(measured, key=lambda m: m["train_examples_per_s"])
            best_eval = max(measured, key=lambda m: m["eval_examples_per_s"])
            t = dict(best_train, eval_examples_per_s=best_eval["eval_examples_per_s"])
            c = best_of(ours_rounds)
        except subprocess.CalledProcessError as e:
            print(f"{name}: {' '.join(e.cmd[:3])} failed: {e.stderr.strip()[-500:]}", flush=True)
            continue
        peak = c["peak_rss_mib"] if c["peak_rss_mib"] is not None else c.get("peak_gpu_mib")
        row = dict(network=name, batch=batch, device=a.device, torch_precision=a.torch_precision,
                   convnets_args=a.convnets_args, torch=t, torch_variants=measured, convnets=c,
                   train_ratio=c["train_examples_per_s"] / t["train_examples_per_s"],
                   eval_ratio=c["eval_examples_per_s"] / t["eval_examples_per_s"])
        # Kernel-only time per example: the least over the profiled variants; the best variant's
        # time over it is the ratio an implementation that spent nothing outside those kernels
        # would reach.
        for kind in ("train", "eval"):
            kernel_times = [m[f"{kind}_kernel_share"] / m[f"{kind}_examples_per_s"]
                            for m in measured if f"{kind}_kernel_share" in m]
            if kernel_times:
                row[f"{kind}_bound"] = 1 / (t[f"{kind}_examples_per_s"] * min(kernel_times))
        rows.append(row)
        print(f"{name:<16} {batch:>5} {t['train_examples_per_s']:>12.1f} {c['train_examples_per_s']:>10.1f} "
              f"{row['train_ratio']:>6.2f} {t['eval_examples_per_s']:>11.1f} {c['eval_examples_per_s']:>10.1f} "
              f"{row['eval_ratio']:>6.2f} {t['peak_mib'] or 0:>10.0f} {peak if peak is not None else float('nan'):>9.0f}"
              f"  {best_train['variant']}, {best_eval['variant']}", flush=True)
        if "train_bound" in row:
            print(f"  kernel bound: train {row['train_bound']:.2f}, eval {row['eval_bound']:.2f} "
                  f"(the ratio if nothing but convolution and matrix-product kernels took time)", flush=True)
        if len(measured) > 1:
            for m in measured:
                shares = (f"  kernel share train {m['train_kernel_share']:.2f}, eval {m['eval_kernel_share']:.2f}"
                          if "train_kernel_share" in m else "")
                print(f"  torch {m['variant']:<20} train {m['train_examples_per_s']:>9.1f}  eval {m['eval_examples_per_s']:>9.1f}"
                      f"{shares}", flush=True)
    with open(os.environ.get("BENCH_JSON", os.devnull), "w") as f:
        json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
