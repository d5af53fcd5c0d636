#!/usr/bin/env python3
"""d2l's own training loop in PyTorch, as the book runs it, for wall-clock comparisons with
`convnets train` on the same machine: `load_data_fashion_mnist(batch_size, resize)`
(torchvision's FashionMNIST, `Resize` on PIL images + `ToTensor`, a DataLoader with d2l's 4
workers, shuffled training set) and `train_ch6` (Xavier init, plain SGD, the timed step, the
running train loss and accuracy, `evaluate_accuracy_gpu` after each epoch), on the networks of
the seed notebook (bench/vs_pytorch.py holds them) and the from-scratch batch norm's LeNet.
The Animator's drawing is left out; everything else is the book's.

    python3 bench/d2l_train_ch6.py --data DIR [--device cuda] [--epochs 10] [net ...]

DIR holds the four Fashion-MNIST files (.gz or not). Each network runs in a process of its own,
timed from its start to its exit as `convnets train` is; one JSON line per network on stdout
(`wall_s`, the book's final figures), d2l's own lines on stderr.
"""
import argparse, gzip, json, os, shutil, subprocess, sys, tempfile, time

HERE = os.path.dirname(os.path.abspath(__file__))
# convnets name -> (builder in vs_pytorch.MODELS or below, lr, batch size, resize)
NETS = {"lenet-bn-scratch": ("lenet_bn_scratch", 1.0, 256, None), "lenet-bn": ("lenet_bn", 1.0, 256, None),
        "resnet18": ("resnet18", 0.05, 256, 96), "densenet": ("densenet", 0.1, 256, 96),
        "googlenet": ("googlenet", 0.1, 128, 96), "nin": ("nin", 0.1, 128, 224),
        "alexnet": ("alexnet", 0.01, 128, 224), "vgg11-small": ("vgg", 0.05, 128, 224)}
FILES = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]

# d2l 7.5's BatchNorm from scratch; the mode follows the module's flag (the seed asks autograd,
# which d2l's no_grad evaluation happens to satisfy: the same computation either way).
SCRATCH = r'''
def batch_norm(X, gamma, beta, moving_mean, moving_var, eps, momentum, training):
    if not training:
        X_hat = (X - moving_mean) / torch.sqrt(moving_var + eps)
    else:
        if len(X.shape) == 2:
            mean = X.mean(dim=0)
            var = ((X - mean) ** 2).mean(dim=0)
        else:
            mean = X.mean(dim=(0, 2, 3), keepdim=True)
            var = ((X - mean) ** 2).mean(dim=(0, 2, 3), keepdim=True)
        X_hat = (X - mean) / torch.sqrt(var + eps)
        moving_mean = momentum * moving_mean + (1.0 - momentum) * mean
        moving_var = momentum * moving_var + (1.0 - momentum) * var
    Y = gamma * X_hat + beta
    return Y, moving_mean.data, moving_var.data

class BatchNorm(nn.Module):
    def __init__(self, num_features, num_dims):
        super().__init__()
        shape = (1, num_features) if num_dims == 2 else (1, num_features, 1, 1)
        self.gamma = nn.Parameter(torch.ones(shape))
        self.beta = nn.Parameter(torch.zeros(shape))
        self.moving_mean = torch.zeros(shape)
        self.moving_var = torch.ones(shape)
    def forward(self, X):
        if self.moving_mean.device != X.device:
            self.moving_mean = self.moving_mean.to(X.device)
            self.moving_var = self.moving_var.to(X.device)
        Y, self.moving_mean, self.moving_var = batch_norm(
            X, self.gamma, self.beta, self.moving_mean, self.moving_var, eps=1e-5, momentum=0.9,
            training=self.training)
        return Y

def lenet_bn_scratch():
    return nn.Sequential(nn.Conv2d(1, 6, 5), BatchNorm(6, 4), nn.Sigmoid(), nn.AvgPool2d(2, 2),
                         nn.Conv2d(6, 16, 5), BatchNorm(16, 4), nn.Sigmoid(), nn.AvgPool2d(2, 2), nn.Flatten(),
                         nn.Linear(16 * 4 * 4, 120), BatchNorm(120, 2), nn.Sigmoid(),
                         nn.Linear(120, 84), BatchNorm(84, 2), nn.Sigmoid(), nn.Linear(84, 10))
'''


def torchvision_root(data):
    """A folder in torchvision's FashionMNIST layout (ROOT/FashionMNIST/raw/*-ubyte) made from DIR."""
    root = tempfile.mkdtemp(prefix="d2l-fashion-")
    raw = os.path.join(root, "FashionMNIST", "raw")
    os.makedirs(raw)
    for name in FILES:
        plain, packed = os.path.join(data, name), os.path.join(data, name + ".gz")
        with (open(plain, "rb") if os.path.exists(plain) else gzip.open(packed, "rb")) as src, \
                open(os.path.join(raw, name), "wb") as dst:
            shutil.copyfileobj(src, dst)
    return root


