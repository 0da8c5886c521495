# cropmap worker and flow image: Dask scheduler/workers, Prefect worker and flow runs (deploy/).
#   CPU (default):  docker build -t ghcr.io/cropmap/cropmap:0.1.0 .
#   CUDA (GPU workers): docker build --build-arg TORCH_VARIANT=cu128 -t ghcr.io/cropmap/cropmap-cuda:0.1.0 .
# The NVIDIA driver comes from the node (device plugin); the CUDA torch wheels bring their own runtime.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
FROM ${PYTHON_IMAGE}

# cpu, or a CUDA build of the same torch release from the PyTorch index (cu126, cu128, ...)
ARG TORCH_VARIANT=cpu
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/${TORCH_VARIANT}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    OMP_NUM_THREADS=1 \
    CROPMAP_DATA_DIR=/data

# tini as PID 1 reaps the processes Dask and Prefect start and forwards signals to them
RUN apt-get update \
    && apt-get install -y --no-install-recommends tini \
    && rm -rf /var/lib/apt/lists/*

RUN groupadd --gid 10001 cropmap \
    && useradd --uid 10001 --gid 10001 --create-home --shell /usr/sbin/nologin cropmap \
    && mkdir -p /data /scratch \
    && chown cropmap:cropmap /data /scratch

WORKDIR /opt/cropmap

# torch first and alone, as scripts/bootstrap.sh does: the pin is the project's, the index picks the
# CPU or CUDA build (a bare requirement would pull the multi-GB CUDA build into every image)
RUN python -m pip install --upgrade pip \
    && python -m pip install "torch==2.13.0" --index-url "${TORCH_INDEX_URL}"

# then the project, editable like scripts/bootstrap.sh (configs/ and flows/ stay beside the package),
# every dependency at the tested version (deploy/constraints.txt)
COPY pyproject.toml README.md ./
COPY deploy/constraints.txt deploy/constraints.txt
COPY cropmap cropmap
COPY configs configs
COPY flows flows
RUN python -m pip install --constraint deploy/constraints.txt -e ".[flows]" \
    && python -c "import cropmap, torch, distributed, prefect_kubernetes; print(cropmap.__version__, torch.__version__)"

USER 10001:10001
ENV HOME=/home/cropmap

# Docker and docker compose use this; Kubernetes uses the probes in deploy/ instead
HEALTHCHECK --interval=60s --timeout=30s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import cropmap.jobs.cluster, cropmap.core.composite, distributed, torch"]

ENTRYPOINT ["tini", "-g", "--"]
CMD ["cropmap", "--help"]
