#!/usr/bin/env bash
# Container entry point: derive the HTTPS settings from DOCXY_DOMAIN, then exec supervisord (the
# mirror, the certificate renewer, a listener that takes the container down if either gives up
# and one that restarts a mirror that hangs). With arguments it execs those instead, under the
# same settings: the image's `docxy` command comes through here, so `docker exec <ctr> docxy
# cache du` sees what the mirror sees.
#
# Paths default to the image's layout and can be moved (tests run this script outside the image):
#   DOCXY_STATE_DIR        /var/lib/docxy                 cache/, webroot/, certs/ (the volumes)
#   DOCXY_RUN_DIR          /run/docxy                     supervisord's socket and pid file
#   DOCXY_SUPERVISOR_CONF  supervisord.conf beside this script
# DOCXY_CACHE_DIR, DOCXY_CERTS_WEBROOT and DOCXY_CERTS_CONFIG_DIR, when unset, follow the state
# directory (the Dockerfile sets them to these same defaults).
#
# Without DOCXY_DOMAIN the mirror serves plain HTTP only (behind a CDN or a reverse proxy: set
# DOCXY_SERVER_PUBLIC_URL) and the renewer is not started: there is no certificate to renew.
set -euo pipefail

# Until it execs supervisord this script is the container's PID 1, which the kernel gives no
# signal it has no handler for: without these a `docker stop` during the checks below (a second
# or so at every start) was ignored, and Docker waited out stop_grace_period before its SIGKILL.
# A check under way (a child) is ended with it. exec gives the program the default handlers.
child=""
stopped() {
  [[ -z "$child" ]] || kill -TERM "$child" 2>/dev/null || true
  exit "$1"
}
trap 'stopped 143' TERM
trap 'stopped 130' INT
trap 'stopped 129' HUP

state="${DOCXY_STATE_DIR:-/var/lib/docxy}"
export DOCXY_RUN_DIR="${DOCXY_RUN_DIR:-/run/docxy}"
export DOCXY_CACHE_DIR="${DOCXY_CACHE_DIR:-$state/cache}"
export DOCXY_CERTS_WEBROOT="${DOCXY_CERTS_WEBROOT:-$state/webroot}"
export DOCXY_CERTS_CONFIG_DIR="${DOCXY_CERTS_CONFIG_DIR:-$state/certs/letsencrypt}"
# The directory of this script, supervisord.conf and supervisor-fatal.sh (the conf runs it).
DOCXY_SCRIPTS_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export DOCXY_SCRIPTS_DIR
conf="${DOCXY_SUPERVISOR_CONF:-$DOCXY_SCRIPTS_DIR/supervisord.conf}"

