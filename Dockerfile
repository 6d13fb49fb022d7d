# Docxy appliance: the mirror and its certificate renewer under supervisord, in one container.
#   docker compose up -d        (see compose.yaml and .env.example)
#   docker build --build-arg BASE_IMAGE=<a python3 image you can reach> -t docxy:local .
#
# BASE_IMAGE: any Debian-like image with python3 >= 3.11 and its venv module (the official
# python:3.12-slim, or Debian bookworm's python3 + python3-venv). Both stages use it, so the venv
# built in the first runs unchanged in the second. Nothing else is fetched from Docker Hub.
ARG BASE_IMAGE=python:3.12-slim

FROM ${BASE_IMAGE} AS build
WORKDIR /src
COPY pyproject.toml README.md constraints.txt ./
COPY docxy ./docxy
COPY scheduler ./scheduler
# docxy/data/configure-client.sh (served at /setup.sh) is a link to this file.
COPY scripts/configure-client.sh ./scripts/configure-client.sh
# One venv with the app and what runs beside it: the renewer (APScheduler), certbot and
# supervisor, and botocore for the shared tier of several replicas ([shared]: +24 MB of image,
# imported only when shared.endpoint is set, so a single mirror's memory is unchanged). Only
# /opt/docxy reaches the runtime stage: the source, the built wheel and pip's cache stay here,
# and pip and setuptools leave the venv after use. pip trusts the base image's CA store when it
# has one (a TLS-inspecting proxy's CA added there is then honoured).
RUN python3 -m venv /opt/docxy \
    && if [ -f /etc/ssl/certs/ca-certificates.crt ]; then \
         export PIP_CERT=/etc/ssl/certs/ca-certificates.crt; fi \
    && /opt/docxy/bin/pip install --no-cache-dir --disable-pip-version-check \
         -c constraints.txt '.[scheduler,shared]' certbot \
    && /opt/docxy/bin/certbot --version \
    && /opt/docxy/bin/pip uninstall --yes --disable-pip-version-check pip setuptools

FROM ${BASE_IMAGE}
COPY --from=build /opt/docxy /opt/docxy
# Few instructions: with the vfs storage driver every one copies the whole file system.
COPY scripts/entrypoint.sh scripts/supervisord.conf scripts/supervisor-fatal.sh \
     scripts/supervisor-watchdog.sh scripts/container-docxy.sh /usr/local/lib/docxy/
# The client set-up script also in /usr/share/docxy/, for `docker cp` (the mirror serves it at
# /setup.sh with its public URL filled in).
COPY scripts/configure-client.sh /usr/share/docxy/
#
# - cap_net_bind_service=+ep (the xattr `setcap` writes; libcap's tool is not in every base) on a
#   copy of the interpreter, /opt/docxy/netbind/python (a venv's: pyvenv.cfg is one level up):
#   the non-root mirror may bind 80/443 with host networking too, where Docker's
#   net.ipv4.ip_unprivileged_port_start=0 does not apply and the sysctl is refused. The
#   entrypoint puts it first on PATH only where the container's bounding set holds the
#   capability: the kernel refuses to exec a file granted one the set lacks, and with the xattr
#   on the interpreter itself `cap_drop: [ALL]` started nothing ("python3: Operation not
#   permitted").
# - The `docxy` user and group are 999:999, fixed: the cache and certs volumes outlive the image,
#   and a rebuild must own what the last one wrote. 999 is what `useradd --system` picked before
#   it was pinned on the bookworm base the tests build (checked; on python:3.12-slim by Debian's
#   numbering, not checked); a base that
#   already has 999 fails the build here instead of silently giving another UID. (The entrypoint
#   names a volume it cannot write and the one-time chown.)
# - The image's `docxy` command runs the CLI through the entrypoint, under the mirror's settings.
# - COPY keeps the modes of the checkout: one made under umask 027 or 077 (a hardened host) gave
#   root-only scripts, and the non-root user could not exec the entrypoint ("permission denied").
RUN mkdir /opt/docxy/netbind \
    && python3 -c "import os, shutil, struct, sys; netbind = '/opt/docxy/netbind/python'; \
        shutil.copy(os.path.realpath(sys.executable), netbind); os.setxattr(netbind, \
        'security.capability', struct.pack('<5I', 0x02000001, 1 << 10, 0, 0, 0))" \
    && chmod 0755 /usr/local/lib/docxy /usr/local/lib/docxy/*.sh /usr/share/docxy \
        /usr/share/docxy/configure-client.sh \
    && chmod 0644 /usr/local/lib/docxy/supervisord.conf \
    && ln -sf /usr/local/lib/docxy/container-docxy.sh /opt/docxy/bin/docxy \
    && groupadd --system --gid 999 docxy \
    && useradd --system --uid 999 --gid docxy --home-dir /var/lib/docxy \
        --shell /usr/sbin/nologin docxy \
    && mkdir -p /var/lib/docxy/cache /var/lib/docxy/certs /var/lib/docxy/webroot /run/docxy \
        /usr/share/docxy \
    && chown -R docxy:docxy /var/lib/docxy /run/docxy

# MALLOC_ARENA_MAX: fewer glibc arenas for the read threads (measured ~220 → ~160 MiB peak RSS
# with 50 concurrent downloads; the mirror also sets it with mallopt at start).
ENV PATH=/opt/docxy/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    MALLOC_ARENA_MAX=2 \
    DOCXY_RUN_DIR=/run/docxy \
    DOCXY_SERVER_LISTEN=0.0.0.0:80 \
    DOCXY_SERVER_ADMIN_LISTEN=127.0.0.1:9180 \
    DOCXY_CACHE_DIR=/var/lib/docxy/cache \
    DOCXY_CERTS_WEBROOT=/var/lib/docxy/webroot \
    DOCXY_CERTS_CONFIG_DIR=/var/lib/docxy/certs/letsencrypt \
    DOCXY_AUTH_DIR=/var/lib/docxy/certs/access

# One volume per kind of state: the cache (large, disposable) and the certificates (small,
# precious: Let's Encrypt rate-limits re-issuance). The webroot holds only the HTTP-01 tokens
# of an issuance in progress, written and served inside this one container: no volume.
VOLUME ["/var/lib/docxy/cache", "/var/lib/docxy/certs"]
# 9180 (/metrics and /status) is on the container's loopback (DOCXY_SERVER_ADMIN_LISTEN: with
# host networking, the host's) and not exposed (`docker run -P` would publish it on every host
# interface). compose.yaml binds it on 0.0.0.0 and publishes it on the host's loopback only
# (by hand: -e DOCXY_SERVER_ADMIN_LISTEN=0.0.0.0:9180 -p 127.0.0.1:9180:9180).
EXPOSE 80 443
USER docxy
# Follows DOCXY_SERVER_LISTEN (`docxy health` asks the configured listener, loopback for 0.0.0.0).
HEALTHCHECK --interval=30s --timeout=10s --start-period=30s --retries=3 CMD ["docxy", "health"]
# supervisord stops the programs on SIGTERM one after another, 26 s at worst (the mirror lets
# running downloads finish for 9 s; scripts/supervisord.conf adds it up): give `docker stop`
# 30 s (compose.yaml's stop_grace_period does; `docker run --stop-timeout 30`).
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/lib/docxy/entrypoint.sh"]
