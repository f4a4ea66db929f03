# BHIV Core: one image for every service and the operator.
#
#   docker build -t bhiv-core .
#   docker run --rm -p 8001:8001 bhiv-core serve logistics
#   docker run --rm bhiv-core --help
#
# Any base with Python >= 3.11 and the venv module works (the interpreter is
# found as `python3` on PATH, /usr/local/bin in the official images, /usr/bin
# in Debian's); the builder and the final stage must use the same base, since
# the virtualenv links to its interpreter. `hack/build-image` builds from a
# local Debian base where no registry is reachable. docs/container.md has more.
ARG BASE_IMAGE=python:3.11-slim-bookworm

# ---------------------------------------------------------------------------
FROM ${BASE_IMAGE} AS builder

ENV LANG=C.UTF-8 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DEFAULT_TIMEOUT=180 \
    PYTHONDONTWRITEBYTECODE=1

# Optional CA bundle for builds behind a TLS-intercepting proxy: a PEM file at
# .build-ca/ca-certificates.crt in the build context (hack/build-image puts the
# host's bundle there). The directory is usually absent: the bracket makes the
# name a pattern, which may match nothing as long as another source (here
# requirements.lock) exists. Only this stage sees it; the final image does not.
COPY requirements.lock .build-c[a] /tmp/build-ca/

