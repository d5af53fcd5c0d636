#!/usr/bin/env bash
# Installs libtorch 2.11.0 (the version tch 0.24 binds) from PyPI into a cache outside the clone,
# once, and links it at .libtorch so that .cargo/config.toml can point torch-sys at it.
# download.pytorch.org is not reachable here; the PyPI wheel has the same libtorch layout.
set -euo pipefail
cd "$(dirname "$0")/.."

version=2.11.0
cache="${CONVNETS_LIBTORCH_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/convnets/libtorch-$version}"

if [ ! -f "$cache/.complete" ]; then
    echo "setup: installing libtorch $version (CPU, ~530 MB download) into $cache" >&2
    rm -rf "$cache.partial"
    # The wheel is built against CUDA 13: even libtorch_cpu.so needs libcudart.so.13 and
    # libcupti.so.13, which these two small packages provide (found through torch's own RPATH).
    python3 -m pip install --quiet --disable-pip-version-check --no-deps \
        --target "$cache.partial" \
        "torch==$version" nvidia-cuda-runtime==13.0.96 nvidia-cuda-cupti==13.0.85
    rm -rf "$cache"
    mv "$cache.partial" "$cache"
    touch "$cache/.complete"
fi
# The CUDA runtime headers above include crt/*.h from a package of its own (134 KB); only the
# C++ shim of a `--features cuda` build reads them. A folder of its own, so that caches made
# before it was needed gain it without reinstalling libtorch.
if [ ! -f "$cache/crt/.complete" ]; then
    rm -rf "$cache/crt"
    python3 -m pip install --quiet --disable-pip-version-check --no-deps \
        --target "$cache/crt" nvidia-cuda-crt==13.0.88
    touch "$cache/crt/.complete"
fi
ln -sfn "$cache/torch" .libtorch
echo "setup: libtorch $version at $cache/torch" >&2
