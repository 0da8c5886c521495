# cropmap worker and flow image: Dask scheduler/workers, Prefect worker and flow runs (deploy/).
#   CPU (default):  docker build -t ghcr.io/cropmap/cropmap:0.1.0 .
#   CUDA (GPU workers): docker build --build-arg TORCH_VARIANT=cu128 -t ghcr.io/cropmap/cropmap-cuda:0.1.0 .
#   offline (air-gapped, reproducible): every wheel from a wheelhouse, no package index at all:
#     docker build --network host --build-arg WHEELHOUSE=http://127.0.0.1:8765/ -t cropmap:dev .
#   (scripts/check_image.sh builds that wheelhouse with `pip wheel` and serves it on 127.0.0.1.)
# The NVIDIA driver comes from the node (device plugin); the CUDA torch wheels bring their own runtime.
# Any Debian bookworm image with Python 3.11 as `python3` is a base: the official slim image, or one made
# with debootstrap (--build-arg PYTHON_IMAGE=local/debian-py311:bookworm, Debian's /usr/bin/python3.11).
# cropmap lives in a virtualenv (/opt/venv), so both bases behave the same.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
FROM ${PYTHON_IMAGE}

# Debian bookworm's tini (DL3008: apt versions pinned; override when the archive moves on)
ARG TINI_VERSION=0.19.0-1+b3

# the flow runs' working directory (deploy/prefect.yaml's pull step): empty, no checkout in the image
WORKDIR /opt/cropmap

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    OMP_NUM_THREADS=1 \
    CROPMAP_DATA_DIR=/data

# The image's settings come first: with the vfs storage driver (scripts/check_image.sh) every instruction,
# metadata included, copies the whole filesystem, so only USER and HOME follow the large layers.
# Docker and docker compose use this; Kubernetes uses the probes in deploy/ instead
HEALTHCHECK --interval=60s --timeout=30s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import cropmap.jobs.cluster, cropmap.core.composite, distributed, torch"]
# tini as PID 1 reaps the processes Dask and Prefect start and forwards signals to them
ENTRYPOINT ["tini", "-g", "--"]
CMD ["cropmap", "--help"]

RUN apt-get update \
    && apt-get install -y --no-install-recommends "tini=${TINI_VERSION}" \
    && rm -rf /var/lib/apt/lists/*

RUN groupadd --gid 10001 cropmap \
    && useradd --uid 10001 --gid 10001 --create-home --shell /usr/sbin/nologin cropmap \
    && mkdir -p /data /scratch \
    && chown cropmap:cropmap /data /scratch /opt/cropmap \
    && python3 -m venv /opt/venv

# cpu, or a CUDA build of the same torch release from the PyTorch index (cu126, cu128, ...)
ARG TORCH_VARIANT=cpu
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/${TORCH_VARIANT}
# empty: PyPI (and the PyTorch index for torch); else a find-links location (a URL of a folder of wheels)
# from which every package is installed with --no-index
ARG WHEELHOUSE=

# torch first and alone, as scripts/bootstrap.sh does: the pin is the project's, the index picks the
# CPU or CUDA build (a bare requirement would pull the multi-GB CUDA build into every image)
# (with a WHEELHOUSE, PIP_NO_INDEX makes pip ignore the index URL)
RUN if [ -n "${WHEELHOUSE}" ]; then export PIP_NO_INDEX=1 PIP_FIND_LINKS="${WHEELHOUSE}"; fi \
    && python -m pip install "pip==26.3" \
    && python -m pip install "torch==2.13.0" --index-url "${TORCH_INDEX_URL}"

# then the project itself, not editable: everything a flow run, a Dask scheduler/worker or a Prefect
# worker needs (cropmap.flows, the configs) is in site-packages and nothing reads a source tree: the
# source (the build context is only pyproject.toml, README.md, cropmap/ and deploy/constraints.txt, see
# .dockerignore) is removed after the install, and the import check runs from the empty /opt/cropmap.
# Every dependency at the tested version (deploy/constraints.txt), and bokeh for the Dask scheduler's
# dashboard (:8787, docs/scaling.md).
COPY . /tmp/cropmap-src
RUN if [ -n "${WHEELHOUSE}" ]; then export PIP_NO_INDEX=1 PIP_FIND_LINKS="${WHEELHOUSE}"; fi \
    && python -m pip install --constraint /tmp/cropmap-src/deploy/constraints.txt "/tmp/cropmap-src[flows]" "bokeh==3.9.2" \
    && rm -rf /tmp/cropmap-src \
    && python -c "import cropmap, cropmap.flows.map_country, torch, distributed, bokeh, prefect_kubernetes; \
assert cropmap.__file__.startswith('/opt/venv/'), cropmap.__file__; print(cropmap.__file__, torch.__version__)"

USER 10001:10001
# (after the root steps: the build's import check would create a root-owned ~/.prefect there)
ENV HOME=/home/cropmap
