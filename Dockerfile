# syntax=docker/dockerfile:1
# Docxy appliance: the mirror and its certificate renewer under supervisord, in one container.
#   docker compose up -d        (see compose.yaml; set DOCXY_DOMAIN and DOCXY_EMAIL for HTTPS)

FROM python:3.12-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY docxy ./docxy
COPY scheduler ./scheduler
# docxy/data/configure-client.sh (served at /setup.sh) is a link to this file.
COPY scripts/configure-client.sh ./scripts/configure-client.sh
# Wheels for the app and what the container runs beside it: the renewer (APScheduler),
# certbot (ACME client) and supervisor (process supervisor).
RUN pip wheel --no-cache-dir --wheel-dir /wheels '.[scheduler]' certbot supervisor

FROM python:3.12-slim
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links /wheels docxy certbot supervisor apscheduler \
    && rm -rf /wheels \
    && useradd --system --home-dir /var/lib/docxy --shell /usr/sbin/nologin docxy \
    && mkdir -p /var/lib/docxy/cache /var/lib/docxy/certs /var/lib/docxy/webroot /run/docxy \
    && chown -R docxy:docxy /var/lib/docxy /run/docxy
COPY scripts/supervisord.conf /etc/docxy/supervisord.conf
COPY scripts/entrypoint.sh /usr/local/bin/docxy-entrypoint

# MALLOC_ARENA_MAX: fewer glibc arenas for the read threads (measured ~220 → ~160 MiB peak RSS
# with 50 concurrent downloads).
ENV PYTHONUNBUFFERED=1 \
    MALLOC_ARENA_MAX=2 \
    DOCXY_RUN_DIR=/run/docxy \
    DOCXY_SERVER_LISTEN=0.0.0.0:80 \
    DOCXY_SERVER_ADMIN_LISTEN=0.0.0.0:9180 \
    DOCXY_CACHE_DIR=/var/lib/docxy/cache \
    DOCXY_CERTS_WEBROOT=/var/lib/docxy/webroot \
    DOCXY_CERTS_CONFIG_DIR=/var/lib/docxy/certs/letsencrypt \
    DOCXY_AUTH_DIR=/var/lib/docxy/certs/access

# One volume per kind of state: the cache (large, disposable) and the certificates (small,
# precious: Let's Encrypt rate-limits re-issuance).
VOLUME ["/var/lib/docxy/cache", "/var/lib/docxy/certs"]
# 9180: /metrics and /status; publish it on the host's loopback only (compose.yaml does).
EXPOSE 80 443 9180
USER docxy
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request as u; u.urlopen('http://127.0.0.1:80/health', timeout=4)"]
ENTRYPOINT ["/usr/local/bin/docxy-entrypoint"]
