# One image for the gateway and the workers (compose builds it once, as ocho-portal).
# The base is an exact version: a new one is taken on purpose, not on a rebuild.
FROM python:3.11.14-slim-bookworm

# tini as PID 1: it reaps every process re-parented to it (a tool's orphans) and
# passes SIGTERM on, wherever the image runs (compose, Kubernetes, docker run).
RUN apt-get update \
    && apt-get install -y --no-install-recommends tini \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home ocho

WORKDIR /app
COPY constraints.txt pyproject.toml setup.py README.md ./
COPY ocho ./ocho
COPY tools ./tools
# A regular install at the lock's versions (no editable import hook slowing every
# tool's start-up); the tools ship inside the package as ocho/tools.
RUN pip install --no-cache-dir --constraint constraints.txt ".[postgres]" \
    && rm -rf /app/build
COPY definitions ./definitions

USER ocho
EXPOSE 9000
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["ocho-gateway", "--bind", "0.0.0.0:9000"]
