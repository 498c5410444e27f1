# syntax=docker/dockerfile:1
# failure-predictor: the daemon, its CLI and the bootstrap model.
#   docker build -t failure-predictor .
#   docker run -p 9847:9847 -v $PWD/config.yaml:/etc/failure-predictor/config.yaml:ro failure-predictor
#   docker run -p 9847:9847 failure-predictor demo --address 0.0.0.0     # no Prometheus needed

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# Stage 1: wheels for the package and every dependency (compilers only here, for any sdist).
FROM ${PYTHON_IMAGE} AS build
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
COPY exporter ./exporter
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

# Stage 2: the runtime, installed from those wheels only.
FROM ${PYTHON_IMAGE}
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="failure-predictor" \
      org.opencontainers.image.description="Prometheus sidecar that predicts workload failures and re-exports failure_probability gauges" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/failure-predictor/failure-predictor" \
      org.opencontainers.image.url="https://github.com/failure-predictor/failure-predictor" \
      org.opencontainers.image.documentation="https://github.com/failure-predictor/failure-predictor#readme"

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MPLCONFIGDIR=/tmp/matplotlib \
    NUMBA_CACHE_DIR=/tmp/numba

RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links=/wheels failure-predictor \
    && groupadd --system --gid 10001 failure-predictor \
    && useradd --system --uid 10001 --gid 10001 --home-dir /nonexistent --no-create-home \
       --shell /usr/sbin/nologin failure-predictor

USER 10001:10001
EXPOSE 9847
ENTRYPOINT ["failure-predictor"]
CMD ["run", "--config", "/etc/failure-predictor/config.yaml"]
