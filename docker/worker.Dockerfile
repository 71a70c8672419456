# A prelabel GPU worker: picks up annotate and shard runs from a Prefect work pool.
#
#   docker build -f docker/worker.Dockerfile -t prelabel-worker .
#
# PREFECT_VERSION must equal the server's (docker/compose.yaml passes the same value to both).
ARG PREFECT_VERSION=3.9.1
ARG TORCH_INDEX=https://download.pytorch.org/whl/cu128

FROM python:3.11.11-slim-bookworm AS build
ARG PREFECT_VERSION
ARG TORCH_INDEX
RUN python -m venv /opt/prelabel
ENV PATH=/opt/prelabel/bin:$PATH
# CUDA builds of torch and torchvision first, from the CUDA wheel index.
RUN pip install --no-cache-dir --index-url ${TORCH_INDEX} "torch==2.7.1" "torchvision==0.22.1"
COPY pyproject.toml README.md /src/
COPY deeplab /src/deeplab
COPY pipeline /src/pipeline
COPY flows /src/flows
RUN pip install --no-cache-dir "/src" "prefect==${PREFECT_VERSION}"

FROM python:3.11.11-slim-bookworm
# libgl-free OpenCV (headless) needs only glib at run time.
RUN apt-get update && apt-get install -y --no-install-recommends libglib2.0-0 \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /opt/prelabel /opt/prelabel
ENV PATH=/opt/prelabel/bin:$PATH \
    PREFECT_SERVER_ANALYTICS_ENABLED=false \
    DO_NOT_TRACK=1 \
    PRELABEL_DEVICE=cuda
# Checkpoints are mounted here (the bundled demo model ships inside the package).
RUN useradd --create-home --uid 10001 prelabel && mkdir /models && chown prelabel /models
USER prelabel
WORKDIR /home/prelabel
VOLUME ["/models"]
# One worker per GPU machine; --limit 1 with the per-device concurrency limit keeps one shard
# on the GPU at a time.
CMD ["prefect", "worker", "start", "--pool", "gpu", "--type", "process", "--limit", "1"]
