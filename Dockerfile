# Container image of storm-termination-exporter.
#
#   docker build -t storm-termination-exporter:VERSION .
#
# docs/image.md describes the stages and the expected image size.

# Both stages use the same base image, because the venv built in the first one
# links to the Python in /usr/local/bin of that image.
FROM python:3.11.17-slim-bookworm AS build

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    BUILD_VENV=/opt/build-venv \
    VENV=/opt/venv \
    WHEELS=/wheels

WORKDIR /src

# setuptools, the build backend, pinned to a version that meets pyproject.toml's
# build-system requirement, in a venv of its own that the runtime stage never sees.
RUN python -m venv "$BUILD_VENV" \
 && "$BUILD_VENV/bin/pip" install --no-cache-dir pip==26.3 setuptools==80.9.0

COPY pyproject.toml README.md requirements.lock ./
COPY exporter/ exporter/

RUN "$BUILD_VENV/bin/pip" wheel --no-cache-dir --no-deps --no-build-isolation \
        --wheel-dir "$WHEELS" .

# The runtime venv gets exactly the pinned packages and the wheel, with no pip
# or setuptools of its own. --no-deps keeps pip from adding an unpinned package,
# so a dependency missing from requirements.lock fails `pip check` here and
# never reaches the image.
#
# --no-compile and the three --help runs after it leave bytecode only for the
# modules that the commands import. Compiling everything would add about 50 MB,
# mostly for the asyncio client of the kubernetes package, which the exporter
# does not use. The root file system is read-only at run time, so Python could
# not write that bytecode later.
RUN python -m venv --without-pip "$VENV" \
 && "$BUILD_VENV/bin/pip" --python "$VENV/bin/python" install --no-cache-dir \
        --no-compile --no-deps --only-binary=:all: \
        --requirement requirements.lock "$WHEELS"/storm_termination_exporter-*.whl \
 && "$BUILD_VENV/bin/pip" --python "$VENV/bin/python" check \
 && "$VENV/bin/storm-termination-exporter" --help >/dev/null \
 && "$VENV/bin/storm-termination-exporter" diagnose --help >/dev/null \
 && "$VENV/bin/storm-termination-exporter" simulate --help >/dev/null


FROM python:3.11.17-slim-bookworm AS runtime

ARG VERSION=0.1.0

LABEL org.opencontainers.image.title="storm-termination-exporter" \
      org.opencontainers.image.description="Prometheus exporter for how Apache Storm workers shut down on Kubernetes nodes" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="docker.io/library/python:3.11.17-slim-bookworm"

# The exporter never runs pip or setuptools. Removing them from the base image's
# Python does not shrink the image (the lower layer keeps the files), but an
# image scanner then reports no findings for packages the exporter cannot use.
RUN python -m pip uninstall --yes pip setuptools wheel

COPY --from=build /opt/venv /opt/venv

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

# A numeric UID that has no passwd entry and that no other process on a node is
# expected to use. With hostPID, processes of one UID can signal each other. The
# overlays that need root set runAsUser: 0.
USER 10001:10001

EXPOSE 19715

# The exporter is the container's only process and handles SIGTERM, SIGINT and
# SIGHUP itself, so there is no shell or init in front of it.
STOPSIGNAL SIGTERM
ENTRYPOINT ["storm-termination-exporter"]
