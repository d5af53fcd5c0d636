#!/usr/bin/env python3
"""Writes data/sample/: the first 2,000 training and 500 test images of Fashion-MNIST, as
gzipped IDX files, embedded in the convnets binary for offline runs and tests.

Usage: scripts/make-sample.py FASHION_MNIST_DIR (the four official .gz files)."""
import gzip, os, struct, sys

src = sys.argv[1]
out = os.path.join(os.path.dirname(__file__), "..", "data", "sample")
os.makedirs(out, exist_ok=True)
for prefix, count in (("train", 2000), ("t10k", 500)):
    images = gzip.open(os.path.join(src, f"{prefix}-images-idx3-ubyte.gz")).read()
    labels = gzip.open(os.path.join(src, f"{prefix}-labels-idx1-ubyte.gz")).read()
    _, _, rows, cols = struct.unpack(">IIII", images[:16])
    with gzip.GzipFile(os.path.join(out, f"{prefix}-images-idx3-ubyte.gz"), "wb", mtime=0) as f:
        f.write(struct.pack(">IIII", 0x803, count, rows, cols) + images[16 : 16 + count * rows * cols])
    with gzip.GzipFile(os.path.join(out, f"{prefix}-labels-idx1-ubyte.gz"), "wb", mtime=0) as f:
        f.write(struct.pack(">II", 0x801, count) + labels[8 : 8 + count])
