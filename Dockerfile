# syntax=docker/dockerfile:1
# aitask-operator image: `make image` (docker build -t aitask-operator:<version> .).
# Stage 1 builds the project's wheel from pyproject.toml and installs it, with the exact dependency
# versions pinned there (==), into a virtual environment; stage 2 copies only that environment onto a
# fresh slim Python of the same tag. The runtime image has no compiler, no pip cache and no source tree.
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator/ operator/
RUN python -m venv /opt/aitask \
 && pip wheel --no-deps --wheel-dir /wheels . \
 && /opt/aitask/bin/pip install /wheels/aitask_operator-*.whl \
 && /opt/aitask/bin/pip check \
 && /opt/aitask/bin/aitask version

FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="aitask-operator" \
      org.opencontainers.image.description="Kopf operator placing AI sub-tasks on GPU/CPU executor classes with a learned cost model" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PATH=/opt/aitask/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
COPY --from=builder /opt/aitask /opt/aitask
# The same UID/GID the chart's securityContext sets (runAsUser 65532, "nonroot" by convention).
RUN groupadd --system --gid 65532 nonroot \
 && useradd --system --uid 65532 --gid 65532 --home-dir /nonexistent --no-create-home --shell /usr/sbin/nologin nonroot
USER 65532:65532
WORKDIR /tmp
# /metrics, /healthz, /readyz of the operator (AITASK_METRICS_PORT); the GPU agent uses 9400.
EXPOSE 8080
ENTRYPOINT ["aitask"]
CMD ["run"]
