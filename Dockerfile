# syntax=docker/dockerfile:1
#
# processor: Redis Stream -> PostgreSQL/TimescaleDB daemon.
#
#   docker build -t processor .
#   docker run --rm -e REDIS_URL=... -e POSTGRES_URL=... -p 8080:8080 -p 8081:8081 processor
#
# Two stages on the same base image: the builder installs the locked dependencies
# (requirements.lock, hash-checked, wheels only) into a venv, compiles the hot path with
# mypyc (ops/compile_native.py; gcc, and mypy from ops/native.lock) and adds the
# project's own wheel with those extensions in it, built by the build backend of
# ops/build.lock (hash-checked too; backend and compiler in a venv of their own that is
# not shipped); the runtime stage copies the venv and nothing else (no compilers, no pip
# cache, no sources, no build tools), and runs as an unprivileged user.
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
# A C compiler for the mypyc build; the builder stage only (the runtime stage copies
# the venv). Not version-pinned: Debian's security updates replace these packages, and a
# pin would break the build when they do.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
# The build backend (pyproject's build-system) and the compiler's mypy and setuptools,
# locked as well: pip's default build isolation would fetch whatever hatchling is newest,
# unpinned and unchecked.
COPY ops/build.lock ops/native.lock ./
RUN python -m venv /opt/build \
    && /opt/build/bin/pip install --no-cache-dir --require-hashes --only-binary=:all: \
        -r build.lock -r native.lock
# The project itself: compile the hot path (mypy reads the dependencies' types from the
# runtime venv), build the wheel with the extensions in it (ops/hatch_native.py fails
# the build if any is missing or stale; schema/ goes in as processor/_schema), install
# it without dependencies, so nothing unlocked gets in, and check that it runs compiled.
COPY pyproject.toml README.md ./
COPY ops/compile_native.py ops/hatch_native.py ./ops/
COPY processor ./processor
COPY schema ./schema
RUN /opt/build/bin/python ops/compile_native.py --python-executable /opt/venv/bin/python \
    && PROCESSOR_NATIVE_WHEEL=1 /opt/build/bin/pip wheel --no-cache-dir --no-deps \
        --no-build-isolation --wheel-dir /wheels . \
    && /opt/venv/bin/pip install --no-cache-dir --no-deps /wheels/processor-*.whl \
    && /opt/venv/bin/processor --version \
    && /opt/venv/bin/processor native --require-compiled

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
