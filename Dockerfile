# Worker image: job-worker-agent, without the test or devserver extras.
#
#   docker build -t calof/job_worker_agent:latest .
#
# Offline (no registry reachable): scripts/build_image.sh --local-base builds the
# base with debootstrap (scripts/build_local_base.sh) and passes
#   --build-arg BASE_IMAGE=opeva-local/python:3.11
# Any base works that has python3 (>= 3.11) with venv and ensurepip.
ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS build
# pip settings for the build only (ARGs are visible to RUN as environment).
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
ARG PIP_DEFAULT_TIMEOUT=120
WORKDIR /src
# deploy/docker/build-ca/ca.crt, if present, is the CA bundle pip must trust.
COPY deploy/docker/build-ca/ /tmp/build-ca/
COPY pyproject.toml README.md ./
COPY src ./src
RUN set -eu; \
    [ -n "${PIP_INDEX_URL:-}" ] || unset PIP_INDEX_URL; \
    [ -n "${PIP_EXTRA_INDEX_URL:-}" ] || unset PIP_EXTRA_INDEX_URL; \
    if [ -s /tmp/build-ca/ca.crt ]; then export PIP_CERT=/tmp/build-ca/ca.crt; fi; \
    python3 -m venv /opt/venv; \
    /opt/venv/bin/pip install --no-cache-dir --disable-pip-version-check ".[gpu]" ; \
    /opt/venv/bin/job-worker-agent --help >/dev/null

FROM ${BASE_IMAGE}
LABEL org.opencontainers.image.title="job-worker-agent" \
      org.opencontainers.image.description="OPEVA job worker: runs backend jobs as Docker containers"
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    WORKER_STATE_DIR=/var/lib/job-worker-agent \
    METRICS_PORT=9464
# Runs as root on purpose: the Docker socket is root-equivalent anyway, and job
# containers write the share as root too (see docs/deployment.md). Use
# `--user UID:GID --group-add <socket gid>` to run it unprivileged.
# Writable for any --user: a new named volume takes these permissions.
RUN mkdir -p /var/lib/job-worker-agent && chmod 1777 /var/lib/job-worker-agent
VOLUME ["/var/lib/job-worker-agent"]
EXPOSE 9464
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python3", "-c", "import os, sys, urllib.request; p = os.environ.get('METRICS_PORT', '9464'); sys.exit(0) if p == '0' else urllib.request.urlopen('http://127.0.0.1:%s/healthz' % p, timeout=4)"]
ENTRYPOINT ["job-worker-agent"]
CMD ["run"]
