# syntax=docker/dockerfile:1
# mavera-gateway as a container / sidecar. Configured by environment variables alone:
#   MAVERA_API_KEY (required unless the command adds --simulate), MAVERA_GATEWAY_DEFAULTS__PERSONA_ID,
#   MAVERA_GATEWAY_ADMIN_KEY, ... (see config.example.toml). The SQLite ledger lives on /data.

FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
# Dependencies first, so source edits do not invalidate this layer.
COPY pyproject.toml README.md ./
RUN mkdir app && touch app/__init__.py \
    && python -m venv /opt/venv \
    && /opt/venv/bin/pip install . \
    && /opt/venv/bin/pip uninstall -y mavera-gateway
COPY app ./app
RUN /opt/venv/bin/pip install --no-deps .

FROM python:3.11-slim
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    MAVERA_GATEWAY_SERVER__HOST=0.0.0.0 \
    MAVERA_GATEWAY_SERVER__PORT=8080 \
    MAVERA_GATEWAY_DATABASE_URL=sqlite:////data/mavera-gateway.db
RUN useradd --system --uid 10001 --home-dir /data --create-home gateway
COPY --from=build /opt/venv /opt/venv
USER gateway
WORKDIR /data
VOLUME ["/data"]
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2)"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["mavera-gateway"]
CMD ["serve"]
