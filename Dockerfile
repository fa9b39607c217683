# syntax=docker/dockerfile:1
# LipService container image.
#
#   docker build -t lipservice:0.1.0 .
#   docker run --read-only --tmpfs /tmp -v lipservice-state:/var/lib/lipservice \
#     -e POSTHOG_API_KEY -p 4317:4317 -p 4318:4318 -p 8888:8888 lipservice:0.1.0
#
# Two stages: `build` installs the package and its pinned dependencies (constraints.txt)
# into a virtualenv; `runtime` copies only that virtualenv onto the same slim base and runs
# it as an unprivileged user. Nothing is written outside /var/lib/lipservice (state volume)
# and /tmp, so the root filesystem can be mounted read-only. The install step is mirrored by
# tests/deploy/test_dockerfile.py (no Docker engine is needed to test it).

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
# A C compiler for the optional extension processors._logscan (setup.py: the hot path's
# reader of OTLP bytes, ~20 % less CPU per record). Build stage only: the runtime image gets
# the compiled module inside the virtualenv, not the compiler.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/*
RUN python -m venv /opt/lipservice
# The build context is an allow-list (.dockerignore): package sources, config, pins.
COPY . .
# EXTRAS: optional extras ("fast" is empty now: uvloop is a dependency). Bytecode is
# compiled here, since the runtime filesystem is read-only.
ARG EXTRAS=fast
RUN /opt/lipservice/bin/pip install --no-cache-dir -c constraints.txt ".[${EXTRAS}]" \
 && /opt/lipservice/bin/python -c "import processors._logscan" \
 && /opt/lipservice/bin/python -m compileall -q /opt/lipservice/lib

FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="lipservice" \
      org.opencontainers.image.description="OpenTelemetry logs sidecar: pattern mining and per-pattern sampling" \
      org.opencontainers.image.licenses="Apache-2.0"
# Fixed numeric UID/GID so Kubernetes can check runAsNonRoot without resolving names.
RUN groupadd --system --gid 10001 lipservice \
 && useradd --system --uid 10001 --gid 10001 --no-create-home \
      --home-dir /var/lib/lipservice --shell /usr/sbin/nologin lipservice \
 && install -d -o 10001 -g 10001 -m 0750 /var/lib/lipservice
COPY --from=build /opt/lipservice /opt/lipservice
COPY config/container.yaml /etc/lipservice/config.yaml
ENV PATH=/opt/lipservice/bin:${PATH} \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/var/lib/lipservice \
    TMPDIR=/tmp
WORKDIR /var/lib/lipservice
VOLUME ["/var/lib/lipservice"]
USER 10001:10001
EXPOSE 4317 4318 8888
HEALTHCHECK --interval=30s --timeout=5s --start-period=15s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8888/healthz', timeout=3)"]
ENTRYPOINT ["lipservice"]
CMD ["run", "-c", "/etc/lipservice/config.yaml"]