# Some wheels ship their extension modules with debug info (uvloop's alone is
# 12 MB of it); `strip --strip-debug` (symbols stay) takes about 25 MB off the
# image. binutils is installed in this stage only, on bases that have apt;
# elsewhere, or with --build-arg STRIP_DEBUG=0, the modules are left as they are.
ARG STRIP_DEBUG=1
RUN set -eu; \
    if [ "${STRIP_DEBUG}" = 1 ] && ! command -v strip >/dev/null && command -v apt-get >/dev/null; then \
        ca=/tmp/build-ca/ca-certificates.crt; opts=""; \
        if [ -s "$ca" ]; then opts="-o Acquire::https::CAInfo=$ca"; fi; \
        apt-get $opts update -qq; \
        DEBIAN_FRONTEND=noninteractive apt-get $opts install -y -qq --no-install-recommends binutils >/dev/null; \
        rm -rf /var/lib/apt/lists/*; \
    fi

RUN python3 -m venv /opt/bhiv

# Dependencies first, in their own layer: rebuilt only when requirements.lock
# changes. Exactly the locked versions, each checked against its hash (`make
# lock` writes the file from pyproject.toml's ranges). Wheels only, so the build
# needs no compiler either.
# Then the libraries become bytecode only (hack/image/bytecode-only.py: their
# sources, test suites and type stubs go, about 45 MB); pip and setuptools are
# left for the next step, which removes them.
COPY hack/image/bytecode-only.py /tmp/build-ca/
RUN set -eu; \
    if [ -s /tmp/build-ca/ca-certificates.crt ]; then export PIP_CERT=/tmp/build-ca/ca-certificates.crt; fi; \
    /opt/bhiv/bin/pip install --only-binary=:all: --require-hashes -r /tmp/build-ca/requirements.lock; \
    if [ "${STRIP_DEBUG}" = 1 ]; then \
        if command -v strip >/dev/null; then \
            find /opt/bhiv -type f -name '*.so*' -exec strip --strip-debug {} +; \
        else \
            echo "no strip in this base: extension modules keep their debug info"; \
        fi; \
    fi; \
    /opt/bhiv/bin/python /tmp/build-ca/bytecode-only.py \
        "$(/opt/bhiv/bin/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')" \
        pip setuptools _distutils_hack

# Then the project itself (.dockerignore keeps the context to what it needs).
# pip and setuptools go afterwards: nothing is installed at run time.
COPY . /src
RUN set -eu; \
    if [ -s /tmp/build-ca/ca-certificates.crt ]; then export PIP_CERT=/tmp/build-ca/ca-certificates.crt; fi; \
    /opt/bhiv/bin/pip install --no-deps /src; \
    /opt/bhiv/bin/pip uninstall --yes --quiet pip setuptools; \
    /opt/bhiv/bin/bhiv --help >/dev/null

# ---------------------------------------------------------------------------
# The base as the services run it, without what they never run: the package
# manager and what only it uses (apt, its TLS and signature libraries, perl,
# debconf), pip's and setuptools' wheels for `python3 -m venv`, glibc's iconv
# charsets (Python has its own codecs) and the parts of the standard library
# that are tools (lib2to3, distutils, pydoc's topics, idle, the test suite).
# About 45 MB.
# Packages are purged with dpkg, so its database still says exactly what the
# image holds (image scanners read it). To add software, build on the builder
# stage or copy /opt/bhiv into a base of your own (docs/container.md).
FROM ${BASE_IMAGE} AS runtime
ARG UNUSED_PACKAGES="apt libapt-pkg6.0 gpgv debian-archive-keyring python3-venv python3.11-venv python3-pip-whl python3-setuptools-whl python3-lib2to3 python3-distutils e2fsprogs libgnutls30 libp11-kit0 libunistring2 libidn2-0 libtasn1-6 libnettle8 libhogweed6 libgmp10 debconf perl-base"

# A numeric user, so that Kubernetes can check runAsNonRoot; the passwd entry
# is written directly because minimal bases have no useradd.
RUN set -eu; \
    echo 'bhiv:x:10001:10001:BHIV Core:/nonexistent:/usr/sbin/nologin' >> /etc/passwd; \
    echo 'bhiv:x:10001:' >> /etc/group; \
    if command -v dpkg >/dev/null; then \
        installed=""; \
        for p in ${UNUSED_PACKAGES}; do \
            if dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed'; then installed="$installed $p"; fi; \
        done; \
        if [ -n "$installed" ]; then dpkg --purge --force-depends --force-remove-essential $installed >/dev/null; fi; \
    fi; \
    rm -rf /usr/lib/*-linux-gnu/gconv /var/cache/debconf /var/log/* /var/lib/apt /var/cache/apt; \
    for lib in /usr/lib/python3.* /usr/local/lib/python3.*; do \
        rm -rf "$lib/lib2to3" "$lib/distutils" "$lib/pydoc_data" "$lib/idlelib" "$lib/tkinter" "$lib/turtledemo" "$lib/test" "$lib/ensurepip"; \
        rm -f "$lib"/lib-dynload/_test*.so "$lib"/lib-dynload/xxlimited*.so "$lib"/lib-dynload/_ctypes_test*.so; \
    done; \
    python3 -c 'import ssl, sqlite3, zoneinfo, json, asyncio, encodings.idna'

# Owned by root and read-only to the service user.
COPY --from=builder /opt/bhiv /opt/bhiv

# ---------------------------------------------------------------------------
# One layer: what the step above removed is then not in the image at all.
FROM scratch
COPY --from=runtime / /

# The root filesystem may be read-only: nothing is written outside /tmp (an
# emptyDir or tmpfs). SQLite files and the local JWT secret go to
# BHIV_DATA_DIR; on Kubernetes the services use PostgreSQL and a mounted secret.
ENV PATH=/opt/bhiv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    LANG=C.UTF-8 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    TMPDIR=/tmp \
    BHIV_HOST=0.0.0.0 \
    BHIV_DATA_DIR=/tmp/bhiv

# Declared here, after the last RUN and COPY: a changed build date or revision
# then rebuilds only the metadata, never a layer.
ARG BASE_IMAGE
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown
LABEL org.opencontainers.image.title="BHIV Core" \
      org.opencontainers.image.description="BHIV Core services and operator; entrypoint: bhiv (e.g. 'serve logistics')" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.base.name="${BASE_IMAGE}"

USER 10001:10001
WORKDIR /tmp
# Each service listens on its catalog port (8001 logistics, 8002 crm, ...) or BHIV_PORT.
EXPOSE 8000-8005
ENTRYPOINT ["bhiv"]
CMD ["--help"]
