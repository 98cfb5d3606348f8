# syntax=docker/dockerfile:1
#
# usage-ingest: one image for every command. `docker run IMAGE` runs the worker; `... IMAGE api`,
# `... IMAGE migrate`, `... IMAGE run --processes 4` and so on run the others.
#
#   docker build -t usage-ingest:0.1.0 .
#
# The package is built from this repository (never fetched from a registry); its wheel carries
# the migrations and queries (src/usage_ingest/store/sql/, package data). Every dependency is installed from a binary wheel, so
# neither stage needs a compiler, and the final stage has none.

ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm

# --- build: a wheel of this repository, installed with its dependencies into a virtualenv ----
FROM ${PYTHON_IMAGE} AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

WORKDIR /src
COPY pyproject.toml README.md ./
COPY src/ src/

RUN python -m venv /opt/usage-ingest \
 && pip wheel --no-deps --wheel-dir /wheels . \
 && /opt/usage-ingest/bin/pip install --only-binary=:all: /wheels/usage_ingest-*.whl \
 && /opt/usage-ingest/bin/python -c "from usage_ingest.store import QUERIES, migration_files; \
assert migration_files() and QUERIES, 'the wheel has no sql/ files'" \
 && /opt/usage-ingest/bin/usage-ingest --help > /dev/null

# --- runtime: the virtualenv on a clean base, run by an unprivileged user --------------------
FROM ${PYTHON_IMAGE} AS runtime

LABEL org.opencontainers.image.title="usage-ingest" \
      org.opencontainers.image.description="Usage events from Kafka to Postgres, each with an outcome"

RUN groupadd --system --gid 10001 usage-ingest \
 && useradd --system --uid 10001 --gid usage-ingest --no-create-home \
      --home-dir /nonexistent --shell /usr/sbin/nologin usage-ingest

COPY --from=build /opt/usage-ingest /opt/usage-ingest

ENV PATH=/opt/usage-ingest/bin:${PATH} \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1

USER 10001:10001

# 9464: the worker's /metrics, /healthz and /readyz (USAGE_INGEST_METRICS_PORT);
# 8080: `usage-ingest api` (USAGE_INGEST_API_PORT).
EXPOSE 9464 8080

# SIGTERM drains: the batch in flight finishes (up to USAGE_INGEST_SHUTDOWN_GRACE_S) and is
# committed. Give containers a stop timeout longer than that grace.
STOPSIGNAL SIGTERM

# Liveness of the worker: its operations server answers from the worker's own event loop.
# Services running another command (api, migrate) set their own healthcheck or disable it.
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('USAGE_INGEST_METRICS_PORT', '9464'), timeout=4)"]

ENTRYPOINT ["usage-ingest"]
CMD ["run"]
