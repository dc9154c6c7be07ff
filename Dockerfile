# syntax=docker/dockerfile:1
# mavera-gateway as a container or sidecar, configured by environment variables alone
# (docs/docker.md): MAVERA_API_KEY, MAVERA_GATEWAY_DEFAULTS__PERSONA_ID, client keys as
# MAVERA_GATEWAY_CLIENTS__<name>__KEY_SHA256, ... The SQLite ledger lives on the /data volume.
# tests/test_dockerfile.py replays the build stage and runs ENTRYPOINT + CMD with this ENV.

FROM python:3.11-slim AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore
WORKDIR /src
RUN python -m venv /opt/venv
# Dependencies first, read from pyproject.toml alone: editing the source does not invalidate
# this layer. The pip cache is a build cache mount, so it never lands in a layer. The extras
# for replicas (the PostgreSQL ledger, the Redis counters) are in: one image for a sidecar on
# SQLite and for replicas behind a load balancer (deploy/).
COPY pyproject.toml ./
RUN --mount=type=cache,target=/root/.cache/pip \
    python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; extra = p['optional-dependencies']; print('\n'.join(p['dependencies'] + extra['postgres'] + extra.get('redis', [])))" > requirements.txt \
    && /opt/venv/bin/pip install --requirement requirements.txt
COPY README.md ./
COPY app ./app
# Once the venv is checked, pip and setuptools leave it (a third of its size): the gateway runs
# neither, and the venv is root's, so the gateway's user could not install into it anyway.
RUN --mount=type=cache,target=/root/.cache/pip \
    /opt/venv/bin/pip install --no-deps . \
    && /opt/venv/bin/pip check \
    && /opt/venv/bin/pip uninstall --quiet --yes pip setuptools

FROM python:3.11-slim
# Listen on every interface inside the container; serve refuses that without client keys
# unless --allow-open (or MAVERA_GATEWAY_SERVER__ALLOW_OPEN=true) says the network is private.
# The drain grace fits Kubernetes' default 30 s terminationGracePeriodSeconds; `docker stop`
# waits only 10 s unless given --stop-timeout (docs/docker.md).
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    MAVERA_GATEWAY_SERVER__HOST=0.0.0.0 \
    MAVERA_GATEWAY_SERVER__PORT=8080 \
    MAVERA_GATEWAY_SERVER__SHUTDOWN_GRACE_S=25 \
    MAVERA_GATEWAY_DATABASE_URL=sqlite:////data/mavera-gateway.db
# A numeric uid, so Kubernetes' runAsNonRoot can verify it; /data is its home, so a fresh
# named volume starts out owned by it.
RUN groupadd --system --gid 10001 gateway \
    && useradd --system --uid 10001 --gid 10001 --home-dir /data --create-home \
       --shell /usr/sbin/nologin gateway
COPY --from=build /opt/venv /opt/venv
USER 10001:10001
WORKDIR /data
VOLUME ["/data"]
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('MAVERA_GATEWAY_SERVER__PORT', '8080'), timeout=2)"]
# uvicorn stops accepting, drains in-flight streams for SHUTDOWN_GRACE_S, then the ledger is
# flushed. Exec-form ENTRYPOINT: the gateway is PID 1 and receives the signal itself.
STOPSIGNAL SIGTERM
# One process, one uvicorn worker: scale with replicas, not workers.
ENTRYPOINT ["mavera-gateway"]
CMD ["serve"]
