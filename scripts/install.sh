#!/usr/bin/env bash
# Install Docxy on a fresh Debian or Ubuntu VPS: a Docker Hub mirror with Let's Encrypt HTTPS.
#
#   sudo ./scripts/install.sh --domain mirror.example.com [--email you@example.com]
#   curl -fsSL <this script's URL> | sudo bash -s -- --domain mirror.example.com
#
# Checks first, changes after: root, OS and architecture, ports 80/443, disk space, and that the
# domain's A/AAAA records are this host's public addresses (Let's Encrypt would fail otherwise,
# and failures count against its rate limits). Then: Docker Engine and Compose (installed if
# missing), the project (the clone this runs from, or DOCXY_SOURCE_URL fetched into /opt/docxy),
# .env (mode 600), `docker compose up`, a wait for /health over HTTPS with the issued
# certificate, and the commands that point Docker hosts at the mirror.
#
# A second run with the same settings changes nothing and says so. --dry-run prints every
# change without making it. --uninstall stops and removes the stack and its cache, keeping the
# certificate volume unless --purge.
set -euo pipefail

PROG=install.sh
# Compose's project name, written to .env as COMPOSE_PROJECT_NAME; one the operator set there is
# used instead (settle_project).
PROJECT=docxy
SOURCE_URL="${DOCXY_SOURCE_URL:-https://github.com/docxy/docxy/archive/refs/heads/main.tar.gz}"
# The project's and Docker's key's downloads give up on a network that stalls them, rather than
# sit silent: no connection within 30 s, or under 1 KiB/s for a minute.
STALL_LIMITS=(--connect-timeout 30 --speed-limit 1024 --speed-time 60)
# Public-address discovery: several unrelated services must agree (space-separated URLs).
IPV4_SERVICES="${DOCXY_IPV4_SERVICES:-https://api.ipify.org https://ipv4.icanhazip.com https://checkip.amazonaws.com https://ifconfig.me/ip}"
IPV6_SERVICES="${DOCXY_IPV6_SERVICES:-https://api6.ipify.org https://ipv6.icanhazip.com https://ifconfig.co/ip}"
# Where prompts read their answers (the terminal, also when the script itself is piped in).
PROMPT_INPUT="${DOCXY_PROMPT_INPUT:-/dev/tty}"
HEADROOM_KIB=$((2 * 1024 * 1024)) # the image and some slack, beside the cache

usage() {
  cat <<EOF
usage: $PROG --domain NAME [--email ADDRESS] [options]
       $PROG --uninstall [--purge]

  --domain NAME             the mirror's DNS name (its A/AAAA records point at this host)
  --email ADDRESS           the ACME account's contact (optional: Let's Encrypt sends no
                            expiry mail since 2025; the mirror renews and reports by itself)
  --cache-size SIZE         cache cap, e.g. 20G (default: 20G, or what .env says)
  --upstream-user NAME      a Docker Hub account for the mirror's own pulls; the password is
                            read without echo (or from DOCXY_UPSTREAM_PASSWORD)
  --base-image IMAGE        the image the build starts from (default: Docker Hub's
                            python:3.12-slim, or what .env says): one this host can pull
  --public-ip ADDRESS       this host's public address (repeatable); skips discovery
  --dns-server HOST[#PORT]  the resolver to ask for the domain's records (default: the system's)
  --dns-port PORT           its port (default 53)
  --skip-dns-check          go on when the records do not match (certificates will likely fail)
  --docker-repo             install Docker from Docker's own apt repository (default: the
                            distribution's docker.io and Compose packages)
  --dir DIR                 where the project lives (default: the clone or fetched copy this
                            runs from, else /opt/docxy, fetched from \$DOCXY_SOURCE_URL)
  --source-url URL          the project's .tar.gz to fetch (default: \$DOCXY_SOURCE_URL, else
                            $SOURCE_URL)
  --update                  fetch the project again into --dir
  --configure-local-docker  also point this host's own dockerd at the mirror
  --health-timeout SECONDS  how long to wait for https://NAME/health (default 600)
  --uninstall               stop and remove Docxy and its cache (keeps the certificates)
  --purge                   with --uninstall: also the certificates, .env, the image and a
                            fetched --dir (never a clone)
  --dry-run                 print every change, make none
  --yes                     never ask (unattended); missing settings are then errors
  --root DIR                take every path under DIR (default /), for tests
  -h, --help                this text
EOF
}

say() { printf '%s\n' "$*"; }
# Temp files of a step under way, removed on exit however the run ends (Ctrl-C included).
SCRATCH=()
STEP=""
step() {
  STEP="$*"
  printf '\n== %s\n' "$*"
}
warn() { printf '%s: %s\n' "$PROG" "$*" >&2; }
# die MESSAGE [STATUS]: stop, saying why. A failure die did not report (a command that failed
# under `set -e`) gets a word from on_exit instead.
SAID_WHY=0
# Left to do by hand whatever else happens (said again by on_exit should a later command fail).
STILL_TO_DO=""
die() {
  warn "$1"
  SAID_WHY=1
  exit "${2:-1}"
}

DOMAIN=""
EMAIL=""
# Given, even empty: an empty --email or --base-image drops the .env's (optional settings).
EMAIL_GIVEN=0
BASE_IMAGE_GIVEN=0
CACHE_SIZE=""
UPSTREAM_USER=""
BASE_IMAGE=""
UPSTREAM_PASSWORD="${DOCXY_UPSTREAM_PASSWORD:-}"
PUBLIC_IPS=()
DNS_SERVER=""
DNS_PORT=""
SKIP_DNS=0
DOCKER_REPO=0
DIR=""
UPDATE=0
LOCAL_DOCKER=0
HEALTH_TIMEOUT=600
UNINSTALL=0
PURGE=0
DRY_RUN=0
YES=0
ROOT=/
CHANGES=0
COMPOSE=()

parse_args() {
  while (($#)); do
    case "$1" in
      --domain | --email | --cache-size | --upstream-user | --public-ip | --dns-server | \
        --dns-port | --dir | --health-timeout | --root | --source-url | --base-image)
        (($# >= 2)) || die "$1 needs a value" 2
        ;;
    esac
    case "$1" in
      --domain) DOMAIN="$2"; shift ;;
      --email) EMAIL="$2"; EMAIL_GIVEN=1; shift ;;
      --cache-size) CACHE_SIZE="$2"; shift ;;
      --upstream-user) UPSTREAM_USER="$2"; shift ;;
      --base-image) BASE_IMAGE="$2"; BASE_IMAGE_GIVEN=1; shift ;;
      --public-ip) PUBLIC_IPS+=("$2"); shift ;;
      --dns-server) DNS_SERVER="$2"; shift ;;
      --dns-port) DNS_PORT="$2"; shift ;;
      --skip-dns-check) SKIP_DNS=1 ;;
      --docker-repo) DOCKER_REPO=1 ;;
      --dir) DIR="$2"; shift ;;
      --source-url) SOURCE_URL="$2"; shift ;;
      --update) UPDATE=1 ;;
      --configure-local-docker) LOCAL_DOCKER=1 ;;
      --health-timeout) HEALTH_TIMEOUT="$2"; shift ;;
      --uninstall) UNINSTALL=1 ;;
      --purge) PURGE=1 ;;
      --dry-run) DRY_RUN=1 ;;
      --yes | -y) YES=1 ;;
      --root) ROOT="$2"; shift ;;
      -h | --help) usage; exit 0 ;;
      *) usage >&2; die "unknown option: $1" 2 ;;
    esac
    shift
  done
  ROOT="${ROOT%/}"
  # dig's HOST#PORT; HOST:PORT (one colon: no IPv6 address) was taken for a host name, and the
  # run stopped at "Fix the DNS records", which were not the trouble.
  if [[ "$DNS_SERVER" =~ ^[^:#]+:[0-9]*$ ]]; then
    die "--dns-server takes HOST#PORT (as dig does), not HOST:PORT: '$DNS_SERVER'" 2
  fi
  # [IPV6]:PORT, [IPV6]: dig takes the brackets for part of a host name it cannot find.
  if [[ "$DNS_SERVER" == "["* ]]; then
    die "--dns-server takes an IPv6 address without brackets, and HOST#PORT for a port (as dig does): '$DNS_SERVER'" 2
  fi
  if [[ "$DNS_SERVER" == *"#"* ]]; then
    DNS_PORT="${DNS_SERVER#*#}"
    DNS_SERVER="${DNS_SERVER%%#*}"
  fi
  [[ -z "$DNS_PORT" || "$DNS_PORT" =~ ^[0-9]+$ ]] || die "--dns-port must be a number" 2
  [[ "$HEALTH_TIMEOUT" =~ ^[0-9]+$ ]] || die "--health-timeout must be a number of seconds" 2
  ((PURGE && !UNINSTALL)) && die "--purge goes with --uninstall" 2
  return 0
}

under_root() { printf '%s%s' "$ROOT" "$1"; }
have() { command -v "$1" >/dev/null 2>&1; }

# act CMD...: run a command that changes the machine (or, in a dry run, say it would).
act() {
  CHANGES=$((CHANGES + 1))
  if ((DRY_RUN)); then
    say "  would run: $*"
  else
    say "  running: $*"
    "$@"
  fi
}

# apt_get ARGS...: apt-get through act, with no questions, waiting up to 5 minutes for the
# package locks: on a VPS just booted, apt-daily and unattended-upgrades often hold them, and
# apt-get would stop the install at once ("Could not get lock ..."). DPkg::Lock::Timeout makes
# apt-get wait for dpkg's lock; `update` takes the lists' lock, which it never waits for, so an
# update refused for it is tried again every 5 s. A package upgraded over a configuration file
# edited here (containerd's, /etc/default/docker) keeps the file as edited, where dpkg would
# ask: DEBIAN_FRONTEND does not answer that question, and piped into bash there is no one to.
APT_OPTIONS=(-o DPkg::Lock::Timeout=300 -o Dpkg::Options::=--force-confdef
  -o Dpkg::Options::=--force-confold)
apt_get() {
  local tries=60 log status rc
  if [[ "$1" != update ]] || ((DRY_RUN)); then
    act env DEBIAN_FRONTEND=noninteractive apt-get "${APT_OPTIONS[@]}" "$@"
    return
  fi
  CHANGES=$((CHANGES + 1))
  say "  running: apt-get ${APT_OPTIONS[*]} $*"
  log="$(mktemp)" status="$(mktemp)"
  SCRATCH+=("$log" "$status")
  while :; do
    : >"$status"
    # Shown as it runs (a slow mirror takes minutes), but for apt's complaints about the lock,
    # which the loop answers; in English whatever the host's language: its words are looked for.
    { env LC_ALL=C DEBIAN_FRONTEND=noninteractive apt-get "${APT_OPTIONS[@]}" "$@" 2>&1 \
      || echo "$?" >"$status"; } | tee "$log" \
      | grep --line-buffered -v -e 'Could not get lock' -e 'Unable to lock' || true
    rc="$(cat "$status")"
    rc="${rc:-0}"
    if ((rc != 0)) && grep -q "Could not get lock" "$log" && ((--tries > 0)); then
      ((tries % 12 == 11)) && say "  waiting for apt's lock (another apt-get is running)"
      sleep 5
      continue
    fi
    # A failure for the lock, once the waiting is over: its words were not shown yet.
    ((rc == 0)) || grep -e 'Could not get lock' -e 'Unable to lock' "$log" || true
    rm -f -- "$log" "$status"
    return "$rc"
  done
}

# --- checks -----------------------------------------------------------------------------------

check_root() {
  [[ "$(id -u)" == 0 ]] && return 0
  ((DRY_RUN)) && { say "Not root: fine for a dry run, but the real run needs sudo."; return 0; }
  die "run as root: sudo bash $PROG ... (or try --dry-run first)"
}

os_field() {
  local file line
  file="$(under_root /etc/os-release)"
  [[ -r "$file" ]] || return 0
  line="$(grep -E "^$1=" -- "$file" | head -n 1)" || true
  line="${line#*=}"
  # os-release(5) values are shell strings: "double" or 'single' quoted, or bare.
  if [[ "$line" == \"*\" || "$line" == \'*\' ]] && ((${#line} >= 2)); then
    line="${line:1:${#line}-2}"
  fi
  printf '%s' "$line"
}

# os_name: the OS as os-release names it for people. PRETTY_NAME is optional there (its
# default is "Linux"): else NAME and VERSION (or VERSION_ID), else ID and VERSION_ID.
os_name() {
  local name version
  name="$(os_field PRETTY_NAME)"
  if [[ -z "$name" ]]; then
    name="$(os_field NAME)"
    version="$(os_field VERSION)"
    version="${version:-$(os_field VERSION_ID)}"
    name="${name:-$(os_field ID)}"
    name="${name:-Linux}${version:+ $version}"
  fi
  printf '%s' "$name"
}

manual_steps() {
  cat <<'EOF'
Manual steps on another system:
  1. Install Docker Engine and Compose: https://docs.docker.com/engine/install/
  2. Get the project (git clone, or unpack its tarball) and cd into it.
  3. Write .env (chmod 600) with DOCXY_DOMAIN=... (DOCXY_EMAIL=... optional, DOCXY_CACHE_MAX_SIZE=20G,
     COMPOSE_PROJECT_NAME=docxy)
  4. docker compose up -d --build   and check   curl https://DOMAIN/health
EOF
}

OS_ID=""
OS_CODENAME=""
ARCH=""

check_platform() {
  local id like machine
  # Ubuntu Server's docker snap is strictly confined: it reads no file outside the home
  # directories (this project's compose.yaml) and ignores /etc/docker/daemon.json. Refused
  # here, before the checks install anything (dnsutils, curl).
  if have snap && snap list docker >/dev/null 2>&1; then
    die "Docker here is the snap, which cannot run this stack: it reads no file outside the home directories (such as this project's compose.yaml) and ignores /etc/docker/daemon.json. Remove it (sudo snap remove docker: its images and containers go with it), then run this again: it installs the distribution's docker.io (or Docker's own with --docker-repo)"
  fi
  id="$(os_field ID)"
  like="$(os_field ID_LIKE)"
  OS_CODENAME="$(os_field VERSION_CODENAME)"
  case "$id" in
    debian | ubuntu) OS_ID="$id" ;;
    *)
      case " $like " in
        *" ubuntu "*) OS_ID=ubuntu ;;
        *" debian "*) OS_ID=debian ;;
        *)
          manual_steps >&2
          die "this script supports Debian and Ubuntu (and their derivatives); found '${id:-unknown}'"
          ;;
      esac
      say "OS: $id, a $OS_ID derivative"
      ;;
  esac
  [[ "$id" == "$OS_ID" ]] && say "OS: $(os_name)"
  # Docker's repository knows Ubuntu's releases, not a derivative's own (Mint's "wilma").
  if [[ "$OS_ID" == ubuntu && -n "$(os_field UBUNTU_CODENAME)" ]]; then
    OS_CODENAME="$(os_field UBUNTU_CODENAME)"
  fi
  machine="$(uname -m)"
  case "$machine" in
    x86_64 | amd64) ARCH=amd64 ;;
    aarch64 | arm64) ARCH=arm64 ;;
    *)
      manual_steps >&2
      die "the Docxy image is built for amd64 and arm64; this machine is $machine"
      ;;
  esac
  say "Architecture: $ARCH"
}