# The domain as the config reads certs.domain, without the spaces around it that a quoted .env
# value or `docker run -e` keeps: the public URL below is built from it, and a blank one is none.
domain="${DOCXY_DOMAIN:-}"
domain="${domain#"${domain%%[![:space:]]*}"}"
domain="${domain%"${domain##*[![:space:]]}"}"
export DOCXY_DOMAIN="$domain"

if [[ -n "$domain" ]]; then
  export DOCXY_CERTS_DOMAIN="${DOCXY_CERTS_DOMAIN:-$domain}"
  # DOCXY_EMAIL is certs.email as it is (docxy.config reads it with a domain, unless
  # DOCXY_CERTS_EMAIL is set): a copy here was refused under the copy's name.
  # On the plain listener's addresses: [::] with compose.host.yaml, else the image's 0.0.0.0.
  any=0.0.0.0
  [[ "${DOCXY_SERVER_LISTEN:-}" == "[::]:"* ]] && any="[::]"
  export DOCXY_SERVER_TLS_LISTEN="${DOCXY_SERVER_TLS_LISTEN:-$any:443}"
  export DOCXY_SERVER_PUBLIC_URL="${DOCXY_SERVER_PUBLIC_URL:-https://$domain}"
  # The mirror serves the files in $served (a self-signed bootstrap until the first issuance,
  # which the renewer obtains through the mirror's webroot and installs there atomically; the
  # mirror then reloads it in place).
  served="$state/certs/served"
  export DOCXY_TLS_CERT_PATH="${DOCXY_TLS_CERT_PATH:-$served/fullchain.pem}"
  export DOCXY_TLS_KEY_PATH="${DOCXY_TLS_KEY_PATH:-$served/privkey.pem}"
  export DOCXY_SUPERVISOR_RENEWER=true
else
  export DOCXY_SUPERVISOR_RENEWER=false
fi

# compose.host.yaml listens on [::] (both address families, on the host's own network); a
# kernel without IPv6 cannot bind that, so there the same port is taken on 0.0.0.0.
if [[ ! -e "${DOCXY_IF_INET6:-/proc/net/if_inet6}" ]]; then
  for setting in DOCXY_SERVER_LISTEN DOCXY_SERVER_TLS_LISTEN; do
    if [[ "${!setting:-}" == "[::]:"* ]]; then
      export "$setting=0.0.0.0:${!setting#"[::]:"}"
      echo "docxy: this kernel has no IPv6: $setting=${!setting}" >&2
    fi
  done
fi

# The image's interpreter that may bind ports below 1024 (Dockerfile: a copy beside the venv's
# bin/), first on PATH only where this container's bounding set holds cap_net_bind_service: the
# kernel refuses to exec a file granted a capability the set lacks (cap_drop: [ALL]).
netbind="$(dirname "$(command -v python)")/../netbind"
if [[ -x "$netbind/python" ]]; then
  bounding=0
  while IFS=$': \t' read -r key value _; do
    if [[ "$key" == CapBnd && "$value" =~ ^[0-9a-fA-F]{1,16}$ ]]; then
      bounding=$((16#$value))
    fi
  done </proc/self/status
  if (((bounding >> 10) & 1)); then
    PATH="$(cd "$netbind" && pwd):$PATH"
    export PATH
  fi
fi

if (($# > 0)); then
  exec "$@"
fi

if [[ -z "$domain" && -z "${DOCXY_SERVER_PUBLIC_URL:-}" ]]; then
  echo "docxy: set DOCXY_DOMAIN (HTTPS with Let's Encrypt) or DOCXY_SERVER_PUBLIC_URL" >&2
  exit 2
fi

# DOCXY_DOMAIN is a DNS name, by the rule the config holds certs.domain to. A URL there
# (https://mirror.example.com) was refused by the mirror under the names derived from it above,
# DOCXY_SERVER_PUBLIC_URL=https://https://... or DOCXY_CERTS_DOMAIN, which the operator never set.
label='[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?'
if [[ -n "$domain" ]] && ! (LC_ALL=C && ((${#domain} <= 253)) && [[ "$domain" =~ ^$label(\.$label)*$ ]]); then
  echo "docxy: DOCXY_DOMAIN=$domain: expected the mirror's DNS name, such as mirror.example.com" \
    "(no scheme, port or path)" >&2
  exit 2
fi

# The volumes must be writable by this container's user, which cannot chown them (no root): one
# written by an image whose docxy user had another UID (before the Dockerfile pinned 999, on a
# base where `useradd --system` picked another) stops the mirror. Say which and how to hand it
# over once; the mirror still starts and reports its own error, as supervisord expects.
# One command substitution per command: bash 5.2 (bookworm's) fails to parse a trap's action
# (exit 2, "unexpected EOF") when the signal comes during the first of two in one command.
me="$(id -u)"
me+=":$(id -g)"
for volume in "$DOCXY_CACHE_DIR" "$state/certs"; do
  for dir in "$volume" "$volume"/*/; do
    if [[ -d "$dir" && ! -w "$dir" ]]; then
      echo "docxy: cannot write ${dir%/} ($(stat -c 'owner %u:%g, mode %a' -- "$dir"))" \
        "as $me. Left by an image whose docxy user had another UID?" \
        "Give it to this one once: docker compose run --rm --user 0 --entrypoint chown docxy" \
        "-R $me $volume (or docker run --rm --user 0 -v VOLUME:$volume --entrypoint chown" \
        "IMAGE -R $me $volume)" >&2
      break
    fi
  done
done

# The settings, read as the mirror reads them (0.2 s): one it refuses (DOCXY_CACHE_MAX_SIZE=lots)
# is said here once and the container stops (exit 2). Under supervisord the mirror failed six
# starts over it (some 25 s, the error among supervisord's lines), went FATAL and compose started
# it all again, for ever, too slowly for Docker's restart delay to grow. A [scheduler] setting
# the renewer refuses passes (the renewer holds and says why); so do what only a start can tell
# (a port in use, a volume it may not write): supervisord's retries are for those. After the
# volumes' check: a key a volume of another UID holds is "cannot read" here, and that check
# names the one chown that mends it.
# Read from a process substitution: bash runs a trap only once a command in the foreground (a
# `$(...)`) has ended, where `read` is interrupted at once.
exec {check}< <(exec python -m docxy serve --show-config 2>&1 >/dev/null)
child=$!
refused=""
while IFS= read -r line <&"$check" || [[ -n "$line" ]]; do
  refused+="$line"$'\n'
done
exec {check}<&-
status=0
wait "$child" || status=$?
child=""
if ((status != 0)); then
  printf '%s' "$refused" >&2
  exit 2
fi

# supervisord in this process (exec), exiting 1 instead of 0 if a program went FATAL.
exec python -m scheduler.supervise -c "$conf"
