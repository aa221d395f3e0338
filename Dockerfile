# syntax=docker/dockerfile:1
#
# processor: Redis Stream -> PostgreSQL/TimescaleDB daemon.
#
#   docker build -t processor .
#   docker run --rm -e REDIS_URL=... -e POSTGRES_URL=... -p 8080:8080 -p 8081:8081 processor
#
# Two stages on the same base image: the builder installs the locked dependencies
# (requirements.lock, hash-checked, wheels only) into a venv and adds the project's own
# wheel, built by the build backend of ops/build.lock (hash-checked too, in a venv of its
# own that is not shipped); the runtime stage copies the venv and nothing else (no
# compilers, no pip cache, no sources, no build tools), and runs as an unprivileged user.
ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
# Dependencies first: this layer is rebuilt only when the lock file changes.
COPY requirements.lock ./
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir --require-hashes --only-binary=:all: \
        -r requirements.lock
# The build backend (pyproject's build-system), locked as well: pip's default build
# isolation would fetch whatever hatchling is newest, unpinned and unchecked.
COPY ops/build.lock ./
RUN python -m venv /opt/build \
    && /opt/build/bin/pip install --no-cache-dir --require-hashes --only-binary=:all: \
        -r build.lock
# The project itself: build its wheel (schema/ goes in as processor/_schema) and install
# it without dependencies, so nothing unlocked gets in.
COPY pyproject.toml README.md ./
COPY processor ./processor
COPY schema ./schema
RUN /opt/build/bin/pip wheel --no-cache-dir --no-deps --no-build-isolation --wheel-dir /wheels . \
    && /opt/venv/bin/pip install --no-cache-dir --no-deps /wheels/processor-*.whl \
    && /opt/venv/bin/processor --version

FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="processor" \
      org.opencontainers.image.description="Redis Stream -> PostgreSQL/TimescaleDB telemetry processor"
RUN groupadd --system --gid 10001 processor \
    && useradd --system --uid 10001 --gid processor --no-create-home \
        --home-dir /var/lib/processor --shell /usr/sbin/nologin processor \
    && install -d -o processor -g processor -m 0750 /var/lib/processor /var/lib/processor/panic
COPY --from=builder /opt/venv /opt/venv
# Defaults for a container; everything else keeps the defaults in processor/config.py
# (`processor run --help` lists every variable).
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HTTP_HOST=0.0.0.0 \
    HTTP_PORT=8080 \
    WS_HOST=0.0.0.0 \
    WS_PORT=8081 \
    LOG_LEVEL=info \
    PANIC_DUMP_DIR=/var/lib/processor/panic
WORKDIR /var/lib/processor
USER 10001:10001
# 8080: /metrics /healthz /readyz; 8081: WebSocket (/ws)
EXPOSE 8080 8081
# SIGTERM starts the graceful drain (SHUTDOWN_BUDGET_S, default 10 s): give the
# orchestrator's stop timeout a few seconds more (compose: stop_grace_period: 15s).
STOPSIGNAL SIGTERM
# Liveness: /healthz answers 200 while the process runs. No curl in the slim image.
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request as u; u.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('HTTP_PORT', '8080'), timeout=4)"]
# Exec form: the processor is PID 1 and receives SIGTERM itself (no shell in between).
ENTRYPOINT ["processor"]
CMD ["run"]