def worker(name, root, device_name, epochs):
    import torch, torchvision
    from torch import nn
    from torch.nn import functional as F
    from torch.utils import data
    from torchvision import transforms
    sys.path.insert(0, HERE)
    from vs_pytorch import MODELS
    g = dict(torch=torch, nn=nn, F=F)
    exec(MODELS, g)
    exec(SCRATCH, g)
    builder, lr, batch_size, resize = NETS[name]

    # d2l.load_data_fashion_mnist
    trans = [transforms.ToTensor()]
    if resize:
        trans.insert(0, transforms.Resize(resize))
    trans = transforms.Compose(trans)
    mnist_train = torchvision.datasets.FashionMNIST(root=root, train=True, transform=trans, download=False)
    mnist_test = torchvision.datasets.FashionMNIST(root=root, train=False, transform=trans, download=False)
    train_iter = data.DataLoader(mnist_train, batch_size, shuffle=True, num_workers=4)
    test_iter = data.DataLoader(mnist_test, batch_size, shuffle=False, num_workers=4)

    def accuracy(y_hat, y):
        return float((y_hat.argmax(axis=1).type(y.dtype) == y).type(y.dtype).sum())

    def evaluate_accuracy_gpu(net, data_iter, device):
        net.eval()
        correct, count = 0.0, 0
        with torch.no_grad():
            for X, y in data_iter:
                X, y = X.to(device), y.to(device)
                correct += accuracy(net(X), y)
                count += y.numel()
        return correct / count

    # d2l.train_ch6
    net = g[builder]()
    def init_weights(m):
        if type(m) == nn.Linear or type(m) == nn.Conv2d:
            nn.init.xavier_uniform_(m.weight)
    net.apply(init_weights)
    device = torch.device(device_name)
    print("training on", device, file=sys.stderr)
    net.to(device)
    optimizer = torch.optim.SGD(net.parameters(), lr=lr)
    loss = nn.CrossEntropyLoss()
    step_seconds, num_batches = 0.0, len(train_iter)
    epoch_walls = []
    for epoch in range(epochs):
        epoch_start = time.perf_counter()
        l_sum, correct, seen = 0.0, 0.0, 0
        net.train()
        for i, (X, y) in enumerate(train_iter):
            t0 = time.perf_counter()
            optimizer.zero_grad()
            X, y = X.to(device), y.to(device)
            y_hat = net(X)
            l = loss(y_hat, y)
            l.backward()
            optimizer.step()
            with torch.no_grad():
                l_sum += float(l * X.shape[0]); correct += accuracy(y_hat, y); seen += X.shape[0]
            step_seconds += time.perf_counter() - t0
        test_acc = evaluate_accuracy_gpu(net, test_iter, device)
        epoch_walls.append(time.perf_counter() - epoch_start)
        print(f"epoch {epoch + 1}/{epochs}: loss {l_sum / seen:.3f}, train acc {correct / seen:.3f}, "
              f"test acc {test_acc:.3f}, {epoch_walls[-1]:.1f} s", file=sys.stderr)
    train_l, train_acc = l_sum / seen, correct / seen
    print(f"loss {train_l:.3f}, train acc {train_acc:.3f}, test acc {test_acc:.3f}", file=sys.stderr)
    print(f"{seen * epochs / step_seconds:.1f} examples/sec on {device}", file=sys.stderr)
    return dict(loss=train_l, train_acc=train_acc, test_acc=test_acc, examples_per_s=seen * epochs / step_seconds,
                epoch_wall_s=epoch_walls, torch=torch.__version__, torchvision=torchvision.__version__)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("nets", nargs="*", default=list(NETS))
    p.add_argument("--data", required=True, help="folder with the four Fashion-MNIST files")
    p.add_argument("--device", default="cuda")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--root", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        print(json.dumps(worker(a.worker, a.root, a.device, a.epochs)))
        return
    unknown = [n for n in a.nets if n not in NETS]
    if unknown:
        sys.exit(f"unknown network(s) {', '.join(unknown)}: expected {', '.join(NETS)}")
    root = torchvision_root(a.data)
    try:
        for name in a.nets:
            started = time.perf_counter()
            run = subprocess.run([sys.executable, __file__, "--worker", name, "--root", root, "--device", a.device,
                                  "--epochs", str(a.epochs)], stdout=subprocess.PIPE, text=True)
            wall = time.perf_counter() - started
            if run.returncode != 0:
                print(json.dumps(dict(net=name, failed=run.returncode, wall_s=round(wall, 1))), flush=True)
                continue
            result = json.loads(run.stdout.strip().splitlines()[-1])
            print(json.dumps(dict(net=name, epochs=a.epochs, wall_s=round(wall, 1), **result)), flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
