# One image per service, from the same two stages (the agent's image is agent/Dockerfile):
#   docker build --build-arg SERVICE=auth -t fleet/auth .
#   docker run fleet/auth                                   # python -m services.auth api
#   docker run fleet/auth python -m services.auth worker    # its worker (relay, consumers)
# docker-compose.yml builds each service this way. Settings come from <SERVICE>_* variables.
ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS build
# Compilers only here, for a dependency without a wheel on some platform (e.g. 32-bit ARM); the
# final stage copies the built virtualenv and nothing else.
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
COPY libs libs
COPY services services
COPY agent agent
COPY fleet fleet
# The otlp extra: `<SERVICE>_OTEL_EXPORTER=otlp` sends traces to a collector (compose's observe profile).
RUN python -m venv /opt/venv && /opt/venv/bin/pip install --no-cache-dir '.[otlp]'

FROM ${PYTHON_IMAGE}
ARG SERVICE=gateway
RUN useradd --system --uid 10001 --home-dir /app --shell /usr/sbin/nologin fleet
COPY --from=build /opt/venv /opt/venv
COPY infra/docker/healthcheck.py infra/docker/bootstrap.py /opt/fleet/
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 FLEET_SERVICE=${SERVICE}
WORKDIR /app
USER fleet
# /readyz of the service's port (<SERVICE>_PORT or its default): 200 once Redis, Postgres and the
# migrations are ok. A worker container overrides it with `... healthcheck.py worker`.
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "/opt/fleet/healthcheck.py"]
# A shell only to expand the service's name; exec hands it PID 1, so SIGTERM stops it gracefully.
CMD ["sh", "-c", "exec python -m \"services.$FLEET_SERVICE\" api"]