stack_running() {
  have docker || return 1
  [[ -n "$(docker ps -q --filter "label=com.docker.compose.project=$PROJECT" --filter status=running 2>/dev/null)" ]]
}

# docker_refuses_us: a dry run without root, and the docker CLI gets no answer (dockerd refuses
# a user outside the docker group): Docxy's containers cannot be seen, whether there or not.
docker_refuses_us() {
  ((DRY_RUN)) && [[ "$(id -u)" != 0 ]] && have docker && ! docker info >/dev/null 2>&1
}

# The host ports the stack takes, as .env moves them (check_ports): compose.yaml publishes
# ${DOCXY_HTTP_PORT:-80} and ${DOCXY_HTTPS_PORT:-443} (PORT or ADDRESS:PORT), and the admin
# listener on 127.0.0.1:${DOCXY_ADMIN_PORT:-9180}; compose.host.yaml listens on
# DOCXY_SERVER_LISTEN and DOCXY_SERVER_TLS_LISTEN ([::]:80, [::]:443 by default) and
# DOCXY_SERVER_ADMIN_LISTEN (127.0.0.1:9180; empty: off).
PORT_NAMES=()     # the .env setting that moves each
PORT_ADDRESSES=() # its address, without brackets; empty: every address
PORT_NUMBERS=()
PORT_LABELS=() # 443, or 127.0.0.1:8443 where an address narrows it

