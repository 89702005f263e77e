# syntax=docker/dockerfile:1.7
# Two images from one file:
#   docker build --target operator -t ghcr.io/kiln-dev/kiln-operator:0.1.0 .
#   docker build --target job      -t ghcr.io/kiln-dev/kiln-job:0.1.0 .
#
# Pin policy: base images are pinned by tag here; release builds resolve each tag to its digest
# (`docker buildx imagetools inspect IMAGE`) and pass it as a build argument, e.g.
#   --build-arg PYTHON_IMAGE=python:3.11-slim-bookworm@sha256:<digest>
# so a published Kiln image is reproducible while this file stays readable.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
# Triton Inference Server with TensorRT-LLM and its Python backend (NGC release 25.10).
ARG TRTLLM_IMAGE=nvcr.io/nvidia/tritonserver:25.10-trtllm-python-py3

# ---------------------------------------------------------------------------------------------
# operator: slim Python, kopf + kubernetes client only, never root.
FROM ${PYTHON_IMAGE} AS operator
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /opt/kiln
COPY pyproject.toml README.md ./
COPY operator/ operator/
COPY jobs/ jobs/
# Versions are pinned in pyproject.toml, the project being installed.
# hadolint ignore=DL3013
RUN pip install --no-compile ".[operator]" \
    && rm -rf operator jobs
USER 65532:65532
ENTRYPOINT ["kiln"]
CMD ["operator", "--json-logs"]

# ---------------------------------------------------------------------------------------------
# job: the optimization runner on the TensorRT-LLM release image. The same image serves the
# model (tritonserver, TensorRT-LLM and Python backends are all in the base), with Kiln's own
# models installed as the `kiln` Python-based backend: published repositories hold no code.
FROM ${TRTLLM_IMAGE} AS job
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_DISABLE_TELEMETRY=1
WORKDIR /opt/kiln
COPY pyproject.toml README.md ./
COPY operator/ operator/
COPY jobs/ jobs/
# Keep the torch and transformers the TensorRT-LLM release was built against: constrain pip
# to what the base image already has, and add Model Optimizer and Kiln's job package on top.
# hadolint ignore=DL3013
RUN pip freeze | grep -iE '^(torch|transformers|tensorrt[-_]llm|numpy)==' > /tmp/base-constraints.txt \
    && pip install --no-compile --constraint /tmp/base-constraints.txt ".[jobs]" \
    && mkdir -p /opt/tritonserver/backends/kiln \
    && cp jobs/kiln_jobs/serving/triton_backend/model.py /opt/tritonserver/backends/kiln/model.py \
    && rm -rf operator jobs /tmp/base-constraints.txt
# The image runs as the UID Kiln's pod security context sets (1000); it owns nothing here.
USER 1000:1000
ENTRYPOINT ["python", "-m", "kiln_jobs"]
