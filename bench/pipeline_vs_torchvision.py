"""The image-folder training pipeline, convnets against torchvision, side by side on one machine.

Both decode photo-sized JPEGs (500x375, colour), apply RandomResizedCrop(224) and
RandomHorizontalFlip (with --recipe, then TrivialAugmentWide, and RandomErasing(0.1) after
Normalize, as torchvision's reference recipe orders them), convert to floats and Normalize with
ImageNet's constants, in batches of 32: torchvision through ImageFolder and a DataLoader with PIL (num_workers=0, one libtorch
thread), convnets through `convnets data bench` (one rayon and one libtorch thread). Reported:
images per second of wall time and per second of CPU time, the per-core figure issue 12 asks
for (convnets' decoding thread and its main thread can overlap, so its wall rate on one core's
worth of threads is not a per-core rate; CPU time is).

    python bench/pipeline_vs_torchvision.py [--images 512] [--epochs 4] [--recipe] [--binary target/release/convnets]

Needs torch, torchvision and Pillow. The JPEGs are made here (photos cannot be shipped): smooth
colour fields with shapes and sensor-like noise, saved at quality 90, which decode at the cost
of real photos of that size (the entropy-coded data, not the picture, sets the cost).
"""

import argparse
import os
import random
import re
import subprocess
import tempfile
import time

import torch
import torchvision
from PIL import Image, ImageDraw, ImageFilter
from torchvision import transforms as T

SIDE, BATCH = 224, 32


def make_images(root, count, seed=0):
    rng = random.Random(seed)
    for split, n in (("train", count), ("val", 8)):
        for i in range(n):
            klass = f"class{i % 4}"
            os.makedirs(os.path.join(root, split, klass), exist_ok=True)
            # A smooth colour field: a small random image scaled up.
            small = Image.new("RGB", (8, 6))
            small.putdata([tuple(rng.randrange(256) for _ in range(3)) for _ in range(48)])
            image = small.resize((500, 375), Image.BICUBIC)
            draw = ImageDraw.Draw(image)
            for _ in range(12):
                x, y = rng.randrange(500), rng.randrange(375)
                w, h = rng.randrange(20, 160), rng.randrange(20, 160)
                colour = tuple(rng.randrange(256) for _ in range(3))
                (draw.ellipse if rng.random() < 0.5 else draw.rectangle)([x, y, x + w, y + h], fill=colour)
            image = image.filter(ImageFilter.GaussianBlur(0.8))
            # Sensor-like noise, which sets the entropy-coded size (and decoding cost) near
            # that of real photos of this size at quality 90 (60-100 KiB).
            noise = Image.merge("RGB", [Image.effect_noise((500, 375), 40) for _ in range(3)])
            image = Image.blend(image, noise, 0.25)
            image.save(os.path.join(root, split, klass, f"{i:05d}.jpg"), quality=90)


def torchvision_rate(root, epochs, recipe):
    torch.set_num_threads(1)
    steps = [T.RandomResizedCrop(SIDE), T.RandomHorizontalFlip()]
    if recipe:
        steps.append(T.TrivialAugmentWide())
    steps += [T.ToTensor(), T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])]
    if recipe:
        steps.append(T.RandomErasing(0.1))
    pipeline = T.Compose(steps)
    dataset = torchvision.datasets.ImageFolder(os.path.join(root, "train"), transform=pipeline)
    loader = torch.utils.data.DataLoader(dataset, batch_size=BATCH, shuffle=True, num_workers=0)
    images = 0
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(epochs):
        for x, _ in loader:
            assert x.shape[1:] == (3, SIDE, SIDE)
            images += x.shape[0]
    return images, time.perf_counter() - wall, time.process_time() - cpu


def convnets_rate(binary, root, epochs, recipe):
    env = dict(os.environ, RAYON_NUM_THREADS="1", OMP_NUM_THREADS="1")
    extra = ["--auto-augment", "ta_wide", "--random-erase", "0.1"] if recipe else []
    out = subprocess.run(
        [binary, "data", "bench", "--data", root, "--side", str(SIDE), "--batch-size", str(BATCH),
         "--epochs", str(epochs)] + extra,
        env=env, check=True, capture_output=True, text=True).stdout
    match = re.search(r"(\d+) images to \S+ in ([\d.]+) s: ([\d.]+) images/s, ([\d.]+) images per CPU second", out)
    images, wall, _, per_cpu = match.groups()
    return int(images), float(wall), int(images) / float(per_cpu)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--binary", default="target/release/convnets")
    parser.add_argument("--recipe", action="store_true",
                        help="add TrivialAugmentWide and RandomErasing(0.1) on both sides")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as root:
        make_images(root, args.images)
        size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(root) for f in fs)
        print(f"{args.images} JPEGs of 500x375 ({size / (args.images + 8) / 1024:.0f} KiB each), "
              f"{args.epochs} epochs, torch {torch.__version__}, torchvision {torchvision.__version__}, "
              f"Pillow {Image.__version__}, {os.cpu_count()} cores"
              + (", with TrivialAugmentWide and RandomErasing(0.1)" if args.recipe else ""))
        torchvision_rate(root, 1, False)  # the files into the page cache, for both
        results = [("torchvision ImageFolder + DataLoader (PIL)", torchvision_rate(root, args.epochs, args.recipe)),
                   ("convnets data bench", convnets_rate(args.binary, root, args.epochs, args.recipe))]
        print("| pipeline | images | wall s | images/s | CPU s | images per CPU second |")
        print("|---|---:|---:|---:|---:|---:|")
        for name, (images, wall, cpu) in results:
            print(f"| {name} | {images} | {wall:.2f} | {images / wall:.1f} | {cpu:.2f} | {images / cpu:.1f} |")
        ratio = (results[1][1][0] / results[1][1][2]) / (results[0][1][0] / results[0][1][2])
        print(f"convnets / torchvision per CPU second: {ratio:.2f}x")


if __name__ == "__main__":
    main()