# published NAME DEFAULT: where the stack takes the port .env's NAME gives (DEFAULT without
# one) into PUBLISHED_ADDRESS (no brackets; empty for none) and PUBLISHED_PORT; fails on a
# value that does not end in a port.
PUBLISHED_ADDRESS=""
PUBLISHED_PORT=""
published() {
  local value address=""
  value="$(env_value "$1")"
  value="${value:-$2}"
  if [[ "$value" == *:* ]]; then
    address="${value%:*}"
    value="${value##*:}"
  fi
  address="${address#[}"
  address="${address%]}"
  [[ "$value" =~ ^[0-9]{1,5}$ ]] && ((10#$value >= 1 && 10#$value <= 65535)) || return 1
  PUBLISHED_ADDRESS="$address"
  PUBLISHED_PORT=$((10#$value))
}

# any_address ADDRESS: ADDRESS is every one of this host's (a wildcard, or none given).
any_address() { [[ -z "$1" || "$1" == "*" || "$1" == :: || "$1" == 0.0.0.0 ]]; }

# host_networking_chosen: the stack will run from compose.host.yaml (choose_network decides,
# settle_network says why).
host_networking_chosen() {
  choose_network
  [[ "$COMPOSE_YAML" == "$HOST_FILE" ]]
}

# add_port NAME: PUBLISHED_ADDRESS and PUBLISHED_PORT (published's) as a port the stack takes,
# moved by .env's NAME.
add_port() {
  local label="$PUBLISHED_PORT"
  if ! any_address "$PUBLISHED_ADDRESS"; then
    case "$PUBLISHED_ADDRESS" in
      *:*) label="[$PUBLISHED_ADDRESS]:$PUBLISHED_PORT" ;;
      *) label="$PUBLISHED_ADDRESS:$PUBLISHED_PORT" ;;
    esac
  fi
  PORT_NAMES+=("$1")
  PORT_ADDRESSES+=("$PUBLISHED_ADDRESS")
  PORT_NUMBERS+=("$PUBLISHED_PORT")
  PORT_LABELS+=("$label")
}

# stack_ports: the ports the stack will take, into PORT_* (plain HTTP, HTTPS, admin: in that
# order); a setting that names no port is said and left unchecked.
stack_ports() {
  local names=(DOCXY_HTTP_PORT DOCXY_HTTPS_PORT) defaults=(80 443) i value
  if host_networking_chosen; then
    names=(DOCXY_SERVER_LISTEN DOCXY_SERVER_TLS_LISTEN)
    defaults=("[::]:80" "[::]:443")
  fi
  PORT_NAMES=() PORT_ADDRESSES=() PORT_NUMBERS=() PORT_LABELS=()
  for i in 0 1; do
    if ! published "${names[i]}" "${defaults[i]}"; then
      say "${names[i]} in $ENV_FILE does not end in a port: that port is not checked"
      continue
    fi
    add_port "${names[i]}"
  done
  # The admin listener (/metrics, /status), on loopback. Host networking: the mirror binds
  # DOCXY_SERVER_ADMIN_LISTEN itself (`-`: empty turns it off). compose.yaml: Docker publishes
  # 127.0.0.1:${DOCXY_ADMIN_PORT:-9180} whatever the container listens on.
  if host_networking_chosen; then
    if env_sets DOCXY_SERVER_ADMIN_LISTEN && [[ -z "$(env_value DOCXY_SERVER_ADMIN_LISTEN)" ]]; then
      return 0
    elif published DOCXY_SERVER_ADMIN_LISTEN 127.0.0.1:9180; then
      add_port DOCXY_SERVER_ADMIN_LISTEN
    else
      say "DOCXY_SERVER_ADMIN_LISTEN in $ENV_FILE does not end in a port: that port is not checked"
    fi
    return 0
  fi
  value="$(env_value DOCXY_ADMIN_PORT)"
  if [[ "$value" == *:* ]]; then
    die "DOCXY_ADMIN_PORT=$value in $ENV_FILE: compose.yaml publishes the admin listener on 127.0.0.1:PORT, so it takes a port only (such as 9181), not ADDRESS:PORT: mend it there" 2
  elif published DOCXY_ADMIN_PORT 9180; then
    PUBLISHED_ADDRESS=127.0.0.1
    add_port DOCXY_ADMIN_PORT
  else
    say "DOCXY_ADMIN_PORT in $ENV_FILE is not a port (compose.yaml publishes 127.0.0.1:PORT): that port is not checked"
  fi
}

# plain_port NAME: NAME is the setting of the plain-HTTP port (not HTTPS's).
plain_port() { [[ "$1" == DOCXY_HTTP_PORT || "$1" == DOCXY_SERVER_LISTEN ]]; }

# admin_port NAME: NAME is the setting of the admin listener's port.
admin_port() { [[ "$1" == DOCXY_ADMIN_PORT || "$1" == DOCXY_SERVER_ADMIN_LISTEN ]]; }

# port_said I: the port PORT_LABELS[I] as a message says it: "port 443", "127.0.0.1:8443".
port_said() {
  [[ "${PORT_LABELS[$1]}" == *:* ]] || printf 'port '
  printf '%s' "${PORT_LABELS[$1]}"
}

# ports_said [I...]: the ports PORT_LABELS[I] (all of them without an I) as a message starts
# with them: "Ports 80 and 443", "Port 127.0.0.1:8443".
ports_said() {
  local joined="" i n=0
  (($#)) || set -- "${!PORT_LABELS[@]}"
  for i in "$@"; do
    n=$((n + 1))
    if ((n == 1)); then
      joined="${PORT_LABELS[i]}"
    elif ((n == $#)); then
      joined+=" and ${PORT_LABELS[i]}"
    else
      joined+=", ${PORT_LABELS[i]}"
    fi
  done
  (($# == 1)) && printf 'Port %s' "$joined" || printf 'Ports %s' "$joined"
}

# unmapped ADDRESS: an IPv4-mapped IPv6 address (::ffff:127.0.0.1, as ss shows an IPv4 bind
# made through an IPv6 socket) as the IPv4 address it is; any other as given.
unmapped() {
  local address="$1"
  if [[ "${address,,}" =~ ^::ffff:([0-9]+\.[0-9]+\.[0-9]+\.[0-9]+)$ ]]; then
    address="${BASH_REMATCH[1]}"
  fi
  printf '%s' "$address"
}

# clashes OURS THEIRS: a listener on address THEIRS keeps the stack from taking the same port
# on OURS (addresses without brackets; empty: every address, as Docker publishes a bare port;
# an IPv4-mapped one, ::ffff:a.b.c.d, as a.b.c.d). ss shows a dual-stack IPv6 wildcard as *:
# it takes the port on every address; [::] is a v6only one, every IPv6 address only; 0.0.0.0
# every IPv4 address.
clashes() {
  local ours theirs
  ours="$(unmapped "$1")"
  theirs="$(unmapped "$2")"
  # The mirror binds a host name with an IPv4 socket (docxy/http/server.py, as hypercorn), so
  # localhost is 127.0.0.1 there; ss shows addresses only.
  ! local_name "$ours" || ours=127.0.0.1
  [[ -z "$ours" || "$ours" == "*" || "$ours" == :: || "$theirs" == "*" ]] && return 0
  case "$theirs" in
    ::) [[ "$ours" == *:* ]] ;;
    0.0.0.0) [[ "$ours" != *:* ]] ;;
    *) [[ "$ours" == 0.0.0.0 && "$theirs" != *:* ]] || [[ "$theirs" == "$ours" ]] ;;
  esac
}

# ports_unchecked WHY: the check could not be made; say so, and how to look by hand.
ports_unchecked() {
  local i tcp="" grep=""
  for i in "${!PORT_NUMBERS[@]}"; do
    tcp+=" -iTCP:${PORT_NUMBERS[i]}"
    grep+="${grep:+|}${PORT_NUMBERS[i]}"
  done
  say "$(ports_said): not checked ($1)"
  say "  check by hand that nothing listens there: sudo lsof -nP$tcp -sTCP:LISTEN"
  say "  (or: sudo netstat -ltnp | grep -E ':($grep) '); the mirror cannot start while they are taken"
}

# local_name ADDRESS: ADDRESS is the name localhost (any case, a trailing dot or not), which
# RFC 6761 keeps for loopback whatever /etc/hosts says. No other name is judged here: it may
# resolve to anything.
local_name() {
  local name="${1,,}"
  [[ "${name%.}" == localhost ]]
}

# loopback ADDRESS: ADDRESS is one of this host's loopback addresses (127.*, ::1, localhost),
# which no other host reaches.
loopback() {
  local address
  address="$(unmapped "$1")"
  [[ "$address" == 127.* || "$address" == ::1 ]] || local_name "$address"
}

# http01_reachable: with the mirror's plain HTTP off port 80, or on port 80 of a loopback
# address only, Let's Encrypt's HTTP-01 check (port 80 of the domain's addresses) reaches it only
# through something that forwards it there: said, not refused (a proxy on port 80 may do just
# that). Port 80 of a named address is taken to be the domain's.
http01_reachable() {
  local value
  [[ -n "$DOMAIN" ]] && plain_port "${PORT_NAMES[0]:-}" || return 0
  if ((PORT_NUMBERS[0] == 80)) && ! loopback "${PORT_ADDRESSES[0]}"; then return 0; fi
  value="$(env_value "${PORT_NAMES[0]}")"
  warn "${PORT_NAMES[0]}=$value in $ENV_FILE: the mirror's plain HTTP is not on port 80 of this"
  warn "  host's public addresses, where Let's Encrypt's HTTP-01 check asks for $DOMAIN: the"
  warn "  certificate can be neither issued nor renewed unless what listens on port 80 forwards"
  warn "  /.well-known/acme-challenge/ to $(port_said 0)"
}

check_ports() {
  local listeners error line fields address port i taken=() held="" what="" moves="" it=it verb
  stack_ports
  http01_reachable
  ((${#PORT_NUMBERS[@]})) || return 0
  if ! have ss; then
    ports_unchecked "no ss here; apt-get install iproute2"
    return
  fi
  local filter=""
  for port in "${PORT_NUMBERS[@]}"; do filter+="${filter:+ or }sport = :$port"; done
  error="$(mktemp)"
  # -H (no header) is refused by an older ss, whose lines are read the older way (below); its
  # header line is passed over.
  local old=0
  if ! listeners="$(ss -Hltnp "( $filter )" 2>/dev/null)"; then
    old=1
    if ! listeners="$(ss -ltnp "( $filter )" 2>"$error")"; then
      ports_unchecked "ss failed: $(head -n 1 -- "$error")"
      rm -f -- "$error"
      return
    fi
  fi
  rm -f -- "$error"
  # An IPv6 address without brackets is the older way too.
  while IFS= read -r line; do
    read -r -a fields <<<"$line"
    ((${#fields[@]} >= 4)) || continue
    [[ "${fields[3]}" != *:*:* || "${fields[3]}" == \[* ]] || old=1
  done <<<"$listeners"
  # Which listener holds which of the ports (ss prints ADDRESS:PORT fourth, [v6]:PORT, and an
  # interface as ADDRESS%IF; * for a dual-stack IPv6 wildcard). The older way puts no brackets
  # round an IPv6 address, prints the IPv4 wildcard as *, and every IPv6 socket on the
  # wildcard as :::PORT, dual-stack (Linux's default, which holds the port on IPv4 too) or
  # v6only alike: taken as dual-stack.
  while IFS= read -r line; do
    read -r -a fields <<<"$line"
    ((${#fields[@]} >= 4)) || continue
    [[ "${fields[0]}" != State ]] || continue
    port="${fields[3]##*:}"
    address="${fields[3]%:*}"
    address="${address%\%*}"
    if ((old)); then
      case "$address" in
        "*") address=0.0.0.0 ;;
        ::) address="*" ;;
      esac
    fi
    address="${address#[}"
    address="${address%]}"
    for i in "${!PORT_NUMBERS[@]}"; do
      if [[ "$port" == "${PORT_NUMBERS[i]}" ]] && clashes "${PORT_ADDRESSES[i]}" "$address"; then
        held+="$line"$'\n'
        [[ " ${taken[*]} " == *" $i "* ]] || taken+=("$i")
      fi
    done
  done <<<"$listeners"
  if ((${#taken[@]} == 0)); then
    say "$(ports_said): free"
  elif stack_running; then
    say "$(ports_said "${taken[@]}"): already Docxy's"
  elif docker_refuses_us; then
    ((${#taken[@]} == 1)) && verb=is || verb=are
    say "$(ports_said "${taken[@]}") $verb in use, by Docxy or not: docker does not answer this"
    say "user (not root), so this dry run cannot tell; with sudo it can:"
    printf '%s' "$held"
  else
    for i in "${taken[@]}"; do
      what+="${what:+ and }$(port_said "$i")"
      if admin_port "${PORT_NAMES[i]}"; then
        what+=" (the admin listener: /metrics, /status)"
      elif plain_port "${PORT_NAMES[i]}" && ((PORT_NUMBERS[i] == 80)); then
        what+=" (plain HTTP, where Let's Encrypt checks the domain)"
      elif plain_port "${PORT_NAMES[i]}"; then
        what+=" (plain HTTP)"
      else
        what+=" (clients' HTTPS)"
      fi
      moves+="${moves:+ or }${PORT_NAMES[i]}"
    done
    say "In use:"
    printf '%s' "$held"
    ((${#taken[@]} == 1)) || it=them
    die "free $what, or move the mirror off $it with $moves in $ENV_FILE, then run this again"
  fi
}

# size_bytes 1.5G -> 1610612736: a size settle_settings took, as the mirror's parse_size reads
# it (binary units, a fraction allowed, what is left of a byte dropped). "%.0f": mawk's "%d"
# stops at 2^31.
size_bytes() {
  local number="${1%%[KkMmGgTtBb]*}" power=0
  case "${1:${#number}:1}" in
    [Kk]) power=1 ;;
    [Mm]) power=2 ;;
    [Gg]) power=3 ;;
    [Tt]) power=4 ;;
  esac
  awk -v number="$number" -v power="$power" 'BEGIN { printf "%.0f", int(number * 1024 ^ power) }'
}

# size_kib 20G -> 20971520
size_kib() {
  local bytes
  bytes="$(size_bytes "$1")"
  printf '%s' $((bytes / 1024))
}

# cache_volume_kib: what Docxy's cache volume holds already (0 without one). On a rerun or an
# --update that room is the cache's own: it is not needed a second time.
cache_volume_kib() {
  local mountpoint="" used=""
  if have docker; then
    mountpoint="$(docker volume inspect --format '{{.Mountpoint}}' "${PROJECT}_cache" 2>/dev/null)" || true
  fi
  if [[ -n "$mountpoint" && -d "$(under_root "$mountpoint")" ]]; then
    used="$(du -sk -- "$(under_root "$mountpoint")" 2>/dev/null | awk '{ print $1 }')" || true
  fi
  [[ "$used" =~ ^[0-9]+$ ]] || used=0
  printf '%s' "$used"
}

check_disk() {
  local dir need avail held held_note="" data_root=""
  # The cache volume lives in dockerd's data-root: on a small VPS often an attached volume
  # (daemon.json "data-root"), not the root disk that holds /var/lib/docker.
  if have docker; then
    data_root="$(docker info --format '{{.DockerRootDir}}' 2>/dev/null)" || data_root=""
    data_root="${data_root%%$'\n'*}"
  fi
  [[ "$data_root" == /* ]] || data_root=/var/lib/docker
  dir="$(under_root "$data_root")"
  while [[ ! -d "$dir" ]]; do dir="$(dirname -- "$dir")"; done
  need=$(($(size_kib "$CACHE_SIZE") + HEADROOM_KIB))
  avail="$(df -Pk -- "$dir" | awk 'NR == 2 { print $4 }')"
  held="$(cache_volume_kib)"
  ((held == 0)) || held_note=" (and $((held / 1024 / 1024)) GiB in the cache already)"
  if ((avail + held < need)); then
    die "only $((avail / 1024 / 1024)) GiB free at $dir$held_note; the cache ($CACHE_SIZE) and the image need $((need / 1024 / 1024)) GiB: free space or pass a smaller --cache-size"
  fi
  say "Disk: $((avail / 1024 / 1024)) GiB free at $dir$held_note, enough for a $CACHE_SIZE cache"
}

# curl asks the address services, fetches the project and Docker's key, and checks /health at
# the end: a minimal image without it gets it (and the CA bundle, only recommended by curl).
need_curl() {
  have curl && return 0
  if ((DRY_RUN)); then
    say "curl: missing; the real run installs curl and ca-certificates"
    return 0
  fi
  apt_get update
  apt_get install -y --no-install-recommends curl ca-certificates
}

# --- DNS check ----------------------------------------------------------------------------------

is_ipv4() { [[ "$1" =~ ^[0-9]{1,3}(\.[0-9]{1,3}){3}$ ]]; }
is_ipv6() { [[ "$1" =~ ^[0-9A-Fa-f:]+$ && "$1" == *:* ]]; }

# ipv6_full ADDRESS: the eight groups written out in lower case, so that two spellings of one
# address compare equal (2001:0db8:0:0::7 and dig's 2001:db8::7).
ipv6_full() {
  local address="${1,,}" head tail group full=""
  local -a groups=() after=()
  head="${address%%::*}"
  [[ -n "$head" ]] && IFS=: read -r -a groups <<<"$head"
  if [[ "$address" == *::* ]]; then
    tail="${address#*::}"
    [[ -n "$tail" ]] && IFS=: read -r -a after <<<"$tail"
    while ((${#groups[@]} + ${#after[@]} < 8)); do groups+=(0); done
    groups+=("${after[@]}")
  fi
  for group in "${groups[@]}"; do full+="$(printf '%04x' "0x${group:-0}"):"; done
  printf '%s' "${full%:}"
}

# How resolve asks: dig, or in a dry run without it (which installs nothing) getent, through
# the system resolver (and /etc/hosts, as getent reads it).
RESOLVE_WITH=dig

# resolve A|AAAA: the domain's records, one per line; fails when the resolver does not answer.
resolve() {
  local args=(+short +time=2 +tries=2) out line rc=0
  if [[ "$RESOLVE_WITH" == getent ]]; then
    # Not found is 2 (no such record); IPv4 is mapped in (::ffff:) where AAAA are asked.
    out="$(getent "$([[ "$1" == A ]] && echo ahostsv4 || echo ahostsv6)" "$DOMAIN" 2>&1)" || rc=$?
    ((rc == 0 || rc == 2)) || return 1
    ((rc == 0)) || out=""
    out="$(awk '!seen[$1]++ { print $1 }' <<<"$out" | grep -iv '^::ffff:' || true)"
  else
    [[ -n "$DNS_SERVER" ]] && args+=("@$DNS_SERVER")
    [[ -n "$DNS_PORT" ]] && args+=(-p "$DNS_PORT")
    out="$(dig "${args[@]}" "$1" "$DOMAIN" 2>&1)" || return 1
  fi
  while IFS= read -r line; do
    if [[ "$1" == A ]] && is_ipv4 "$line"; then say "$line"; fi
    if [[ "$1" == AAAA ]] && is_ipv6 "$line"; then say "$line"; fi
  done <<<"$out"
}

# discover 4|6: this host's public address as seen from outside. Each service is asked; the
# answer counts when at least two agree and none disagrees. Prints nothing when none answers.
discover() {
  local family="$1" services answer answers=() distinct
  if [[ "$family" == 4 ]]; then services="$IPV4_SERVICES"; else services="$IPV6_SERVICES"; fi
  for url in $services; do
    answer="$(curl "-$family" -fsS --max-time 5 "$url" 2>/dev/null | tr -d '[:space:]')" || continue
    if [[ "$family" == 4 ]] && is_ipv4 "$answer"; then answers+=("$answer"); fi
    if [[ "$family" == 6 ]] && is_ipv6 "$answer"; then answers+=("$answer"); fi
  done
  ((${#answers[@]})) || return 0
  distinct="$(printf '%s\n' "${answers[@]}" | sort -u)"
  if [[ "$(printf '%s\n' "$distinct" | wc -l)" -gt 1 ]]; then
    warn "the address services disagree about this host's public IPv$family address:"
    printf '  %s\n' "${answers[@]}" >&2
    undiscovered "pass the right one with --public-ip"
  fi
  if ((${#answers[@]} < 2)); then
    warn "only one service told this host's public IPv$family address ($distinct): not trusted alone"
    undiscovered "pass it with --public-ip if it is right"
  fi
  say "$distinct"
}

# undiscovered ADVICE: discover (in its subshell) could not tell the address: it fails, and
# the run stops with ADVICE unless --skip-dns-check lets it go on without the check.
undiscovered() {
  ((SKIP_DNS)) && exit 1
  die "$1"
}

words() { printf '%s' "$*"; }

contains() {
  local needle="$1" item
  shift
  for item in "$@"; do [[ "$item" == "$needle" ]] && return 0; done
  return 1
}

check_dns() {
  local resolver="${DNS_SERVER:-the system resolver}${DNS_PORT:+ port $DNS_PORT}"
  local records_a=() records_aaaa=() ours4=() ours6=() ip problem=""
  if ! have dig; then
    if ((DRY_RUN)); then
      # A dry run installs nothing: getent asks the system resolver (it cannot ask another).
      local undone="not done in this dry run: no dig here (the real run installs dnsutils for it, then checks)"
      if [[ -n "$DNS_SERVER$DNS_PORT" ]]; then
        say "DNS check: $undone, and getent cannot ask $resolver"
        return 0
      elif ! have getent; then
        say "DNS check: $undone, nor getent"
        return 0
      fi
      say "DNS check: no dig here (the real run installs dnsutils): asking the system resolver through getent"
      RESOLVE_WITH=getent
      resolver="the system resolver through getent, /etc/hosts included"
    else
      apt_get update
      apt_get install -y --no-install-recommends dnsutils
    fi
  fi
  local found_a found_aaaa found4 found6
  if ! found_a="$(resolve A)" || ! found_aaaa="$(resolve AAAA)"; then
    dns_problem "$resolver did not answer for $DOMAIN"
    return 0
  fi
  [[ -n "$found_a" ]] && mapfile -t records_a <<<"$found_a"
  [[ -n "$found_aaaa" ]] && mapfile -t records_aaaa <<<"$found_aaaa"
  if ((${#PUBLIC_IPS[@]})); then
    for ip in "${PUBLIC_IPS[@]}"; do
      if is_ipv4 "$ip"; then
        ours4+=("$ip")
      elif is_ipv6 "$ip"; then
        ours6+=("${ip,,}") # dig prints AAAA records in lower case
      else
        die "--public-ip $ip is not an IP address" 2
      fi
    done
  else
    # Only the families the domain has records for are asked about. discover dies (in its
    # subshell) when the services disagree: stop here too.
    if ((${#records_a[@]})); then
      found4="$(discover 4)" || { unknown_address && return 0; }
      [[ -n "$found4" ]] && ours4=("$found4")
    fi
    if ((${#records_aaaa[@]})); then
      found6="$(discover 6)" || { unknown_address && return 0; }
      [[ -n "$found6" ]] && ours6=("${found6,,}")
    fi
    if ((${#records_a[@]} + ${#records_aaaa[@]})) && ((${#ours4[@]} + ${#ours6[@]} == 0)); then
      ((SKIP_DNS)) || die "could not find this host's public address: pass --public-ip"
      unknown_address
      return 0
    fi
  fi
  if ((${#records_a[@]} + ${#records_aaaa[@]} == 0)); then
    problem="$DOMAIN has no A or AAAA record"
  fi
  for ip in "${records_a[@]}"; do
    contains "$ip" "${ours4[@]}" || problem="$DOMAIN has an A record ($ip) that is not this host"
  done
  local full6=()
  for ip in "${ours6[@]}"; do full6+=("$(ipv6_full "$ip")"); done
  for ip in "${records_aaaa[@]}"; do
    contains "$(ipv6_full "$ip")" "${full6[@]}" ||
      problem="$DOMAIN has an AAAA record ($ip) that is not this host"
  done
  local records ours
  records="$(words "${records_a[@]}" "${records_aaaa[@]}")"
  ours="$(words "${ours4[@]}" "${ours6[@]}")"
  if [[ -n "$problem" ]]; then
    say "DNS ($resolver):"
    say "  $DOMAIN resolves to:       ${records:-nothing}"
    say "  this host's public address: $ours"
    dns_problem "$problem"
  else
    say "DNS: $DOMAIN -> $records, this host ($resolver)"
  fi
}

# unknown_address: this host's public address could not be told. With --skip-dns-check the
# run goes on unchecked; else it stops (discover said why).
unknown_address() {
  if ((SKIP_DNS)); then
    dns_problem "this host's public address could not be told, so $DOMAIN's records were not checked"
    return 0
  fi
  SAID_WHY=1
  exit 1
}

dns_problem() {
  if ((SKIP_DNS)); then
    warn "$1; going on (--skip-dns-check): the certificate will likely not be issued"
  else
    die "$1. Fix the DNS records (Let's Encrypt would fail, and failures count against its rate limits), or pass --skip-dns-check"
  fi
}

# --- networking ---------------------------------------------------------------------------------

# The compose file the stack runs from: compose.yaml (a bridge network, ports published), or on
# a host without IPv4 compose.host.yaml (host networking): in the bridge network the container
# has no IPv6 way out, so it reaches no upstream at all there, and a client reaching the host
# over IPv6 would be seen with the bridge's address (NAT), not its own. The choice is written to
# .env as COMPOSE_FILE, which a `docker compose` run by hand in the project reads too.
COMPOSE_YAML=compose.yaml
HOST_FILE=compose.host.yaml
# The operator's own files that .env's COMPOSE_FILE names beside compose.yaml or
# compose.host.yaml (an override such as the README's compose.secrets.yaml): every compose
# command here reads them after the script's choice, and .env keeps them in COMPOSE_FILE.
COMPOSE_EXTRA=()
COMPOSE_FIRST="" # the first file COMPOSE_FILE names, if it is one of those two
COMPOSE_SEP=":"  # COMPOSE_PATH_SEPARATOR, as compose reads it

# read_compose_file: .env's COMPOSE_FILE, split as compose splits it, into COMPOSE_FIRST and
# COMPOSE_EXTRA (compose.yaml and compose.host.yaml are the script's to place: first).
read_compose_file() {
  local value entry first=1
  COMPOSE_SEP="$(env_value COMPOSE_PATH_SEPARATOR)"
  COMPOSE_SEP="${COMPOSE_SEP:-:}"
  COMPOSE_FIRST=""
  COMPOSE_EXTRA=()
  value="$(env_value COMPOSE_FILE)"
  while [[ -n "$value" ]]; do
    entry="${value%%"$COMPOSE_SEP"*}"
    if [[ "$entry" == "$value" ]]; then value=""; else value="${value#*"$COMPOSE_SEP"}"; fi
    [[ -n "$entry" ]] || continue
    case "${entry#./}" in
      compose.yaml | "$HOST_FILE" | "$DIR/compose.yaml" | "$DIR/$HOST_FILE")
        ((first)) && COMPOSE_FIRST="${entry##*/}"
        ;;
      *) COMPOSE_EXTRA+=("$entry") ;;
    esac
    first=0
  done
}

# compose_file_value: the COMPOSE_FILE this run uses, the script's file first.
compose_file_value() {
  local value="$COMPOSE_YAML" extra
  for extra in "${COMPOSE_EXTRA[@]}"; do value+="$COMPOSE_SEP$extra"; done
  printf '%s' "$value"
}

# compose_file_line: compose_file_value as .env writes it. Both .env parsers (Compose 1.29's
# python-dotenv, v2's compose-go) cut an unquoted value at ` #` (older v2: at any #) and strip
# its ends, and v2 expands `$NAME` in it: a value with anything beyond these plain characters
# is single-quoted, which both take as written (check_compose_file_quoting refuses what not).
compose_file_line() {
  local value
  value="$(compose_file_value)"
  if [[ "$value" =~ ^[A-Za-z0-9._/:@+,=-]*$ ]]; then
    printf 'COMPOSE_FILE=%s' "$value"
  else
    printf "COMPOSE_FILE='%s'" "$value"
  fi
}

# check_compose_file_quoting: a COMPOSE_FILE that must be quoted cannot hold a ' (it would end
# the quotes), a \ (1.29 reads an escape in single quotes, v2 does not), a newline, or `${`
# (1.29 puts a variable's value in its place, however quoted).
check_compose_file_quoting() {
  local value
  compose_file_ours || return 0
  value="$(compose_file_value)"
  [[ ! "$value" =~ ^[A-Za-z0-9._/:@+,=-]*$ ]] || return 0
  [[ "$value" != *["'\\"]* && "$value" != *$'\n'* && "$value" != *"\${"* ]] ||
    die "COMPOSE_FILE in $ENV_FILE: $value cannot be written to .env for Compose 1.29 and v2 alike (quoted for its spaces, # or \$, it may not hold a single quote, a backslash or \${): rename the file, then run this again" 2
}

# compose_file_ours: COMPOSE_FILE is written by the script (host networking, or files of the
# operator's to keep after compose.yaml); else a line of theirs is left as it is.
compose_file_ours() { [[ "$COMPOSE_YAML" != compose.yaml ]] || ((${#COMPOSE_EXTRA[@]})); }

# compose_path FILE: where compose finds a file COMPOSE_FILE names (relative: in the project).
compose_path() {
  if [[ "$1" == /* ]]; then printf '%s' "$1"; else printf '%s/%s' "$DIR" "$1"; fi
}

# ipv4_less: this host has an IPv6 default route and no IPv4 one (fails when it cannot tell).
ipv4_less() {
  local v4 v6
  have ip || return 1
  v4="$(ip -4 route show default 2>/dev/null)" || return 1
  v6="$(ip -6 route show default 2>/dev/null)" || return 1
  [[ -z "$v4" && -n "$v6" ]]
}

# choose_network: which file the stack runs from, into COMPOSE_YAML, and why, into NETWORK_WHY
# (env: COMPOSE_FILE names compose.host.yaml first; ipv4-less; bridge; unchecked: no `ip`).
# Decided once, at the first ask (check_ports'): the routes are not read again later (a route
# that came up meanwhile had the ports of one file checked and the other file started).
NETWORK_WHY=""
choose_network() {
  [[ -z "$NETWORK_WHY" ]] || return 0
  read_compose_file
  if [[ "$COMPOSE_FIRST" == "$HOST_FILE" ]]; then
    NETWORK_WHY="env"
  elif ipv4_less; then
    NETWORK_WHY=ipv4-less
  elif ! have ip; then
    NETWORK_WHY=unchecked
  else
    NETWORK_WHY=bridge
  fi
  case "$NETWORK_WHY" in
    env | ipv4-less) COMPOSE_YAML="$HOST_FILE" ;;
    *) COMPOSE_YAML=compose.yaml ;;
  esac
}

settle_network() {
  choose_network
  case "$NETWORK_WHY" in
    env) say "Network: host networking ($HOST_FILE), as $ENV_FILE says (COMPOSE_FILE)" ;;
    ipv4-less)
      say "Network: this host has no IPv4 route, only IPv6: host networking ($HOST_FILE), as"
      say "  compose.yaml's bridge network would give the container no way out and hide IPv6"
      say "  clients' addresses behind NAT. The upstream must be reachable over IPv6 (or NAT64)."
      ;;
    unchecked)
      say "Network: not checked (no ip here; apt-get install iproute2): compose.yaml's bridge"
      say "  network, which needs IPv4; on an IPv6-only host use $HOST_FILE (see the README)"
      ;;
  esac
  [[ "$COMPOSE_YAML" != "$HOST_FILE" ]] || host_firewall
  ((${#COMPOSE_EXTRA[@]} == 0)) ||
    say "Compose files: $(compose_file_value) (yours after the first, from COMPOSE_FILE in $ENV_FILE)"
  check_compose_file_quoting
  host_file_present
}

# host_firewall: ports published by Docker (compose.yaml) pass its own rules, ahead of ufw's;
# the host's own ports (host networking) do not, and an active ufw would drop clients and Let's
# Encrypt's check on port 80 (the health wait would time out with no word of the cause). The
# ports named are those the mirror takes (check_ports' PORT_*: DOCXY_SERVER_LISTEN and
# DOCXY_SERVER_TLS_LISTEN), less those on loopback only (ufw passes loopback, and no other
# host reaches them); port 80 always, as HTTP-01 comes there whatever listens on it (with the
# plain port elsewhere, what forwards it: http01_reachable). Said, not changed: the firewall is
# the operator's. (`ufw status` answers root only.)
host_firewall() {
  have ufw && ufw status 2>/dev/null | grep -q '^Status: active' || return 0
  local i ports=() commands="" on_80=0
  for i in "${!PORT_NUMBERS[@]}"; do
    if admin_port "${PORT_NAMES[i]}" || loopback "${PORT_ADDRESSES[i]}"; then continue; fi
    ((PORT_NUMBERS[i] == 80)) && on_80=1
    [[ " ${ports[*]} " == *" ${PORT_NUMBERS[i]} "* ]] || ports+=("${PORT_NUMBERS[i]}")
  done
  ((on_80)) || ports=(80 "${ports[@]}")
  for i in "${ports[@]}"; do commands+="${commands:+ && }sudo ufw allow $i/tcp"; done
  warn "ufw is active: with host networking it filters the mirror's ports, and Let's Encrypt"
  warn "  must reach port 80. Unless its rules allow them: $commands"
  ((on_80)) ||
    warn "  (port 80 for Let's Encrypt's HTTP-01 check, which reaches the mirror there only through what forwards it)"
}

# host_file_present: the project at hand (a clone, a copy fetched before) has compose.host.yaml
# where host networking is chosen; else nothing is started that could not work. A project not
# there yet, or fetched again by --update, is checked once fetched.
host_file_present() {
  local extra
  if [[ -f "$DIR/compose.yaml" ]]; then
    for extra in "${COMPOSE_EXTRA[@]}"; do
      [[ -e "$(compose_path "$extra")" ]] ||
        die "COMPOSE_FILE in $ENV_FILE names $extra, which is not in $DIR: put it back, or take it out of COMPOSE_FILE, then run this again"
    done
  fi
  [[ "$COMPOSE_YAML" == "$HOST_FILE" && -f "$DIR/compose.yaml" && ! -f "$DIR/$HOST_FILE" ]] ||
    return 0
  [[ "$DIR" != "$CLONE" ]] && ((UPDATE)) && return 0
  local how="run this again with --update to fetch the project anew"
  [[ "$DIR" == "$CLONE" ]] && how="update the clone (git pull), then run this again"
  die "host networking needs $DIR/$HOST_FILE, which this copy of the project predates: $how"
}

# --- settings and .env --------------------------------------------------------------------------

# env_assignment KEY: a regex for the lines of .env that set KEY, as docker compose reads them
# (Compose 1.29's python-dotenv and v2's compose-go agree): `KEY=...`, `export KEY=...`, with
# spaces before the key and around the `=`.
env_assignment() { printf '^[[:space:]]*(export[[:space:]]+)?%s[[:space:]]*=' "$1"; }

# env_value KEY: KEY's value in .env as docker compose reads it; the last line setting it wins.
# 'single quotes' are taken as written; in "double quotes" \" and \\ stand for " and \; an
# unquoted value ends before a ` #` comment, and surrounding spaces are not part of it.
env_value() {
  local line value out="" i char
  [[ -r "$ENV_FILE" ]] || return 0
  line="$(grep -E "$(env_assignment "$1")" -- "$ENV_FILE" | tail -n 1)" || true
  [[ -n "$line" ]] || return 0
  value="${line#*=}"
  value="${value%$'\r'}"
  value="${value#"${value%%[![:space:]]*}"}"
  case "$value" in
    \'*)
      value="${value#\'}"
      out="${value%%\'*}"
      ;;
    \"*)
      for ((i = 1; i < ${#value}; i++)); do
        char="${value:i:1}"
        if [[ "$char" == '"' ]]; then
          break
        elif [[ "$char" == "\\" && ("${value:i+1:1}" == '"' || "${value:i+1:1}" == "\\") ]]; then
          i=$((i + 1))
          char="${value:i:1}"
        fi
        out+="$char"
      done
      ;;
    *)
      out="${value%%[[:space:]]#*}"
      out="${out%"${out##*[![:space:]]}"}"
      ;;
  esac
  printf '%s' "$out"
}

# env_sets KEY: .env has a line setting KEY (perhaps to nothing).
env_sets() { [[ -r "$ENV_FILE" ]] && grep -qE "$(env_assignment "$1")" -- "$ENV_FILE"; }

PROMPT_FD=""

# can_prompt: is there a terminal (or DOCXY_PROMPT_INPUT) to ask on? Opened once, as fd 3.
can_prompt() {
  ((!YES)) || return 1
  [[ -n "$PROMPT_FD" ]] && return 0
  { exec 3<"$PROMPT_INPUT"; } 2>/dev/null || return 1
  PROMPT_FD=3
}

# ask VAR "question" [secret]: read an answer from the terminal into VAR.
ask() {
  local answer=""
  printf '%s ' "$2" >&2
  if [[ "${3:-}" == secret ]]; then
    IFS= read -rs -u 3 answer || true
    printf '\n' >&2
  else
    IFS= read -r -u 3 answer || true
    # A name or address pasted with a space, tab or CR around it (a password is taken as typed).
    answer="${answer#"${answer%%[![:space:]]*}"}"
    answer="${answer%"${answer##*[![:space:]]}"}"
  fi
  printf -v "$1" '%s' "$answer"
}

settle_settings() {
  DOMAIN="${DOMAIN:-$(env_value DOCXY_DOMAIN)}"
  ((EMAIL_GIVEN)) || EMAIL="$(env_value DOCXY_EMAIL)"
  local email_in_env=0 size_in_env=0
  [[ -z "$EMAIL" ]] || ((EMAIL_GIVEN)) || email_in_env=1
  if [[ -z "$CACHE_SIZE" ]]; then
    CACHE_SIZE="$(env_value DOCXY_CACHE_MAX_SIZE)"
    [[ -z "$CACHE_SIZE" ]] || size_in_env=1
  fi
  CACHE_SIZE="${CACHE_SIZE:-20G}"
  UPSTREAM_USER="${UPSTREAM_USER:-$(env_value DOCXY_UPSTREAM_USERNAME)}"
  ((BASE_IMAGE_GIVEN)) || BASE_IMAGE="$(env_value DOCXY_BASE_IMAGE)"
  [[ -z "$BASE_IMAGE" || "$BASE_IMAGE" =~ ^[A-Za-z0-9][A-Za-z0-9._/:@-]*$ ]] ||
    die "--base-image '$BASE_IMAGE' is not an image reference" 2
  if [[ -z "$DOMAIN" ]] && can_prompt; then ask DOMAIN "The mirror's domain name (e.g. mirror.example.com):"; fi
  # Optional: asked once; an empty DOCXY_EMAIL= in .env is the answer "none".
  if ((!EMAIL_GIVEN)) && [[ -z "$EMAIL" ]] && ! env_sets DOCXY_EMAIL && can_prompt; then
    ask EMAIL "Email for the Let's Encrypt account (optional; Enter for none):"
  fi
  [[ -n "$DOMAIN" ]] || die "--domain is required" 2
  DOMAIN="$(printf '%s' "$DOMAIN" | tr '[:upper:]' '[:lower:]')"
  [[ "$DOMAIN" =~ ^([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z][a-z0-9-]{0,62}$ ]] ||
    die "--domain '$DOMAIN' is not a DNS name" 2
  # An apostrophe (o'brien@) is written to .env unquoted, as compose reads it; not first, where
  # compose would take it for a quote.
  # As the mirror's certs.email check: no dot first, last or twice in a row, and no label of
  # the domain starting or ending with a hyphen (else every renewal fails on it).
  [[ -z "$EMAIL" || ("$EMAIL" =~ ^[A-Za-z0-9._%+-][A-Za-z0-9._%+\'-]*@[A-Za-z0-9.-]+\.[A-Za-z]{2,}$ &&
    "$EMAIL" != .* && "$EMAIL" != *..* && "$EMAIL" != *.@* && "$EMAIL" != *@.* &&
    "$EMAIL" != *@-* && "$EMAIL" != *-.* && "$EMAIL" != *.-*) ]] ||
    if ((!email_in_env)); then
      die "--email '$EMAIL' is not an email address" 2
    else
      die "DOCXY_EMAIL=$EMAIL in $ENV_FILE is not an email address: mend it there, or pass --email ADDRESS (--email '' for none)" 2
    fi
  # As the mirror reads it (20G, 1.5T, 512MiB, 1TB, 2048B; binary units), above 0 bytes: one
  # set by hand in .env must not stop every later run.
  if [[ ! "$CACHE_SIZE" =~ ^[0-9]+(\.[0-9]+)?([KkMmGgTt]([Ii]?[Bb])?|[Bb])?$ ]] ||
    [[ "$(size_bytes "$CACHE_SIZE")" == 0 ]]; then
    ((size_in_env)) ||
      die "--cache-size '$CACHE_SIZE' is not a size like 20G" 2
    die "DOCXY_CACHE_MAX_SIZE=$CACHE_SIZE in $ENV_FILE is not a size like 20G (or 1.5T, 512MiB): mend it there, or pass --cache-size SIZE" 2
  fi
  # The password may live in a file the .env names (the README's "Secrets in files"): the
  # mirror reads it there, and refuses it given both ways.
  local password_file
  password_file="$(env_value DOCXY_UPSTREAM_PASSWORD_FILE)"
  if [[ -n "$UPSTREAM_USER" && -n "$password_file" ]]; then
    [[ "$UPSTREAM_USER" =~ ^[A-Za-z0-9._@-]+$ ]] || die "--upstream-user '$UPSTREAM_USER' has odd characters" 2
    [[ -z "$UPSTREAM_PASSWORD" ]] ||
      die "$ENV_FILE reads the upstream password from a file (DOCXY_UPSTREAM_PASSWORD_FILE=$password_file), and the mirror refuses a password given as well: put it in that file instead, or take that line out of $ENV_FILE, then run this again" 2
  elif [[ -n "$UPSTREAM_USER" ]]; then
    [[ "$UPSTREAM_USER" =~ ^[A-Za-z0-9._@-]+$ ]] || die "--upstream-user '$UPSTREAM_USER' has odd characters" 2
    # The .env's password is the .env's user's: another --upstream-user needs its own.
    if [[ -z "$UPSTREAM_PASSWORD" && "$UPSTREAM_USER" == "$(env_value DOCXY_UPSTREAM_USERNAME)" ]]; then
      UPSTREAM_PASSWORD="$(env_value DOCXY_UPSTREAM_PASSWORD)"
    fi
    if [[ -z "$UPSTREAM_PASSWORD" ]] && can_prompt; then
      ask UPSTREAM_PASSWORD "Password or access token for $UPSTREAM_USER (not shown):" secret
    fi
    [[ -n "$UPSTREAM_PASSWORD" ]] || die "the password for --upstream-user: set DOCXY_UPSTREAM_PASSWORD (after sudo: sudo DOCXY_UPSTREAM_PASSWORD=... $0) or run interactively" 2
    # Compose 1.29 (Debian 12's) reads a backslash in a single-quoted .env value as an escape,
    # Compose v2 does not: one password would reach the mirror in two spellings.
    [[ "$UPSTREAM_PASSWORD" != *["'\\"]* && "$UPSTREAM_PASSWORD" != *$'\n'* ]] ||
      die "the upstream password cannot contain a single quote, a backslash or a newline (.env quoting)" 2
    # Compose v2 takes a single-quoted value literally, but 1.29 replaces `${NAME}` (and
    # `${NAME:-default}`) by NAME's value in any .env value, quoted or not, with no escape: the
    # mirror would log in with another password. A `$` not followed by `{` is safe in both.
    [[ "$UPSTREAM_PASSWORD" != *"\${"* ]] ||
      die "the upstream password cannot contain '\${': docker-compose 1.29 (Debian 12's) would put a variable's value in its place in .env, whatever the quoting. Choose another password (or an access token)" 2
  fi
}

# The .env: our keys first (render_ours), then any other line the operator added, kept as it
# was (render_theirs). render_ours masked: the password's value is left out (a dry run's view).
render_ours() {
  say "# Written by Docxy's install.sh; read by docker compose (compose.yaml). Mode 600."
  say "DOCXY_DOMAIN=$DOMAIN"
  say "DOCXY_EMAIL=$EMAIL"
  say "DOCXY_CACHE_MAX_SIZE=$CACHE_SIZE"
  [[ -z "$BASE_IMAGE" ]] || say "DOCXY_BASE_IMAGE=$BASE_IMAGE"
  say "COMPOSE_PROJECT_NAME=$PROJECT"
  ! compose_file_ours || say "$(compose_file_line)"
  if [[ -n "$UPSTREAM_USER" ]]; then
    say "DOCXY_UPSTREAM_USERNAME=$UPSTREAM_USER"
    # None where the operator's DOCXY_UPSTREAM_PASSWORD_FILE names its file (settle_settings).
    if [[ -n "$UPSTREAM_PASSWORD" && "${1:-}" == masked ]]; then
      say "DOCXY_UPSTREAM_PASSWORD=(not shown)"
    elif [[ -n "$UPSTREAM_PASSWORD" ]]; then
      say "DOCXY_UPSTREAM_PASSWORD='$UPSTREAM_PASSWORD'"
    fi
  fi
}

render_theirs() {
  if [[ -r "$ENV_FILE" ]]; then
    # Ours in every spelling compose reads (`export`, spaces): a stale one must not stay behind.
    # COMPOSE_FILE is ours where host networking is chosen or it names files of yours (kept in
    # it, after the script's); else one of yours is left as it is.
    local ours="(DOCXY_(DOMAIN|EMAIL|CACHE_MAX_SIZE|BASE_IMAGE|UPSTREAM_USERNAME|UPSTREAM_PASSWORD)|COMPOSE_PROJECT_NAME)"
    ! compose_file_ours || ours="($ours|COMPOSE_FILE)"
    grep -vE -e "^# Written by Docxy" -e "$(env_assignment "$ours")" -- "$ENV_FILE" || true
  fi
}

render_env() {
  render_ours
  render_theirs
}

ENV_CHANGED=0
# Left beside .env from the moment it is rewritten until `compose up` has brought the mirror up
# with it: a run stopped in between (a failed build, a Ctrl-C, an SSH drop) leaves the old
# container running with the old settings, and the next run, finding .env already as asked,
# must bring it up all the same, not call it "already running with these settings".
UP_PENDING=".docxy-up-pending"

# value_in FILE KEY: KEY's value in FILE, read as env_value reads .env.
value_in() {
  local ENV_FILE="$1"
  env_value "$2"
}

# overwritten NEW: says each setting of ours that .env has and NEW changes (an edit by hand the
# command line undoes, or a change asked for: the script cannot tell which), the password's
# value never; fails when there is none.
overwritten() {
  local new="$1" key was now found=1
  [[ -e "$ENV_FILE" ]] || return 1
  for key in DOCXY_DOMAIN DOCXY_EMAIL DOCXY_CACHE_MAX_SIZE DOCXY_BASE_IMAGE \
    DOCXY_UPSTREAM_USERNAME DOCXY_UPSTREAM_PASSWORD COMPOSE_FILE; do
    env_sets "$key" || continue
    [[ "$key" != COMPOSE_FILE ]] || compose_file_ours || continue
    was="$(env_value "$key")"
    now="$(value_in "$new" "$key")"
    [[ "$was" != "$now" ]] || continue
    if [[ "$key" == DOCXY_UPSTREAM_PASSWORD ]]; then
      say "  $key: changed (not shown)"
    else
      say "  $key: ${was:-(empty)} in .env, ${now:-(none)} as asked"
    fi
    found=0
  done
  return "$found"
}

# keep_copy: the .env about to be rewritten, kept beside it (mode 600): .env.bak-TIMESTAMP.
keep_copy() {
  local copy
  copy="$DIR/.env.bak-$(date +%Y%m%d-%H%M%S)"
  [[ ! -e "$copy" ]] || copy="$copy-$$"
  cp -pL -- "$ENV_FILE" "$copy"
  chmod 600 -- "$copy"
  say "  the .env as it was is kept at $copy"
}

write_env() {
  local new
  new="$(mktemp)"
  chmod 600 "$new"
  render_env >"$new"
  if [[ -e "$ENV_FILE" ]] && cmp -s -- "$new" "$ENV_FILE"; then
    rm -f -- "$new"
    if [[ "$(stat -L -c %a -- "$ENV_FILE")" != 600 ]]; then
      act chmod 600 "$ENV_FILE"
    fi
    say "  $ENV_FILE: unchanged"
    return
  fi
  ENV_CHANGED=1
  CHANGES=$((CHANGES + 1))
  # A value in .env (yours, edited by hand, or a first run's) is never replaced unsaid: each is
  # named, and the whole .env kept in a copy.
  local keep=0
  overwritten "$new" && keep=1
  if ((DRY_RUN)); then
    ((keep)) && say "  (the real run keeps the .env as it was in a copy beside it, .env.bak-TIMESTAMP)"
    rm -f -- "$new"
    say "  would write $ENV_FILE (mode 600):"
    # No secret is shown: the password is left out, and so are the operator's own lines, whose
    # keys cannot be told from a multi-line value's continuation (a PEM key's base64 `...=`).
    render_ours masked | sed -e 's/^/    | /'
    local theirs lines=lines
    theirs="$(render_theirs | grep -c . || true)"
    ((theirs != 1)) || lines=line
    ((theirs == 0)) ||
      say "    | (and $theirs $lines of yours, kept as they are; not shown, as they may hold secrets)"
    return
  fi
  # A .env linked in from elsewhere (a config repository): that file is replaced, the link stays.
  local target="$ENV_FILE" staged
  if [[ -L "$ENV_FILE" ]]; then
    target="$(readlink -f -- "$ENV_FILE")" || die "$ENV_FILE is a link that leads nowhere"
  fi
  ((keep)) && keep_copy
  mkdir -p -- "$(dirname -- "$target")"
  staged="$(mktemp "$(dirname -- "$target")/.env.XXXXXX")"
  SCRATCH+=("$staged" "$new") # a failure before the rename leaves no copy (the password in it)
  cat -- "$new" >"$staged"
  rm -f -- "$new"
  : >"$DIR/$UP_PENDING"
  chmod 600 -- "$staged"
  # Root writes it, but .env stays its owner's (a user's clone, run with sudo): the old file's
  # owner, or for a new one the directory's.
  local owner="$target"
  [[ -e "$owner" ]] || owner="$(dirname -- "$target")"
  chown --reference="$owner" -- "$staged" 2>/dev/null || true
  mv -f -- "$staged" "$target"
  if [[ "$target" == "$ENV_FILE" ]]; then
    say "  wrote $ENV_FILE (mode 600)"
  else
    say "  wrote $target (mode 600), which $ENV_FILE links to"
  fi
}

# --- the project --------------------------------------------------------------------------------

CLONE=""
MARKED=""  # the fetched copy this script runs from: the default --dir, though not a clone
# Left in a project this script fetched: that copy is its own to replace (--update) and delete
# (--uninstall --purge), also when the script runs from it; a clone or a copy unpacked by hand
# is the operator's.
FETCHED_MARK=".docxy-fetched"

find_clone() {
  local here
  [[ -n "${BASH_SOURCE[0]:-}" && -f "${BASH_SOURCE[0]}" ]] || return 0
  here="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd -P)"
  [[ -f "$here/compose.yaml" && -f "$here/Dockerfile" ]] || return 0
  # A copy fetched by an earlier version has no mark: the default place without .git is one.
  if [[ -e "$here/$FETCHED_MARK" ]] ||
    [[ "$here" == "$(cd -- "$(under_root /opt/docxy)" 2>/dev/null && pwd -P)" && ! -e "$here/.git" ]]; then
    MARKED="$here"
    return 0
  fi
  CLONE="$here"
}

settle_dir() {
  find_clone
  if [[ -z "$DIR" ]]; then
    DIR="${CLONE:-${MARKED:-$(under_root /opt/docxy)}}"
  elif [[ -d "$DIR" ]]; then
    # One spelling per directory ("clone/", "."), so the clone is never taken for a fetched copy.
    DIR="$(cd -- "$DIR" && pwd -P)"
  fi
  # Piped, the script has no clone of its own; a git clone named by --dir is one all the same.
  if [[ -z "$CLONE" && -d "$DIR/.git" && -f "$DIR/compose.yaml" ]]; then CLONE="$DIR"; fi
  ENV_FILE="$DIR/.env"
  env_readable
  settle_project
}

# env_readable: an existing .env this user cannot read (root's, mode 600, to a dry run without
# sudo, as check_root allows) stops the run, before anything reads it. Read as empty, the dry run
# showed changes the real run would not make (the e-mail and the operator's lines dropped, the
# default cache size, "would run compose up", "--domain is required").
env_readable() {
  local what="$ENV_FILE" how up="$DIR"
  # DIR, or the nearest directory above it that is there: one this user cannot search (a --dir
  # under /root, mode 700) hides DIR and its .env, which -d and -e then take for none.
  while [[ ! -e "$up" && "$up" != / && "$up" != . ]]; do up="$(dirname -- "$up")"; done
  if [[ -d "$up" && ! -x "$up" ]]; then
    what="$up"
  elif [[ ! -e "$ENV_FILE" || -r "$ENV_FILE" ]]; then
    return 0
  fi
  how="$(stat -c "%U's, mode %a" -- "$what" 2>/dev/null)" || how=""
  what+="${how:+ ($how)}"
  [[ "$(id -u)" == 0 ]] && die "cannot read $what: make it readable to root, then run this again"
  ((DRY_RUN)) && die "cannot read $what: run the dry run with sudo to see what would change"
  die "cannot read $what: run as root: sudo bash $PROG ..."
}

# settle_project: every compose here runs as --project-name PROJECT, and .env says it too
# (render_ours), so that a `docker compose` by hand in the project is the same stack whatever
# the directory's name (without it compose takes that name: `logs docxy` finds nothing, and
# `up` makes a second stack with empty volumes). One the operator set in .env is kept, but
# where a stack of project PROJECT is here already: an older version ran every compose as
# PROJECT whatever .env said, and that stack's volumes hold the cache and the certificates
# (taken at its word, a rerun made a second stack with empty ones, and --uninstall left the
# running one up). --uninstall never stops on a name compose would refuse.
settle_project() {
  local name
  name="$(env_value COMPOSE_PROJECT_NAME)"
  [[ -n "$name" && "$name" != "$PROJECT" ]] || return 0
  if command -v docker >/dev/null 2>&1 &&
    [[ -n "$(docker ps -aq --filter "label=com.docker.compose.project=$PROJECT" 2>/dev/null)" ]]; then
    warn "COMPOSE_PROJECT_NAME=$name in $ENV_FILE, but the stack here runs as project $PROJECT (an older install ran it so whatever .env said): $PROJECT is kept"
    return 0
  fi
  if [[ ! "$name" =~ ^[a-z0-9][a-z0-9_-]*$ ]]; then
    if [[ "$UNINSTALL" == 1 ]]; then
      warn "COMPOSE_PROJECT_NAME=$name in $ENV_FILE is not a compose project name: taking down project $PROJECT"
      return 0
    fi
    die "COMPOSE_PROJECT_NAME=$name in $ENV_FILE is not a compose project name (lower-case letters, digits, - and _, a letter or digit first): mend it there, then run this again" 2
  fi
  PROJECT="$name"
}

# dir_is_empty DIR: fails closed (an error listing DIR counts as "not empty").
dir_is_empty() {
  local entries
  entries="$(find "$1" -mindepth 1 -maxdepth 1 -print -quit)" || return 1
  [[ -z "$entries" ]]
}

# An update keeps the project it replaces beside $DIR until the new one has answered on
# /health; if the update fails before that, the EXIT trap puts it back (roll_back).
PREVIOUS=""
UP_TRIED=0

previous_dir() { printf '%s/.%s.previous' "$(dirname -- "$DIR")" "$(basename -- "$DIR")"; }

get_project() {
  if [[ "$DIR" == "$CLONE" ]]; then
    say "  using the clone at $DIR"
    return
  fi
  if [[ ! -e "$DIR" && -f "$(previous_dir)/compose.yaml" ]] && ((!DRY_RUN)); then
    say "  an interrupted update left the project at $(previous_dir): putting it back"
    mv -- "$(previous_dir)" "$DIR"
  fi
  if [[ -f "$DIR/compose.yaml" ]] && ((!UPDATE)); then
    say "  using the project at $DIR (--update fetches it again)"
    return
  fi
  # Only an earlier copy of the project is replaced, never some other directory.
  if [[ -e "$DIR" ]] && [[ ! -f "$DIR/compose.yaml" ]] && ! dir_is_empty "$DIR"; then
    die "$DIR exists and is not a Docxy project: pick another --dir"
  fi
  CHANGES=$((CHANGES + 1))
  if ((DRY_RUN)); then
    say "  would fetch $SOURCE_URL into $DIR"
    return
  fi
  local scratch staged unchanged=""
  [[ -f "$DIR/compose.yaml" ]] && unchanged=" ($DIR is unchanged)"
  mkdir -p -- "$(dirname -- "$DIR")"
  # Unpacked beside $DIR, on its file system: a full disk stops the update here, before the
  # project is touched, and putting the new tree in place is a rename.
  scratch="$(mktemp -d)"
  staged="$(mktemp -d "$(dirname -- "$DIR")/.$(basename -- "$DIR").new-XXXXXX")"
  SCRATCH+=("$scratch" "$staged") # a Ctrl-C meanwhile leaves neither (gone once moved in place)
  say "  fetching $SOURCE_URL"
  if ! curl -fsSL --retry 3 "${STALL_LIMITS[@]}" -o "$scratch/source.tar.gz" "$SOURCE_URL"; then
    rm -rf -- "$scratch" "$staged"
    die "could not fetch $SOURCE_URL (set DOCXY_SOURCE_URL to the project's .tar.gz)$unchanged"
  fi
  if ! tar -xzf "$scratch/source.tar.gz" -C "$staged" --strip-components=1; then
    rm -rf -- "$scratch" "$staged"
    die "could not unpack $SOURCE_URL (not a .tar.gz of the project, or the disk is full)$unchanged"
  fi
  rm -rf -- "$scratch"
  if [[ ! -f "$staged/compose.yaml" ]]; then
    rm -rf -- "$staged"
    die "$SOURCE_URL holds no compose.yaml$unchanged"
  fi
  chmod 755 -- "$staged"
  # The mark names what was fetched (one name a line): the next update tells the operator's
  # own files from the project's by it.
  names_in "$staged" >"$staged/$FETCHED_MARK"
  # .env as it is: a link into a config repository stays a link.
  if [[ -e "$DIR/.env" || -L "$DIR/.env" ]] && ! cp -pP -- "$DIR/.env" "$staged/.env"; then
    rm -rf -- "$staged"
    die "could not copy $DIR/.env into the new project$unchanged"
  fi
  carry_own_files "$staged" || {
    rm -rf -- "$staged"
    die "could not copy your own files from $DIR into the new project$unchanged"
  }
  if [[ -f "$DIR/compose.yaml" ]]; then
    PREVIOUS="$(previous_dir)"
    rm -rf -- "$PREVIOUS" # left by an update that was stopped before it cleaned up
    if ! mv -- "$DIR" "$PREVIOUS"; then
      PREVIOUS=""
      rm -rf -- "$staged"
      die "could not move $DIR aside$unchanged"
    fi
  elif [[ -e "$DIR" ]]; then
    rmdir -- "$DIR"
  fi
  if ! mv -- "$staged" "$DIR"; then
    rm -rf -- "$staged"
    die "could not put the new project in place at $DIR"
  fi
  say "  unpacked into $DIR${PREVIOUS:+ (the previous project kept at $PREVIOUS until the new one answers)}"
}

# carry_own_files STAGED: the operator's own files in $DIR (a compose.override.yaml, a config
# file) go into the new project STAGED, as they are: those the last fetch did not bring (by
# its mark; a mark of an older install.sh is empty: then those the new project lacks).
carry_own_files() {
  local staged="$1" entry name fetched=()
  [[ -f "$DIR/compose.yaml" ]] || return 0
  [[ -f "$DIR/$FETCHED_MARK" ]] && mapfile -t fetched <"$DIR/$FETCHED_MARK"
  while IFS= read -r name; do
    entry="$DIR/$name"
    case "$name" in .env | "$FETCHED_MARK" | "$UP_PENDING") continue ;; esac
    if ((${#fetched[@]})); then
      contains "$name" "${fetched[@]}" && continue
    elif [[ -e "$staged/$name" || -L "$staged/$name" ]]; then
      continue
    fi
    rm -rf -- "${staged:?}/$name" # a name of yours the new project brings too: yours stays
    cp -pPR -- "$entry" "$staged/$name" || return 1
    say "  kept $name (yours, not the project's) in the new project"
  done < <(names_in "$DIR")
}

# names_in DIR: the names in DIR, dot files too, one a line.
names_in() {
  local entry
  for entry in "$1"/* "$1"/.[!.]* "$1"/..?*; do
    [[ -e "$entry" || -L "$entry" ]] && printf '%s\n' "${entry##*/}"
  done
  return 0
}

# roll_back: an update failed after its new project went in place: the previous one goes back,
# and back up if the new one had been started.
roll_back() {
  warn "the update failed: putting the previous project back in $DIR"
  if ! rm -rf -- "$DIR" || ! mv -- "$PREVIOUS" "$DIR"; then
    warn "could not: the previous project is at $PREVIOUS; move it back to $DIR by hand"
    return
  fi
  PREVIOUS=""
  if ((!UP_TRIED)); then
    warn "the previous project is back as it was; the running mirror was not touched"
    return
  fi
  warn "bringing the previous version up again"
  if compose up -d --build >&2; then
    https_target 2>/dev/null
    warn "the previous version is running again (check $(health_url))"
  else
    warn "the previous version did not come back up either: see the messages above"
  fi
}

# The update is done: the new project answered.
drop_previous() {
  [[ -n "$PREVIOUS" ]] || return 0
  rm -rf -- "$PREVIOUS"
  PREVIOUS=""
  say "  removed the previous project"
}

on_exit() {
  local status=$?
  # Best effort from here: a message that cannot be written (the terminal of a dropped SSH
  # session: EIO) must not stop the rollback under `set -e`.
  set +e
  rm -rf -- ${SCRATCH[@]+"${SCRATCH[@]}"}
  if [[ -n "$PREVIOUS" ]] && ((status != 0)); then
    roll_back
  elif ((status != 0 && status != 129 && status != 130 && status != 143 && !SAID_WHY)); then
    # A command failed under `set -e`: its own message is above; say where, and what now.
    warn "stopped${STEP:+ at \"$STEP\"}: the command above failed (exit $status)."
    warn "What was done before it stays done: fix the cause, then run this again (it redoes only what is missing)."
  fi
  if ((status != 0 && !SAID_WHY)) && [[ -n "$STILL_TO_DO" ]]; then
    warn "$STILL_TO_DO"
  fi
  return "$status"
}

# --- Docker -------------------------------------------------------------------------------------

find_compose() {
  COMPOSE=()
  if have docker && docker compose version >/dev/null 2>&1; then
    COMPOSE=(docker compose)
  elif have docker-compose; then
    COMPOSE=(docker-compose)
  fi
}

apparmor_enabled() {
  local enabled
  enabled="$(cat -- "$(under_root /sys/module/apparmor/parameters/enabled)" 2>/dev/null)" || return 1
  [[ "$enabled" == Y* ]]
}

# candidate PACKAGE [VERSION]: apt has a version of PACKAGE to install (one matching the regex
# VERSION, default any). apt-cache's output is read whole:
# `| grep -q` stopped at the Candidate line, and apt-cache, still writing a long version table
# (Docker's repository lists every release), died of SIGPIPE: pipefail took that for "none".
# In the C locale: apt says "Candidate:" in the operator's language (Installationskandidat).
candidate() {
  local policy version="${2:-[0-9]}"
  policy="$(LC_ALL=C apt-cache policy "$1" 2>/dev/null)" || return 1
  [[ "$policy" =~ Candidate:\ $version ]]
}

# docker_ce: whether the Engine installed is Docker's own package (from download.docker.com).
docker_ce() {
  dpkg-query -W -f '${Status}' docker-ce 2>/dev/null | grep -q 'install ok installed'
}

# engine_version: the Engine's version (dockerd's, else the docker client's: the same package's,
# where dockerd does not run yet or does not answer this user), "" where docker does not say.
engine_version() {
  local version="" field
  for field in Server Client; do
    version="$(docker version --format "{{.$field.Version}}" 2>/dev/null)" || true
    [[ "$version" =~ ^[0-9]+\. ]] && break
    version=""
  done
  printf '%s' "$version"
}

# compose_v1_fails: COMPOSE is docker-compose 1.x and the Engine 25 or newer, against which it
# fails on every recreate (KeyError: 'ContainerConfig', docker/compose#11742): an install worked
# once, then every run changing .env, and every --update (its rollback too), died in `up`.
# Debian 12's own pair (docker.io 20.10, docker-compose 1.29) works together. Says why in
# COMPOSE_V1_WHY.
COMPOSE_V1_WHY=""
compose_v1_fails() {
  local said engine
  COMPOSE_V1_WHY=""
  [[ "${COMPOSE[*]}" == docker-compose ]] || return 1
  said="$(docker-compose version 2>/dev/null)" || true
  [[ "$said" =~ [Vv]ersion\ v?(1\.[0-9]+\.[0-9]+) ]] || return 1
  COMPOSE_V1_WHY="docker-compose ${BASH_REMATCH[1]}"
  engine="$(engine_version)"
  [[ "$engine" =~ ^([0-9]+)\. ]] && ((BASH_REMATCH[1] >= 25)) || return 1
  COMPOSE_V1_WHY+=" fails against Docker Engine $engine on every recreate (KeyError: 'ContainerConfig', docker/compose#11742)"
}

# compose_v2_candidate: apt's docker-compose is Compose v2 (Debian 13's is; 12's is 1.29).
compose_v2_candidate() {
  candidate docker-compose '([0-9]+:)?[2-9]'
}

# engine_new: the Engine installed is 25 or newer (against which docker-compose 1.x fails); says
# which in ENGINE_NEW.
ENGINE_NEW=""
engine_new() {
  ENGINE_NEW="$(engine_version)"
  [[ "$ENGINE_NEW" =~ ^([0-9]+)\. ]] && ((BASH_REMATCH[1] >= 25))
}

install_docker() {
  local packages=() v1=0
  find_compose
  if have docker && ((${#COMPOSE[@]})); then
    if ! compose_v1_fails; then
      say "  Docker and Compose are installed (${COMPOSE[*]})"
      return
    fi
    # Never used here: a Compose v2 comes beside it, as where Compose is missing.
    v1=1
    say "  $COMPOSE_V1_WHY:"
    say "  not used here; a Compose v2 is needed beside it"
  fi
  if ((DOCKER_REPO)); then
    say "  source: Docker's own apt repository (--docker-repo): the newest Engine and Compose"
    say "  plugin, at the cost of a third-party repository and signing key on this host"
    local keyring list had_key=0 old_list="" rc=0
    keyring="$(under_root /etc/apt/keyrings/docker.asc)"
    list="$(under_root /etc/apt/sources.list.d/docker.list)"
    [[ -e "$keyring" ]] && had_key=1
    [[ -f "$list" ]] && old_list="$(cat -- "$list")"
    # Readable by all whatever root's umask (027, 077 on a hardened host): apt checks the
    # signatures as its unprivileged _apt user, and fails the repository as unsigned otherwise.
    local umask_was
    umask_was="$(umask)"
    umask 022
    act mkdir -p "$(dirname -- "$keyring")"
    act curl -fsSL "${STALL_LIMITS[@]}" -o "$keyring" "https://download.docker.com/linux/$OS_ID/gpg"
    CHANGES=$((CHANGES + 1))
    local line="deb [arch=$ARCH signed-by=/etc/apt/keyrings/docker.asc] https://download.docker.com/linux/$OS_ID $OS_CODENAME stable"
    if ((DRY_RUN)); then
      say "  would write $list: $line"
    else
      mkdir -p -- "$(dirname -- "$list")"
      printf '%s\n' "$line" >"$list"
    fi
    umask "$umask_was"
    # A repository apt cannot read (no release for $OS_CODENAME there, say) would fail every
    # later apt-get update on this host, a rerun without --docker-repo too: it goes again.
    apt_get update || rc=$?
    if ((rc)); then
      local undone="took $list out again"
      if [[ -n "$old_list" ]]; then
        printf '%s\n' "$old_list" >"$list"
        undone="put the $list that was there back"
      else
        rm -f -- "$list"
      fi
      ((had_key)) || rm -f -- "$keyring"
      die "apt-get update failed with Docker's repository for $OS_ID '$OS_CODENAME' added (above): \
$undone, so apt works as before. Fix the cause and run this again, or run without --docker-repo \
for $OS_ID's own docker.io" "$rc"
    fi
    packages=(docker-ce docker-ce-cli containerd.io docker-buildx-plugin docker-compose-plugin)
  else
    say "  source: $OS_ID's own packages (docker.io): signed by the distribution and updated"
    say "  with the rest of the system by apt; --docker-repo installs Docker's newer builds instead"
    apt_get update
    have docker || packages+=(docker.io)
    if have docker && docker_ce && candidate docker-compose-plugin; then
      # Docker's own Engine gets its own Compose plugin: Debian 12's docker-compose 1.29 fails
      # against Engine 25 and newer on every recreate ("KeyError: 'ContainerConfig'").
      say "  Docker's own Engine (docker-ce) is installed: its Compose plugin from the same source"
      packages+=(docker-compose-plugin)
    elif candidate docker-compose-v2; then
      packages+=(docker-compose-v2)
    elif compose_v2_candidate || { ((!v1)) && ! { have docker && engine_new; }; }; then
      packages+=(docker-compose)
    else
      # Compose missing beside an Engine of 25 or newer: apt's docker-compose (1.x, if any) was
      # installed, then refused (and the dry run went on as if it would do).
      ((v1)) || COMPOSE_V1_WHY="Compose is missing beside Docker Engine $ENGINE_NEW, and apt's \
docker-compose, if any, is 1.x, which fails against it on every recreate (KeyError: 'ContainerConfig', \
docker/compose#11742)"
      die "$COMPOSE_V1_WHY, and apt offers no Compose v2 here (docker-compose-plugin, \
docker-compose-v2): run this again with --docker-repo (Docker's own Engine and its Compose plugin), \
or install the Compose plugin by hand (https://docs.docker.com/compose/install/linux/), then run this again"
    fi
  fi
  # Both sources' dockerd only recommend apparmor, which --no-install-recommends leaves out; on a
  # kernel with AppArmor on, a minimal image without apparmor_parser then has dockerd refuse to
  # start any container ("the docker-default profile could not be loaded").
  if apparmor_enabled && ! have apparmor_parser; then packages+=(apparmor); fi
  apt_get install -y --no-install-recommends "${packages[@]}"
  ((DRY_RUN)) && { COMPOSE=(docker compose); return; }
  find_compose
  ((${#COMPOSE[@]})) || die "Compose is still missing after installing ${packages[*]}"
  ! compose_v1_fails || die "$COMPOSE_V1_WHY, and it is still the Compose found after installing ${packages[*]}: install the Compose plugin (https://docs.docker.com/compose/install/linux/), then run this again"
}

# dockerd_without_systemd WHY: nothing here starts dockerd (WHY says so): it must run already.
# Else the run stops before the project is touched: `compose up` would fail later, its
# message followed by advice about the build's base image, which is not the cause.
dockerd_without_systemd() {
  local start="start dockerd (service docker start, where its init script is installed, or run dockerd itself)"
  if have docker && docker info >/dev/null 2>&1; then
    say "  $1: make sure dockerd runs (and starts at boot)"
    return
  fi
  if ((DRY_RUN)); then
    if ! have docker; then
      say "  $1: once Docker is installed, the real run stops unless dockerd runs: $start"
    elif docker_refuses_us; then
      say "  $1, and docker does not answer this user (not root): the real run stops unless dockerd runs"
    else
      say "  $1, and dockerd is not running: the real run stops here; $start, then run this again"
    fi
    return
  fi
  die "dockerd is not running, and $1 to start it: $start, then run this again"
}

start_docker() {
  local before=$CHANGES
  if ! have systemctl; then
    dockerd_without_systemd "there is no systemd here"
    return
  fi
  # systemctl without systemd as init (WSL, a container, another init) answers "offline" here
  # and fails every other command.
  if [[ "$(systemctl is-system-running 2>/dev/null)" == offline ]]; then
    dockerd_without_systemd "systemd is not running here"
    return
  fi
  # A dockerd run by another unit (not the snap: install_docker refused that) is left as it is.
  # (A dry run may have no Docker yet: its package would bring docker.service.)
  if have docker && ! systemctl cat docker.service >/dev/null 2>&1; then
    if docker info >/dev/null 2>&1; then
      say "  dockerd runs, though not as docker.service: left as it is (make sure it starts at boot)"
      return
    fi
    die "dockerd is installed but not running, and there is no docker.service to start: start dockerd, then run this again"
  fi
  systemctl is-enabled --quiet docker 2>/dev/null || act systemctl enable docker
  systemctl is-active --quiet docker 2>/dev/null || act systemctl start docker
  if ((DRY_RUN && CHANGES > before)); then
    say "  dockerd would be enabled and started"
  else
    say "  dockerd is enabled and running"
  fi
}

# compose_files: the -f options of every compose command here (with -f, Compose reads neither
# COMPOSE_FILE nor an override file of its own accord): the script's file, then the operator's
# from COMPOSE_FILE, as a `docker compose` by hand in the project reads them; without those, a
# compose.override.yaml beside compose.yaml (as `docker compose up` by hand would read it).
COMPOSE_FILES=()
compose_files() {
  local name
  if ((${#COMPOSE_MADE_FROM[@]})); then # uninstall: what the stack was made from, and no more
    COMPOSE_FILES=()
    for name in "${COMPOSE_MADE_FROM[@]}"; do COMPOSE_FILES+=(-f "$name"); done
    return 0
  fi
  COMPOSE_FILES=(-f "$DIR/$COMPOSE_YAML")
  for name in "${COMPOSE_EXTRA[@]}"; do
    COMPOSE_FILES+=(-f "$(compose_path "$name")")
  done
  ((${#COMPOSE_EXTRA[@]} == 0)) || return 0
  for name in compose.override.yaml compose.override.yml; do
    if [[ -f "$DIR/$name" ]]; then
      COMPOSE_FILES+=(-f "$DIR/$name")
      break
    fi
  done
}

compose() {
  compose_files
  local files=("${COMPOSE_FILES[@]}")
  "${COMPOSE[@]}" --project-name "$PROJECT" --project-directory "$DIR" "${files[@]}" \
    --env-file "$ENV_FILE" "$@"
}

# The account in .env only reaches the mirror if compose.yaml passes it into the container:
# by name, or with the whole file (`env_file: .env` or `./.env`, or `- .env` in a list).
check_compose_passes_account() {
  local file="$DIR/$COMPOSE_YAML" name
  [[ -n "$UPSTREAM_USER" && -f "$file" ]] || return 0
  for name in "$file" "${COMPOSE_EXTRA[@]}"; do
    name="$(compose_path "$name")"
    [[ -f "$name" ]] || continue
    grep -q 'DOCXY_UPSTREAM_USERNAME' -- "$name" && return 0
    grep -qE "^[[:space:]]*(env_file:|-)[[:space:]]*[\"']?(\./)?\.env[\"']?[[:space:]]*\$" -- "$name" &&
      return 0
  done
  warn "$file does not pass DOCXY_UPSTREAM_USERNAME/PASSWORD into the container:"
  warn "the mirror pulls anonymously until it does (the account stays in .env)"
}

bring_up() {
  check_compose_passes_account
  if ((!ENV_CHANGED && !UPDATE)) && [[ ! -e "$DIR/$UP_PENDING" ]] && ((${#COMPOSE[@]})) &&
    stack_running; then
    say "  Docxy is already running with these settings"
    return
  fi
  CHANGES=$((CHANGES + 1))
  if ((DRY_RUN)); then
    compose_files
    say "  would run: ${COMPOSE[*]} --project-name $PROJECT ${COMPOSE_FILES[*]} up -d --build"
    return
  fi
  say "  building and starting (the first build takes a few minutes)"
  UP_TRIED=1
  if ! compose up -d --build; then
    # The build's first step pulls its base from Docker Hub, which a server that needs a
    # mirror often cannot reach.
    [[ -n "$BASE_IMAGE" ]] ||
      warn "if the build could not pull python:3.12-slim (no Docker Hub here), give --base-image IMAGE, one this host can pull"
    die "docker compose could not build or start Docxy (its messages are above); $ENV_FILE is written: fix the cause, then run this again"
  fi
  rm -f -- "$DIR/$UP_PENDING"
}

# https_target: where this host's mirror takes HTTPS, as .env has it, into HTTPS_ADDRESS (for
# curl --resolve) and HTTPS_PORT: compose.yaml publishes it on ${DOCXY_HTTPS_PORT:-443} (PORT or
# ADDRESS:PORT), compose.host.yaml listens on DOCXY_SERVER_TLS_LISTEN (default [::]:443). A
# wildcard address, and localhost, is asked on 127.0.0.1.
HTTPS_ADDRESS=127.0.0.1
HTTPS_PORT=443
https_target() {
  local name=DOCXY_HTTPS_PORT default=443
  [[ "$COMPOSE_YAML" != "$HOST_FILE" ]] || { name=DOCXY_SERVER_TLS_LISTEN default="[::]:443"; }
  if ! published "$name" "$default"; then
    warn "$name in $ENV_FILE does not end in a port; the health check asks port 443"
    return 0
  fi
  HTTPS_PORT="$PUBLISHED_PORT"
  # curl --resolve takes an address only: localhost (which it refuses, exit 49) is 127.0.0.1,
  # as the mirror binds it (clashes).
  if any_address "$PUBLISHED_ADDRESS" || local_name "$PUBLISHED_ADDRESS"; then
    HTTPS_ADDRESS=127.0.0.1
  elif [[ "$PUBLISHED_ADDRESS" == *:* ]]; then
    HTTPS_ADDRESS="[$PUBLISHED_ADDRESS]"
  else
    HTTPS_ADDRESS="$PUBLISHED_ADDRESS"
  fi
}

# health_url: https://DOMAIN/health, with the port where it is not 443.
health_url() {
  if ((HTTPS_PORT == 443)); then
    printf 'https://%s/health' "$DOMAIN"
  else
    printf 'https://%s:%s/health' "$DOMAIN" "$HTTPS_PORT"
  fi
}

wait_for_health() {
  https_target
  local url deadline=$((SECONDS + HEALTH_TIMEOUT)) answer
  url="$(health_url)"
  if ((DRY_RUN)); then
    say "  would wait for $url with a verified certificate"
    return
  fi
  say "  waiting for $url (certificate verified; the first issuance takes a minute)"
  while true; do
    if answer="$(curl -fsS --max-time 10 --resolve "$DOMAIN:$HTTPS_PORT:$HTTPS_ADDRESS" "$url" 2>&1)"; then
      say "  $url: $answer"
      return
    fi
    if ((SECONDS >= deadline)); then
      warn "no healthy answer from $url after ${HEALTH_TIMEOUT}s: $answer"
      warn "the mirror's log:"
      compose logs --tail 60 >&2 || true
      die "Docxy did not come up with a valid certificate; see the log above"
    fi
    sleep 5
  done
}

# settle_mirror_url: the URL clients reach the mirror at, into MIRROR_URL: .env's
# DOCXY_SERVER_PUBLIC_URL where set (the mirror's own public_url), else https://DOMAIN with the
# HTTPS port .env publishes where it is not 443. One published on a loopback address only is
# no other host's to reach: a proxy of the operator's fronts it, on https://DOMAIN.
MIRROR_URL=""
settle_mirror_url() {
  MIRROR_URL="$(env_value DOCXY_SERVER_PUBLIC_URL)"
  MIRROR_URL="${MIRROR_URL%/}"
  [[ -z "$MIRROR_URL" ]] || return 0
  MIRROR_URL="https://$DOMAIN"
  local name=DOCXY_HTTPS_PORT default=443
  choose_network
  [[ "$COMPOSE_YAML" != "$HOST_FILE" ]] || { name=DOCXY_SERVER_TLS_LISTEN default="[::]:443"; }
  published "$name" "$default" || return 0
  ((PUBLISHED_PORT != 443)) && ! loopback "$PUBLISHED_ADDRESS" || return 0
  MIRROR_URL+=":$PUBLISHED_PORT"
  # With host networking the mirror's public_url has its TLS listener's port; in compose.yaml's
  # bridge it listens on 443 inside, and says 443 (its token realm too) unless told.
  [[ "${1:-}" == warn && "$COMPOSE_YAML" != "$HOST_FILE" ]] || return 0
  warn "$name publishes HTTPS on port $PUBLISHED_PORT, but with no DOCXY_SERVER_PUBLIC_URL in $ENV_FILE"
  warn "the mirror takes its URL (and its token realm) to be https://$DOMAIN, port 443: set"
  warn "DOCXY_SERVER_PUBLIC_URL=$MIRROR_URL there (or the URL clients reach it at), then run this again"
}

configure_local_docker() {
  # --no-summary: its "Dry run..." and "Nothing to change..." lines are this script's to say.
  # --reload: the dockerd to reload is this host's, --root or not (the tests' stand-in).
  local args=(--mirror "$MIRROR_URL" --docker --root "${ROOT:-/}" --reload --no-summary)
  ((DRY_RUN)) && args+=(--dry-run)
  ((UNINSTALL)) && args+=(--remove)
  # The mirror's URL an earlier run wrote (before .env gave it a port, say) is a dead one now,
  # which dockerd would try on every pull: every other mirror at DOMAIN goes with this one. A
  # project copy older than this script (fetched before, no --update) lacks the option.
  if [[ -n "$DOMAIN" ]] && { [[ ! -f "$DIR/scripts/configure-client.sh" ]] ||
    grep -q -- '--replace-host' "$DIR/scripts/configure-client.sh"; }; then
    args+=(--replace-host "$DOMAIN")
  fi
  if ((DRY_RUN)) && [[ ! -f "$DIR/scripts/configure-client.sh" ]]; then
    # A dry run fetches nothing: the script is not there to ask.
    say "  would run: bash $DIR/scripts/configure-client.sh ${args[*]}"
    return
  fi
  local file before rc=0
  file="$(under_root /etc/docker/daemon.json)"
  before="$(cat -- "$file" 2>/dev/null)" || before=""
  bash "$DIR/scripts/configure-client.sh" "${args[@]}" || rc=$?
  # Its changes are this run's too (the closing "Nothing to change" would be false).
  [[ "$(cat -- "$file" 2>/dev/null)" == "$before" ]] || CHANGES=$((CHANGES + 1))
  return "$rc"
}

print_client_commands() {
  local serves=serves
  ((DRY_RUN)) && serves="would serve"
  cat <<EOF

Docxy $serves $MIRROR_URL. On each Docker host that should pull through it:

  curl -fsSL $MIRROR_URL/setup.sh | sudo bash

(it sets up Docker, containerd and podman, whichever are installed: for Docker the mirror goes
first in /etc/docker/daemon.json, everything else kept, and dockerd is reloaded.
'-s -- --dry-run' shows the changes first, '-s -- --remove' undoes them). By hand:

  /etc/docker/daemon.json:  { "registry-mirrors": ["$MIRROR_URL"] }
  then: sudo systemctl reload docker && docker info | grep -A1 'Registry Mirrors'
EOF
}

# --- uninstall ----------------------------------------------------------------------------------

volume_exists() { docker volume inspect "$1" >/dev/null 2>&1; }

# uninstall: the stack and its cache go even if taking the mirror out of this host's dockerd
# fails (a dockerd that does not reload): that failure is said again at the end, with the
# command that finishes it, and the run exits 1 (or, should removing the stack fail after it,
# with that command's status, both said).
uninstall() {
  step "Uninstalling Docxy from $DIR"
  DOMAIN="${DOMAIN:-$(env_value DOCXY_DOMAIN)}"
  DOMAIN="${DOMAIN,,}" # as the install wrote it (settle_settings)
  have docker && dockerd_answers
  # What comes down is what runs: the files its containers were made from; failing those, the
  # file install chooses (a bridge install writes no COMPOSE_FILE, and the routes may have
  # changed since: compose.host.yaml brought down a compose.yaml stack, its network left).
  have docker && read_files_made_from
  ((${#COMPOSE_MADE_FROM[@]})) || uninstall_files_chosen
  settle_mirror_url
  local dockerd_failed=0
  if [[ -n "$DOMAIN" ]] && names_the_mirror "$(under_root /etc/docker/daemon.json)"; then
    say "This host's dockerd uses the mirror: taking it out"
    if [[ -f "$DIR/scripts/configure-client.sh" ]]; then
      configure_local_docker || dockerd_failed=$?
    else # the project's folders deleted or moved by hand: dockerd_finish says what to do
      warn "$DIR/scripts/configure-client.sh is not there to do it"
      dockerd_failed=1
    fi
  fi
  if ((dockerd_failed && !DRY_RUN)); then # said again should removing the stack fail too
    STILL_TO_DO="also: taking $MIRROR_URL out of this host's dockerd failed (further above); once that is mended: $(dockerd_finish)"
  fi
  remove_stack
  if ((dockerd_failed && DRY_RUN)); then
    die "taking $MIRROR_URL out of this host's dockerd would fail (above); the rest would \
be uninstalled all the same. Dry run: the changes above were not made."
  elif ((dockerd_failed)); then
    die "taking $MIRROR_URL out of this host's dockerd failed (above); the rest is \
uninstalled. Once that is mended: $(dockerd_finish)"
  fi
}

# The compose files the project's containers were made from, as Compose labels each container
# (absolute paths joined by commas; Compose 1.29 keeps a relative -f as given: taken here as
# relative to the project, where `docker compose` by hand runs). Set, compose_files gives these.
COMPOSE_MADE_FROM=()
CONFIG_FILES_LABEL=com.docker.compose.project.config_files

# read_files_made_from: the newest labelled container's files into COMPOSE_MADE_FROM, provided
# the first is still there (compose down cannot read a missing file; without it the others
# are no stack); another since deleted is left out, as a missing one of .env's is.
read_files_made_from() {
  local labels label="" entry files=()
  # Read whole, then the first non-empty line (newest first): a `| grep -m1` could end docker
  # with SIGPIPE, a failure under pipefail.
  labels="$(docker ps -a --filter "label=com.docker.compose.project=$PROJECT" \
    --format "{{.Label \"$CONFIG_FILES_LABEL\"}}" 2>/dev/null)" || return 0
  while IFS= read -r entry; do
    [[ -z "$entry" ]] || { label="$entry" && break; }
  done <<<"$labels"
  [[ -n "$label" ]] || return 0
  IFS=, read -ra files <<<"$label"
  if [[ ! -f "$(compose_path "${files[0]}")" ]]; then
    say "  Docxy's containers were made from $label, which is not there: going by $ENV_FILE and this host's routes"
    return 0
  fi
  for entry in "${files[@]}"; do
    if [[ -e "$(compose_path "$entry")" ]]; then
      COMPOSE_MADE_FROM+=("$(compose_path "$entry")")
    else
      say "  Docxy's containers were made from $entry too, which is not there: left out"
    fi
  done
}

# uninstall_files_chosen: the file install chooses (choose_network: .env's COMPOSE_FILE, else
# the routes), compose.yaml where the project lacks compose.host.yaml (compose down cannot read
# a file that is not there), and .env's files of the operator's that are still there.
uninstall_files_chosen() {
  choose_network
  [[ "$COMPOSE_YAML" != "$HOST_FILE" || -f "$DIR/$HOST_FILE" ]] || COMPOSE_YAML=compose.yaml
  local extra extras=()
  for extra in "${COMPOSE_EXTRA[@]}"; do
    if [[ -e "$(compose_path "$extra")" ]]; then
      extras+=("$extra")
    else
      say "  COMPOSE_FILE in $ENV_FILE names $extra, which is not there: left out"
    fi
  done
  COMPOSE_EXTRA=("${extras[@]}")
}

# dockerd_answers: with dockerd down, every `docker ps` and `docker volume inspect` fails and
# would read as "absent": nothing would be removed, yet .env and the project purged, and the
# container (restart: unless-stopped) back with its volumes at dockerd's next start.
dockerd_answers() {
  docker info >/dev/null 2>&1 && return 0
  docker_refuses_us &&
    die "docker does not answer this user (not root), so Docxy's containers and volumes cannot be seen: run the dry run with sudo"
  die "dockerd is not running (\`docker info\` does not answer), so Docxy's containers and volumes cannot be seen or removed: start it (systemctl start docker), then run --uninstall again. Nothing was removed"
}

# names_the_mirror FILE: FILE (daemon.json) holds MIRROR_URL, or another URL at DOMAIN (one an
# earlier install wrote, before its port changed), as a whole JSON string: not a host that
# merely starts with DOMAIN's name (mirror.test.example.net) or ends with it.
names_the_mirror() {
  local url domain
  url="$(ere_quote "$MIRROR_URL")"
  domain="$(ere_quote "$DOMAIN")"
  grep -qiE -- "\"($url|https?://$domain(:[0-9]+)?)/*\"" "$1" 2>/dev/null
}

# ere_quote TEXT: TEXT as a grep -E pattern that matches it alone.
ere_quote() { printf '%s' "$1" | sed 's/[][\\.*^$+?(){}|]/\\&/g'; }

# dockerd_finish: how to take the mirror out of this host's dockerd by hand, now (--purge may
# have removed the project, configure-client.sh with it).
dockerd_finish() {
  if [[ -f "$DIR/scripts/configure-client.sh" ]]; then
    printf '%s' "sudo bash $DIR/scripts/configure-client.sh --mirror $MIRROR_URL --docker --remove${DOMAIN:+ --replace-host $DOMAIN}"
  else
    printf '%s' "take $MIRROR_URL out of registry-mirrors in /etc/docker/daemon.json, then reload docker"
  fi
}

remove_stack() {
  find_compose
  if ! have docker; then
    say "Docker is not installed: nothing to remove"
    return
  fi
  local downed=0
  if stack_running || [[ -n "$(docker ps -aq --filter "label=com.docker.compose.project=$PROJECT" 2>/dev/null)" ]]; then
    # Compose refuses at once without the .env it is given (and compose.yaml's env_file names):
    # gone (a `git clean -xdf`), the containers go by their label instead.
    if ((${#COMPOSE[@]})) && [[ -f "$DIR/compose.yaml" && -e "$ENV_FILE" ]]; then
      CHANGES=$((CHANGES + 1))
      downed=1
      if ((DRY_RUN)); then
        compose_files
        say "  would run: ${COMPOSE[*]} --project-name $PROJECT ${COMPOSE_FILES[*]} down --remove-orphans"
      else
        DOCXY_DOMAIN="${DOMAIN:-unset}" DOCXY_EMAIL=unset compose down --remove-orphans
      fi
    else
      local containers
      mapfile -t containers < <(docker ps -aq --filter "label=com.docker.compose.project=$PROJECT")
      act docker rm -f "${containers[@]}"
    fi
  fi
  # What `compose down` removes with them; after a real one, what it left: a network no file
  # it was given names (the containers' files gone, and .env and the routes guessed another).
  local networks=()
  ((downed && DRY_RUN)) ||
    mapfile -t networks < <(docker network ls -q --filter "label=com.docker.compose.project=$PROJECT" 2>/dev/null)
  # One another container still uses stays, as `compose down` leaves it: said, not fatal (the
  # cache volume is still to go).
  ((${#networks[@]} == 0)) || act docker network rm "${networks[@]}" ||
    warn "could not remove the network ${networks[*]} (another container still in it?): docker network rm it once that is gone"
  volume_exists "${PROJECT}_cache" && act docker volume rm "${PROJECT}_cache"
  if ((PURGE)); then
    volume_exists "${PROJECT}_certs" && act docker volume rm "${PROJECT}_certs"
    docker image inspect docxy:local >/dev/null 2>&1 && act docker image rm docxy:local
    [[ -e "$ENV_FILE" ]] && act rm -f "$ENV_FILE"
    # The copies of .env kept by reruns hold what it held (an upstream password among it).
    local copy
    for copy in "$DIR"/.env.bak-*; do
      [[ -e "$copy" ]] && act rm -f "$copy"
    done
    [[ -e "$DIR/$UP_PENDING" ]] && act rm -f "$DIR/$UP_PENDING"
    # Only a copy this script fetched (marked, or the one it runs from: find_clone) is its own
    # to delete; a clone or a copy unpacked by hand is the operator's.
    if [[ "$DIR" != "$CLONE" && -f "$DIR/compose.yaml" ]]; then
      if [[ -e "$DIR/$FETCHED_MARK" || "$DIR" == "$MARKED" ]]; then
        act rm -rf "$DIR"
      else
        say "  kept $DIR: this script did not fetch it (no $FETCHED_MARK), so it is yours to delete"
      fi
    fi
  elif volume_exists "${PROJECT}_certs"; then
    say "  kept the certificate volume ${PROJECT}_certs (Let's Encrypt limits re-issuance);"
    say "  --uninstall --purge removes it, with .env and the image"
  fi
  say "  Docker itself stays installed"
}

# --- main ---------------------------------------------------------------------------------------

main() {
  trap on_exit EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
  # An SSH session that drops (`curl | sudo bash` during an --update's health wait): untrapped,
  # bash died of it and the EXIT trap rolled nothing back.
  # Its terminal is gone then: writes fail (EIO, or EPIPE with SIGPIPE ignored), and the
  # rollback goes on regardless (on_exit).
  trap 'trap "" PIPE; exit 129' HUP
  parse_args "$@"
  settle_dir
  ((DRY_RUN)) && say "Dry run: nothing is changed."
  if ((UNINSTALL)); then
    check_root
    uninstall
  else
    step "Checks"
    check_root
    check_platform
    settle_settings
    check_ports
    check_disk
    need_curl
    check_dns
    settle_network
    settle_mirror_url warn
    step "Docker"
    install_docker
    start_docker
    step "Docxy in $DIR"
    get_project
    host_file_present
    write_env
    bring_up
    wait_for_health
    drop_previous
    if ((LOCAL_DOCKER)); then
      step "This host's own dockerd"
      configure_local_docker
    fi
  fi
  if ((DRY_RUN)); then
    say ""
    say "Dry run: the changes above were not made."
  elif ((CHANGES == 0)); then
    say ""
    if ((UNINSTALL)); then
      say "Nothing to change: no Docxy left to uninstall here."
    else
      say "Nothing to change: Docxy is already installed as asked."
    fi
  fi
  ((UNINSTALL)) || print_client_commands
}

main "$@"
