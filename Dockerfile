# lychee-rerank service on a CUDA GPU: `lychee-rerank serve` with the [server,ui,gpu] extras.
#
#   docker build -t lychee-rerank .
#   docker run --gpus all -p 8000:8000 -v ~/.cache/huggingface:/models/hf lychee-rerank
#
# Every limit is a LYCHEE_* environment variable (see `lychee-rerank serve --help`).

ARG CUDA_VERSION=12.4.1
ARG UBUNTU_VERSION=22.04

# -- build: a virtual environment with torch for CUDA, flash-attn compiled against it ------------
FROM nvidia/cuda:${CUDA_VERSION}-cudnn-devel-ubuntu${UBUNTU_VERSION} AS build
ARG TORCH_INDEX=https://download.pytorch.org/whl/cu124
ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 MAX_JOBS=4
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv python3-dev git build-essential \
    && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
RUN pip install --upgrade pip wheel setuptools packaging ninja \
    && pip install --index-url "$TORCH_INDEX" torch torchvision
WORKDIR /src
COPY pyproject.toml README.md ./
COPY core ./core
COPY plugins ./plugins
COPY adapters ./adapters
# flash-attn builds against the torch installed above, so no build isolation.
RUN pip install --no-build-isolation ".[server,ui,gpu]"

# -- runtime: the CUDA runtime and the virtual environment, nothing to compile -------------------
FROM nvidia/cuda:${CUDA_VERSION}-cudnn-runtime-ubuntu${UBUNTU_VERSION}
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 1000 lychee
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HF_HOME=/models/hf \
    LYCHEE_CACHE_DIR=/models/lychee \
    LYCHEE_HOST=0.0.0.0 \
    LYCHEE_PORT=8000 \
    LYCHEE_MODEL=vec-ai/lychee-rerank-mm
RUN mkdir -p /models && chown lychee /models
USER lychee
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=600s --retries=3 \
    CMD curl -fsS "http://127.0.0.1:${LYCHEE_PORT}/health" || exit 1
ENTRYPOINT ["lychee-rerank", "serve"]
