# failure-predictor: the daemon, its CLI and the bootstrap model (package data).
#   ./scripts/build-image failure-predictor:0.1.0      # docker or buildah; docs/image.md builds offline
#   docker run -p 9847:9847 -v $PWD/config.yaml:/etc/failure-predictor/config.yaml:ro failure-predictor:0.1.0
#   docker run -p 9847:9847 failure-predictor:0.1.0 demo --address 0.0.0.0     # no Prometheus needed
# Plain Dockerfile syntax only (no frontend to fetch, no BuildKit-only mounts): the classic builder, BuildKit
# and buildah all build it, from a local base image given as PYTHON_IMAGE when no registry is reachable.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# Stage 1: a virtualenv holding the package and its dependencies, pinned by constraints.txt.
FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
# numba.pycc builds the kernels ahead of time with C and C++ compilers (numba's runtime is C++) and Python's
# headers (exporter/precompile.py); the runtime stage has none of them.
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc g++ libc6-dev \
    && if [ ! -f "$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["include"])')/Python.h" ]; then \
         apt-get install -y --no-install-recommends python3-dev; fi \
    && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/failure-predictor
WORKDIR /src
COPY pyproject.toml README.md LICENSE constraints.txt ./
COPY exporter ./exporter
# pyod requires matplotlib for plotting helpers nothing here imports (~95 MB with its dependencies),
# and the libraries' own test suites are never run in the image (~130 MB); the import check and
# --version prove what remains is enough. The kernels are compiled ahead of time into the installed package
# (run from /, so it is that package, not /src's): the daemon loads them without numba's runtime (~130 MB)
# and a new pod's first cycle does not compile for ~10 s.
RUN /opt/failure-predictor/bin/pip install --prefer-binary -c constraints.txt . \
    && /opt/failure-predictor/bin/pip uninstall -y matplotlib contourpy cycler fonttools kiwisolver pillow pyparsing \
    && find /opt/failure-predictor -type d -name tests -prune -exec rm -rf {} + \
    && /opt/failure-predictor/bin/python -c "import exporter.cli, exporter.service.api, exporter.models.anomaly, exporter.training.train" \
    && /opt/failure-predictor/bin/failure-predictor --version \
    && cd / && /opt/failure-predictor/bin/python -m exporter.precompile \
    && /opt/failure-predictor/bin/python -c "from exporter import kernels; assert kernels.AHEAD_OF_TIME, kernels.MODE"

# Stage 2: the same base with that virtualenv; no compilers, no pip run, no network.
FROM ${PYTHON_IMAGE}
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="failure-predictor" \
      org.opencontainers.image.description="Prometheus sidecar that predicts workload failures and re-exports failure_probability gauges" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/failure-predictor/failure-predictor" \
      org.opencontainers.image.url="https://github.com/failure-predictor/failure-predictor" \
      org.opencontainers.image.documentation="https://github.com/failure-predictor/failure-predictor#readme"

ENV PATH=/opt/failure-predictor/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

COPY --from=build /opt/failure-predictor /opt/failure-predictor
RUN groupadd --system --gid 10001 failure-predictor \
    && useradd --system --uid 10001 --gid 10001 --home-dir /nonexistent --no-create-home \
       --shell /usr/sbin/nologin failure-predictor

USER 10001:10001
EXPOSE 9847
ENTRYPOINT ["failure-predictor"]
CMD ["run", "--config", "/etc/failure-predictor/config.yaml"]
