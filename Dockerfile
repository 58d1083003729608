# Vitrine's gRPC search server (see deploy/README.md):
#
#   docker build -t vitrine:0.1.0 .
#   docker run -p 50051:50051 -p 9100:9100 -v /srv/vitrine/bundles:/bundles -v /srv/vitrine/models:/models:ro vitrine:0.1.0
#
# serves /bundles/current (a symlink) read-only and follows it: re-point it to publish a new bundle. /bundles must be
# writable (SQLite and Tantivy take lock files even to read) or copied to local disk first (deploy/sync-bundles.sh).
# The bundle's manifest names its models; a model directory must have the same path here as when it was indexed
# (index with --text-model /models/... and --clip-model /models/...); all-MiniLM-L6-v2 ships in the image.
#
# Build args: EXTRAS=server (add ",train" for LoRA text adapters, which need peft); TORCH_INDEX (CPU wheels of the
# torch pinned in pyproject.toml; PyPI's own torch wheels pull in ~3 GB of CUDA libraries a CPU server never uses).

ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS builder
ARG EXTRAS=server
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src

# Dependencies first, in a layer of their own: a code change does not reinstall torch. constraints.txt pins every
# package to the versions CI passed with; its torch==2.14.1 also matches the CPU index's 2.14.1+cpu, which pip
# prefers (a local version label sorts above the bare version).
COPY pyproject.toml constraints.txt ./
COPY deploy/requirements.py deploy/requirements.py
RUN pip install -c constraints.txt --upgrade pip setuptools wheel \
    && python deploy/requirements.py "${EXTRAS}" > /tmp/requirements.txt \
    && pip install -c constraints.txt --extra-index-url "${TORCH_INDEX}" -r /tmp/requirements.txt

COPY README.md ./
COPY cli cli
COPY encoders encoders
COPY indexer indexer
COPY proto proto
COPY ranking ranking
COPY server server
COPY serving serving
COPY trainer trainer
# --no-deps: everything it needs is installed above; `pip check` fails the build if that stopped being true.
RUN pip install --no-deps . \
    && pip check \
    && vitrine serve --help > /dev/null

FROM ${PYTHON_IMAGE} AS runtime
# libgomp1: LightGBM's OpenMP runtime (the wheel links the system one; torch and faiss bundle their own).
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 vitrine \
    && useradd --system --uid 10001 --gid vitrine --home-dir /nonexistent --no-create-home --shell /usr/sbin/nologin vitrine \
    && mkdir -p /models /bundles /tenants /local \
    && chown vitrine:vitrine /bundles /tenants /local
COPY --from=builder /opt/venv /opt/venv
COPY deploy/healthcheck.py deploy/sync-bundles.sh /opt/vitrine/
# No model hub at run time: every model is a directory or ships in a package. HOME=/tmp: libraries that want a
# cache directory get a writable one under a read-only root file system (Kubernetes mounts an emptyDir there).
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1
USER 10001:10001
VOLUME ["/models", "/bundles", "/tenants"]
# gRPC (Search, Catalog, Admin, health, reflection) and Prometheus metrics
EXPOSE 50051 9100
# NOT_SERVING while the bundle loads (minutes for millions of items: start-period) and while draining on SIGTERM.
HEALTHCHECK --interval=15s --timeout=5s --start-period=300s --retries=3 \
    CMD ["/opt/venv/bin/python", "/opt/vitrine/healthcheck.py"]
ENTRYPOINT ["vitrine", "serve"]
CMD ["--bundle", "/bundles/current", "--read-only", "--watch", "5", "--host", "0.0.0.0", "--metrics-port", "9100"]
