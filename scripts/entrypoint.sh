#!/usr/bin/env bash
# Container entry point: derive the HTTPS settings from DOCXY_DOMAIN, then run supervisord
# (the mirror and the certificate renewer) as PID 1's only child, with exec.
set -euo pipefail

if [[ -n "${DOCXY_DOMAIN:-}" ]]; then
  export DOCXY_CERTS_DOMAIN="${DOCXY_CERTS_DOMAIN:-$DOCXY_DOMAIN}"
  export DOCXY_CERTS_EMAIL="${DOCXY_CERTS_EMAIL:-${DOCXY_EMAIL:-}}"
  export DOCXY_SERVER_TLS_LISTEN="${DOCXY_SERVER_TLS_LISTEN:-0.0.0.0:443}"
  export DOCXY_SERVER_PUBLIC_URL="${DOCXY_SERVER_PUBLIC_URL:-https://$DOCXY_DOMAIN}"
  # The mirror serves the files in $served (a self-signed bootstrap until the first issuance,
  # which the renewer obtains through the mirror's webroot and installs there atomically; the
  # mirror then reloads it in place).
  served="/var/lib/docxy/certs/served"
  export DOCXY_TLS_CERT_PATH="${DOCXY_TLS_CERT_PATH:-$served/fullchain.pem}"
  export DOCXY_TLS_KEY_PATH="${DOCXY_TLS_KEY_PATH:-$served/privkey.pem}"
elif [[ -z "${DOCXY_SERVER_PUBLIC_URL:-}" ]]; then
  echo "docxy: set DOCXY_DOMAIN (HTTPS with Let's Encrypt) or DOCXY_SERVER_PUBLIC_URL" >&2
  exit 2
fi

exec supervisord -c /etc/docxy/supervisord.conf
