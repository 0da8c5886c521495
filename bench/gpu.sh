#!/usr/bin/env bash
# GPU inference figures in one call of a few minutes (issue 35 part 6): bench/gpu.py on a GPU machine.
#
# The device machines lent here have Python 3.12 with torch (CUDA), numpy, pandas, scipy, scikit-learn and
# xarray, no package registry, and take a working tree of at most 64 MiB. So, on this machine first:
#
#     bash bench/gpu.sh --prepare          # wheelhouse-gpu/: the other runtime wheels, cp312, ~40 MB
#
# then on the GPU machine (the device tool's `run`, carry ["wheelhouse-gpu"], timeout ~480 s):
#
#     bash bench/gpu.sh                    # installs them, prints the device, runs bench/gpu.py into $OUT
#
# Record the JSON lines it prints in docs/performance.md ("GPU inference") with the device named.
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS=wheelhouse-gpu
# what the device image lacks of pyproject's dependencies (torch, numpy, pandas, scipy, scikit-learn,
# xarray, rich, typer, fsspec, pyyaml, tqdm, matplotlib, pyarrow are there)
NEEDED="zarr==3.1.6 numcodecs dask[array]==2026.8.0 rasterio==1.4.4 rioxarray==0.19.0 pystac==1.15.2 pyproj
shapely affine pydantic pydantic-settings==2.16.3 python-dotenv click-plugins cligj donfig google-crc32c msgspec
partd locket importlib-metadata lazy-importer"

if [[ "${1:-}" == "--prepare" ]]; then
    rm -rf "$WHEELS"
    # shellcheck disable=SC2086
    python3 -m pip download --only-binary=:all: --python-version 3.12 --platform manylinux_2_28_x86_64 \
        --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --no-deps -d "$WHEELS" $NEEDED pydantic-core \
        annotated-types typing-inspection
    du -sh "$WHEELS"
    exit 0
fi

PY=${PYTHON:-python3}
"$PY" -m pip install --no-index --no-deps -q "$WHEELS"/*.whl
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # the checkout itself: no build step on that machine
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.is_available())"
"$PY" bench/gpu.py --repeat 3 --compile --out "${OUT:-/tmp/cropmap-gpu}"
