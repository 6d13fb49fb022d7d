#!/usr/bin/env bash
# Point this host's Docker, containerd and podman at a Docxy mirror (or take it out again).
#
#   curl -fsSL https://mirror.example.com/setup.sh | sudo bash          # served by the mirror
#   sudo ./configure-client.sh --mirror https://mirror.example.com [--dry-run] [--remove]
#       [--registry ghcr.io ...] [--client-cert DIR] [--ca-cert FILE]
#
# Docker:     merges the mirror into "registry-mirrors" of /etc/docker/daemon.json (first, no
#             duplicates, every other key and mirror kept but those at a --replace-host: the
#             mirror's earlier URLs; served as /setup.sh, the serving mirror's host is one
#             unless --keep-others), backs the old file up, replaces it
#             atomically, reloads dockerd (SIGHUP, or `systemctl reload docker`) and checks
#             `docker info`. A malformed daemon.json is reported and left untouched (exit 3);
#             a UTF-8 byte order mark and "registry-mirrors": null are read as dockerd reads them.
# containerd: /etc/containerd/certs.d/<registry>/hosts.toml for each --registry (docker.io
#             unless named), and says whether containerd's config_path points there.
# Client certificates (--client-cert DIR, from `docxy clients add NAME --out DIR`): into
#             /etc/docker/certs.d/<mirror-host>/, beside each hosts.toml and (podman)
#             /etc/containers/certs.d/<mirror-host>/.
# podman:     /etc/containers/registries.conf.d/50-docxy-mirror.conf, unless a table of the
#             operator's already covers docker.io (then it says what to add there, exit 1),
#             and the certificates in /etc/containers/certs.d/<mirror-host>/. Rootless podman
#             cannot read root's key there: with --user (run as that user, no sudo) both go
#             into ~/.config/containers/, which podman reads first.
# Each runtime is configured where it is installed (its command on PATH), or when asked with
# --docker / --containerd / --podman (then only those).
#
# Needs python3 (on every Debian and Ubuntu cloud image; `apt-get install python3-minimal`
# otherwise): JSON is read and written with its json module, never edited as text.

# The mirror that serves this script at /setup.sh fills in its own public URL here, and the
# registries it fronts (NAME or NAME=URL, space-separated) for containerd.
MIRROR_DEFAULT=""
REGISTRIES_DEFAULT=""

# A bash script: `curl ... | sudo sh` runs it in Debian's and Ubuntu's dash, which stopped at
# "set: Illegal option -o pipefail". Said in POSIX sh, before the first line of bash's own.
if [ -z "${BASH_VERSION:-}" ]; then
  echo "configure-client.sh: run this with bash, not sh: curl -fsSL ${MIRROR_DEFAULT:-https://MIRROR}/setup.sh | sudo bash (or: sudo bash configure-client.sh ...)" >&2
  exit 2
fi
set -euo pipefail

PROG=configure-client.sh
BACKUP_SUFFIX=docxy-backup
PODMAN_DROPIN=50-docxy-mirror.conf
DOCKER_HUB=docker.io
DOCKER_HUB_SERVER=https://registry-1.docker.io

usage() {
  cat <<EOF
usage: $PROG [--mirror URL] [options]

  --mirror URL          the Docxy mirror's root URL (no path), e.g. https://mirror.example.com${MIRROR_DEFAULT:+
                        (default: $MIRROR_DEFAULT)}
  --remove              take this mirror out again (only this one)
  --replace-host HOST   Docker: also take out every other registry mirror at HOST (any
                        scheme, port or trailing slash), earlier URLs of this mirror; not a
                        host that merely contains HOST (repeatable; install.sh passes its
                        domain)${MIRROR_DEFAULT:+; set up from $MIRROR_DEFAULT (the default,
                        or --mirror giving that URL), this script does so for its host
                        unasked (a host name: not an IP address or localhost), but not
                        with --remove}
  --keep-others         Docker: keep the other registry mirrors at this mirror's host (a
                        second mirror of yours on another port), which the script served at
                        /setup.sh takes out by default as this mirror's earlier URLs (a
                        --replace-host naming the host still takes them out)
  --dry-run             print every change, make none
  --no-summary          leave out the opening and closing lines (Dry run..., Nothing to
                        change...): for a script that runs this one and says its own
  --no-reload           write the files, do not reload dockerd
  --reload              with --root DIR: reload (and check) this host's running dockerd all
                        the same; without it, a --root run leaves this host's dockerd alone
                        unless --dockerd-pidfile names one
  --allow-restart       restart dockerd when a reload does not take (stops running containers
                        unless live-restore is on)
  --registry NAME[=URL] containerd: a hosts.toml for this registry pointing at the mirror
                        (repeatable; URL, where pulls go when the mirror does not answer,
                        defaults to https://NAME, for docker.io to $DOCKER_HUB_SERVER;
                        default: ${REGISTRIES_DEFAULT:-docker.io}; with --remove, those and
                        every other registry whose hosts.toml names the mirror)
  --client-cert DIR     install DIR/client.cert and DIR/client.key (\`docxy clients add NAME
                        --out DIR\`) for Docker, containerd and podman; --remove takes them out
  --ca-cert FILE        the CA that signed the mirror's server certificate, when it is a private
                        one (not needed for a public CA such as Let's Encrypt)
  --root DIR            take every path under DIR (default /), for images and tests
                        (with --user: DIR\$HOME/.config/containers)
  --daemon-json PATH    Docker's daemon.json (default DIR/etc/docker/daemon.json)
  --dockerd-pidfile P   send SIGHUP to the dockerd whose pid is in P (default: systemd's docker
                        unit if active, else DIR/run/docker.pid or DIR/var/run/docker.pid)
  --docker, --containerd, --podman
                        configure only these runtimes (default: every one installed)
  --user                rootless podman, for the user running this (no sudo): the drop-in and
                        certificates in ~/.config/containers/ (registries.conf.d, certs.d),
                        which podman reads before /etc/containers/; the key stays that user's
  --yes                 accepted for symmetry with install.sh; nothing is asked
  -h, --help            this text
EOF
}

say() { printf '%s\n' "$*"; }
warn() { printf '%s: %s\n' "$PROG" "$*" >&2; }
die() {
  warn "$1"
  exit "${2:-1}"
}

# duration_seconds VALUE: VALUE as whole seconds, read as the mirror reads a duration
# (docxy/core/durations.py): a bare number of seconds (10), or numbers with units, 30s, 5m, 2h,
# 7d, several together (1m30s, each unit once). Fails on anything else, a fraction included
# (whole numbers here).
duration_seconds() {
  local rest="$1" total=0 number unit seen=""
  rest="${rest#"${rest%%[![:space:]]*}"}"
  rest="${rest%"${rest##*[![:space:]]}"}"
  if [[ "$rest" =~ ^[0-9]{1,9}$ ]]; then
    printf '%s' "$((10#$rest))"
    return 0
  fi
  [[ -n "$rest" ]] || return 1
  while [[ -n "$rest" ]]; do
    [[ "$rest" =~ ^([0-9]{1,9})[[:space:]]*([a-z]+)[[:space:]]*(.*)$ ]] || return 1
    number=$((10#${BASH_REMATCH[1]}))
    unit="${BASH_REMATCH[2]}"
    rest="${BASH_REMATCH[3]}"
    [[ "$unit" == [dhms] && "$seen" != *"$unit"* ]] || return 1
    seen+="$unit"
    case "$unit" in
      d) total=$((total + number * 86400)) ;;
      h) total=$((total + number * 3600)) ;;
      m) total=$((total + number * 60)) ;;
      s) total=$((total + number)) ;;
    esac
  done
  printf '%s' "$total"
}

MIRROR="$MIRROR_DEFAULT"
REMOVE=0
DRY_RUN=0
SUMMARY=1
RELOAD=1
RELOAD_ASKED=0
# Whether the running dockerd is this run's to look at (its flags), reload and restart: not
# under --root DIR (an image's tree), unless --reload or --dockerd-pidfile asks for one.
HOST_DOCKERD=1
ALLOW_RESTART=0
ROOT=/
DAEMON_JSON=""
DAEMON_JSON_WRITTEN=0 # this run replaced it, the old one (if any) backed up at DAEMON_JSON_BACKUP
DAEMON_JSON_BACKUP=""
PIDFILE=""
USER_MODE=0 # --user: rootless podman's files, in $HOME/.config/containers (under --root DIR)
WANT_DOCKER=0
WANT_CONTAINERD=0
WANT_PODMAN=0
REGISTRIES=()
REGISTRIES_GIVEN=0 # --registry named them: --remove looks at those alone
REPLACE_HOSTS=() # --replace-host: Docker's other mirrors at these hosts are this one's old URLs
KEEP_OTHERS=0 # --keep-others: the served script's own host is not one of REPLACE_HOSTS
SERVED_HOST="" # the host of the mirror that served this script, when in REPLACE_HOSTS unasked
CLIENT_DIR=""
CA_CERT=""
MIRROR_HOST=""
FAILED=0
CHANGES=0

# host[:port] in a URL, in lower case, as dockerd and containerd can dial it: a name or IPv4
# address, or an IPv6 address in brackets; a port of digits. (A typo in the port went into
# daemon.json, which dockerd then refuses to start with; fd00::1 unbracketed dials nothing.)
HOST_PORT='(\[[0-9a-f:.]+\]|[a-z0-9.-]+)(:[0-9]{1,5})?'

# port_ok HOST[:PORT]: its port, if it names one, is 1 to 65535. HOST_PORT takes any five
# digits, and dockerd takes a mirror at port 0 or 99999, then sends every pull to Docker Hub
# without a word. A leading zero is read as Go reads it (08443 is 8443), not as octal.
port_ok() {
  local port="${1##*]}" # past an IPv6 address's brackets
  [[ "$port" == *:* ]] || return 0
  port="${port##*:}"
  ((10#$port >= 1 && 10#$port <= 65535))
}

# registry_ports_ok NAME[:PORT][=URL]: both ports, where named, are 1 to 65535 (port_ok).
registry_ports_ok() {
  port_ok "${1%%=*}" || return 1
  [[ "$1" == *=* ]] || return 0
  port_ok "$(url_host_port "${1#*=}")"
}

# canonical_url URL: URL as every file compares it: scheme and host in lower case (neither is
# case-sensitive), no trailing slash.
canonical_url() {
  local url="$1"
  while [[ "$url" == */ ]]; do url="${url%/}"; done
  local scheme="${url%%://*}" rest="${url#*://}" path=""
  [[ "$rest" == */* ]] && path="/${rest#*/}"
  rest="${rest%%/*}"
  printf '%s\n' "${scheme,,}://${rest,,}$path"
}

# served_host_replaced: the script served at /setup.sh, setting up the mirror that served it
# (no --mirror, or that same URL), takes Docker's other mirrors at that host out as
# --replace-host would: after a move (http://HOST:5000 to https://HOST) the old URL stayed
# beside the new one, dead, and dockerd tried it on every pull. Not with --keep-others, not
# for a --mirror elsewhere (the served host's entries are not that mirror's), not with
# --remove (it takes out only this mirror, as it says), and not for a mirror named by an IP
# address or localhost: a LAN box's other ports are as likely other registries or mirrors
# (a Harbor, a second Docxy) as this one's earlier URLs; --replace-host takes those out.
served_host_replaced() {
  if [[ -z "$MIRROR_DEFAULT" ]] || ((KEEP_OTHERS || REMOVE)); then return 0; fi
  [[ "$MIRROR" == "$(canonical_url "$MIRROR_DEFAULT")" ]] || return 0
  local host="$MIRROR_HOST"
  [[ "$host" == \[* ]] && return 0 # an IPv6 address
  host="${host%%:*}"
  if [[ "$host" == localhost || "$host" == *.localhost || "$host" =~ ^[0-9.]+$ ]]; then
    return 0
  fi
  SERVED_HOST="$host"
  REPLACE_HOSTS+=("$SERVED_HOST")
}

# url_host_port URL: the host[:port] of an http(s) URL.
url_host_port() {
  local rest="${1#*://}"
  printf '%s\n' "${rest%%/*}"
}

parse_args() {
  while (($#)); do
    case "$1" in
      --mirror | --root | --registry | --client-cert | --ca-cert | --daemon-json | --dockerd-pidfile | --replace-host)
        if (($# < 2)) || [[ -z "$2" ]]; then usage >&2; die "$1 needs a value" 2; fi
        ;;
    esac
    case "$1" in
      --mirror) MIRROR="$2"; shift ;;
      --mirror=*) MIRROR="${1#*=}" ;;
      --remove) REMOVE=1 ;;
      --replace-host) REPLACE_HOSTS+=("$2"); shift ;;
      --replace-host=*) REPLACE_HOSTS+=("${1#*=}") ;;
      --keep-others) KEEP_OTHERS=1 ;;
      --dry-run) DRY_RUN=1 ;;
      --no-summary) SUMMARY=0 ;;
      --no-reload) RELOAD=0 ;;
      --reload) RELOAD=1; RELOAD_ASKED=1 ;;
      --allow-restart) ALLOW_RESTART=1 ;;
      --root) ROOT="$2"; shift ;;
      --registry) REGISTRIES+=("$2"); REGISTRIES_GIVEN=1; shift ;;
      --registry=*) REGISTRIES+=("${1#*=}"); REGISTRIES_GIVEN=1 ;;
      --client-cert) CLIENT_DIR="$2"; shift ;;
      --ca-cert) CA_CERT="$2"; shift ;;
      --daemon-json) DAEMON_JSON="$2"; shift ;;
      --dockerd-pidfile) PIDFILE="$2"; shift ;;
      --docker) WANT_DOCKER=1 ;;
      --containerd) WANT_CONTAINERD=1 ;;
      --podman) WANT_PODMAN=1 ;;
      --user) USER_MODE=1 ;;
      --yes | -y) ;;
      -h | --help) usage; exit 0 ;;
      *) usage >&2; die "unknown option: $1" 2 ;;
    esac
    shift
  done
  [[ -n "$MIRROR" ]] || { usage >&2; die "--mirror URL is required" 2; }
  while [[ "$MIRROR" == */ ]]; do MIRROR="${MIRROR%/}"; done
  local url_pattern="^https?://$HOST_PORT(/[A-Za-z0-9._~/-]*)?\$"
  [[ "${MIRROR,,}" =~ $url_pattern ]] ||
    die "--mirror must be an http(s) URL such as https://mirror.example.com, not '$MIRROR'" 2
  # --remove still takes one out (written by an older version of this script, which took any).
  if ! port_ok "$(url_host_port "$MIRROR")" && ((!REMOVE)); then
    die "--mirror names a port outside 1 to 65535, which nothing listens on: '$MIRROR'" 2
  fi
  MIRROR="$(canonical_url "$MIRROR")"
  local rest="${MIRROR#*://}" path=""
  [[ "$rest" == */* ]] && path="/${rest#*/}"
  # dockerd refuses to start with a registry mirror that has a path ("invalid mirror: path,
  # query, or fragment at end of the URI"), and Docxy answers /v2/ at its root. --remove still
  # takes one out (say, one an older version of this script wrote).
  if [[ -n "$path" ]] && ((!REMOVE)); then
    die "--mirror takes the mirror's root URL (scheme, host, port), not '$MIRROR': dockerd refuses to start with a registry mirror that has a path" 2
  fi
  # A host alone: a URL given here would match no entry, and leave the old one in silently.
  local i host_pattern='^(\[[0-9a-f:.]+\]|[a-z0-9.-]+)$'
  for i in "${!REPLACE_HOSTS[@]}"; do
    REPLACE_HOSTS[i]="${REPLACE_HOSTS[i],,}"
    [[ "${REPLACE_HOSTS[i]}" =~ $host_pattern ]] ||
      die "--replace-host takes a host name such as mirror.example.com (no scheme, port or path), not '${REPLACE_HOSTS[i]}'" 2
  done
  if ((USER_MODE)); then
    if ((WANT_DOCKER || WANT_CONTAINERD)); then
      usage >&2
      die "--user sets up rootless podman alone (dockerd and containerd run as root): leave out --docker and --containerd" 2
    fi
    [[ -n "${HOME:-}" && "$HOME" == /* ]] || die "--user needs HOME, the home directory podman reads ~/.config/containers in" 2
    WANT_PODMAN=1
  fi
  ROOT="${ROOT%/}"
  if [[ -n "$ROOT" && -z "$PIDFILE" ]] && ((!RELOAD_ASKED)); then HOST_DOCKERD=0; fi
  DAEMON_JSON="${DAEMON_JSON:-$ROOT/etc/docker/daemon.json}"
  MIRROR_HOST="${MIRROR#*://}"
  MIRROR_HOST="${MIRROR_HOST%%/*}"
  served_host_replaced
  if ((${#REGISTRIES[@]} == 0)); then
    read -r -a REGISTRIES <<<"${REGISTRIES_DEFAULT:-$DOCKER_HUB}"
  fi
  # NAME:PORT for a registry whose images are named with its port: containerd reads
  # certs.d/NAME:PORT/hosts.toml for them.
  local entry url name_pattern="^[a-z0-9]([a-z0-9.-]*[a-z0-9])?(:[0-9]{1,5})?(=https?://$HOST_PORT)?\$"
  for entry in "${REGISTRIES[@]}"; do
    url="" # the URL's scheme and host in any case (the name in lower case only)
    [[ "$entry" != *=* ]] || url="=${entry#*=}"
    [[ "${entry%%=*}${url,,}" =~ $name_pattern ]] ||
      die "--registry must be a registry host name such as ghcr.io, or HOST:PORT (or NAME=https://HOST), not '$entry'" 2
    if ((!REMOVE)) && ! registry_ports_ok "$entry"; then
      die "--registry names a port outside 1 to 65535, which nothing listens on: '$entry'" 2
    fi
  done
  RELOAD_WAIT="$(duration_seconds "${DOCXY_RELOAD_WAIT:-10}")" ||
    die "DOCXY_RELOAD_WAIT=${DOCXY_RELOAD_WAIT}: expected whole seconds (10), or a duration with units: 30s, 5m, 2h (or several: 1m30s)" 2
  check_certificates
}

# --client-cert DIR must hold a certificate and its key; --ca-cert FILE a certificate. With
# --remove they are not read: the installed copies go, whatever DIR holds now.
check_certificates() {
  ((REMOVE)) && return 0
  if [[ -n "$CLIENT_DIR" ]]; then
    CLIENT_DIR="${CLIENT_DIR%/}"
    [[ "$MIRROR" == https://* ]] ||
      die "--client-cert needs an https:// mirror: certificates are only presented over TLS" 2
    is_pem "$CLIENT_DIR/client.cert" CERTIFICATE ||
      die "--client-cert: $CLIENT_DIR/client.cert is missing or not a PEM certificate" 2
    is_pem "$CLIENT_DIR/client.key" "PRIVATE KEY" ||
      die "--client-cert: $CLIENT_DIR/client.key is missing or not a PEM private key" 2
    # `docxy clients add` renames the new key, then the new certificate: a pending one is the
    # trace of a run cut short, whose key may sit beside another pair's certificate.
    if [[ -e "$CLIENT_DIR/.client.cert.pending" || -e "$CLIENT_DIR/.client.key.pending" ]]; then
      die "--client-cert: $CLIENT_DIR holds a kit that \`docxy clients add\` did not finish (a .client.*.pending file): run it again" 2
    fi
  fi
  if [[ -n "$CA_CERT" ]]; then
    [[ "$MIRROR" == https://* ]] || die "--ca-cert needs an https:// mirror" 2
    is_pem "$CA_CERT" CERTIFICATE || die "--ca-cert: $CA_CERT is missing or not a PEM certificate" 2
  fi
}

# is_pem FILE KIND: FILE is readable and holds a "-----BEGIN ...KIND-----" block.
is_pem() { [[ -r "$1" ]] && grep -q -- "^-----BEGIN [A-Z ]*$2-----" "$1"; }

# The registry name of a --registry entry (NAME or NAME=URL), and the server containerd falls
# back to when the mirror does not answer.
registry_name() { printf '%s' "${1%%=*}"; }
registry_server() {
  if [[ "$1" == *=* ]]; then
    printf '%s' "${1#*=}"
  elif [[ "$1" == "$DOCKER_HUB" ]]; then
    printf '%s' "$DOCKER_HUB_SERVER"
  else
    printf 'https://%s' "$1"
  fi
}

# The path P on this host, taken under --root.
under_root() { printf '%s%s' "$ROOT" "$1"; }

have() { command -v "$1" >/dev/null 2>&1; }

# --- files: backup, validate, atomic replace ------------------------------------------------

# backup_file TARGET: copy TARGET aside (timestamped, never overwriting an older backup).
# LAST_BACKUP names it (empty: no file was there to back up).
LAST_BACKUP=""
backup_file() {
  local backup
  backup="$1.$BACKUP_SUFFIX-$(date -u +%Y%m%dT%H%M%SZ)"
  while [[ -e "$backup" ]]; do backup="$backup.1"; done
  cp -p -- "$1" "$backup"
  LAST_BACKUP="$backup"
  say "  backed up the old file to $backup"
}

# install_file TARGET NEWFILE MODE [BACKUP_AT]: back TARGET up (if it exists; beside BACKUP_AT
# when given), then rename NEWFILE over it.
install_file() {
  local target="$1" new="$2" mode="$3"
  if [[ -e "$target" ]]; then
    backup_file "${4:-$target}"
    chmod --reference="$target" -- "$new"
    chown --reference="$target" -- "$new" 2>/dev/null || true
  else
    chmod "$mode" -- "$new"
  fi
  mv -f -- "$new" "$target"
}

# real_target PATH: PATH, or the file it links to (some hosts keep daemon.json in a config
# repository and link it into /etc/docker): that file is replaced, the link stays.
real_target() {
  local real
  if [[ ! -L "$1" ]]; then
    printf '%s' "$1"
    return
  fi
  real="$(readlink -f -- "$1")" || die "$1 is a link that leads nowhere (a loop?): fix it first"
  printf '%s' "$real"
}

# make_dir DIR: DIR and its missing parents, 0755 whatever the umask (a hardened root's 077
# made /etc/containers/registries.conf.d 0700: rootless podman, which reads it as its user,
# failed every command). The files in them get their own modes.
make_dir() { (umask 022 && mkdir -p -- "$1"); }

# place_file TARGET CONTENT MODE: put the file CONTENT at TARGET (or the file TARGET links to),
# atomically: copied to a temporary file beside it (same file system), then renamed over it.
# The backup goes beside TARGET. CONTENT is removed.
place_file() {
  local link="$1" content="$2" mode="$3" target dir staged
  target="$(real_target "$link")"
  [[ "$target" == "$link" ]] || say "  $link links to $target: writing that file"
  dir="$(dirname -- "$target")"
  if [[ ! -d "$dir" ]]; then
    make_dir "$dir"
    say "  created $dir"
  fi
  staged="$(mktemp "$dir/.$(basename -- "$target").XXXXXX")"
  cat -- "$content" >"$staged"
  rm -f -- "$content"
  install_file "$target" "$staged" "$mode" "$link"
  CHANGES=$((CHANGES + 1))
}

show_new_content() {
  say "  would write $1:"
  sed 's/^/    | /' -- "$2"
}

# copy_in SOURCE TARGET MODE: a copy of SOURCE at TARGET with MODE, replaced atomically; kept
# as it is when it already holds the same bytes and mode. No backup: a certificate or key is
# not an operator's edit, and an old key should not linger in a copy.
copy_in() {
  local source="$1" target dir staged mode="$3"
  target="$(real_target "$2")"
  if [[ -f "$target" ]] && cmp -s -- "$source" "$target" &&
    [[ "$(stat -c %a -- "$target")" == "${mode#0}" ]]; then
    say "  $target: unchanged"
    return
  fi
  if ((DRY_RUN)); then
    say "  would install $target (mode $mode) from $source"
    return
  fi
  dir="$(dirname -- "$target")"
  if [[ ! -d "$dir" ]]; then
    make_dir "$dir"
    say "  created $dir"
  fi
  staged="$(mktemp "$dir/.$(basename -- "$target").XXXXXX")"
  chmod "$mode" -- "$staged"
  cat -- "$source" >"$staged"
  mv -f -- "$staged" "$target"
  CHANGES=$((CHANGES + 1))
  say "  installed $target (mode $mode)"
}

# remove_file TARGET: delete TARGET if it is there.
remove_file() {
  [[ -e "$1" ]] || return 0
  if ((DRY_RUN)); then
    say "  would remove $1"
    return
  fi
  rm -f -- "$1"
  CHANGES=$((CHANGES + 1))
  say "  removed $1"
}

# --- Docker: certs.d/<mirror-host>/ ------------------------------------------------------------

# Docker reads /etc/docker/certs.d/<host[:port]>/ at each pull from that host, registry
# mirrors included: client.cert + client.key are presented to the mirror, and a ca.crt there
# is trusted for the mirror's server certificate. The ca.crt that `docxy clients add` writes is
# the mirror's client CA: it never goes there (it would let that CA vouch for the server).
configure_docker_certs() {
  certs_d Docker "$(under_root "/etc/docker/certs.d/$MIRROR_HOST")"
}

# certs_d RUNTIME DIR: the client certificate and server CA in a certs.d/<mirror-host>/ DIR
# (Docker's, or podman's: containers/image reads the same names), or taken out with --remove.
# The operator may keep files of their own there (a ca.crt placed by hand): what this script
# installs is noted, with its SHA-256, in DIR/docxy-installed.sha256 (a name Docker and podman pass
# by), and --remove deletes only a file that is still as noted, or that is byte for byte the
# --client-cert DIR / --ca-cert FILE given to it (an install from before the note was kept).
# Every other file stays, named; one of the operator's that --client-cert or --ca-cert would
# replace is backed up beside it first, under a name neither reads as a certificate.
certs_d() {
  local runtime="$1" dir="$2" name
  if ((REMOVE)); then
    [[ -d "$dir" ]] || return 0
    say "$runtime: $dir"
    remove_installed "$dir" client.cert client.key ca.crt
    if ((!DRY_RUN)); then rm -f -- "${dir:?}/$CERTS_RECORD"; fi
    if [[ -d "$dir" ]] && ((!DRY_RUN)) && rmdir -- "$dir" 2>/dev/null; then
      say "  removed $dir"
    fi
    return
  fi
  [[ -n "$CLIENT_DIR$CA_CERT" ]] || return 0
  say "$runtime: $dir (read at each pull: no reload needed)"
  if [[ -n "$CLIENT_DIR" ]]; then
    certs_copy "$dir" client.cert "$CLIENT_DIR/client.cert" 0644
    certs_copy "$dir" client.key "$CLIENT_DIR/client.key" 0600
  fi
  [[ -z "$CA_CERT" ]] || certs_copy "$dir" ca.crt "$CA_CERT" 0644
}

CERTS_RECORD=docxy-installed.sha256

# file_sum FILE: the SHA-256 of FILE, in hex.
file_sum() {
  python3 -c 'import hashlib, sys; print(hashlib.sha256(open(sys.argv[1], "rb").read()).hexdigest())' "$1"
}

# recorded_sum DIR NAME: the SHA-256 that DIR's record notes for NAME; fails when it notes none.
recorded_sum() {
  local sum name
  [[ -f "$1/$CERTS_RECORD" ]] || return 1
  while read -r sum name; do
    if [[ "$name" == "$2" ]]; then
      printf '%s' "$sum"
      return 0
    fi
  done <"$1/$CERTS_RECORD"
  return 1
}

# installed_here DIR NAME: DIR/NAME is the file this script installed there (as noted, or the
# same bytes as the file this run was given for it). NAME is certs.d's (client.cert, client.key,
# ca.crt) or a copy's beside a hosts.toml (client-<mirror-host>.cert, .key, ca-<mirror-host>.crt).
installed_here() {
  local dir="$1" name="$2" recorded source=""
  [[ -f "$dir/$name" && ! -L "$dir/$name" ]] || return 1
  if recorded="$(recorded_sum "$dir" "$name")" && [[ "$(file_sum "$dir/$name")" == "$recorded" ]]; then
    return 0
  fi
  case "$name" in
    client.cert | client-*.cert) [[ -z "$CLIENT_DIR" ]] || source="${CLIENT_DIR%/}/client.cert" ;;
    client.key | client-*.key) [[ -z "$CLIENT_DIR" ]] || source="${CLIENT_DIR%/}/client.key" ;;
    ca.crt | ca-*.crt) source="$CA_CERT" ;;
  esac
  [[ -n "$source" && -f "$source" ]] && cmp -s -- "$source" "$dir/$name"
}

# record_sum DIR NAME: note in DIR's record that this script installed DIR/NAME as it is now.
record_sum() {
  local dir="$1" name="$2" record="$1/$CERTS_RECORD" sum staged
  sum="$(file_sum "$dir/$name")"
  [[ "$(recorded_sum "$dir" "$name" || true)" != "$sum" ]] || return 0
  staged="$(mktemp "$dir/.$CERTS_RECORD.XXXXXX")"
  if [[ -f "$record" ]]; then awk -v name="$name" '$2 != name' "$record" >"$staged"; fi
  printf '%s %s\n' "$sum" "$name" >>"$staged"
  chmod 0644 -- "$staged"
  mv -f -- "$staged" "$record"
}

# forget_sum DIR NAME: take NAME out of DIR's record (the record goes when it notes no other).
forget_sum() {
  local dir="$1" record="$1/$CERTS_RECORD" staged
  [[ -f "$record" ]] || return 0
  staged="$(mktemp "$dir/.$CERTS_RECORD.XXXXXX")"
  awk -v name="$2" '$2 != name' "$record" >"$staged"
  if [[ -s "$staged" ]]; then
    chmod 0644 -- "$staged"
    mv -f -- "$staged" "$record"
  else
    rm -f -- "$staged" "$record"
  fi
}

# remove_installed DIR NAME...: --remove of the files this script installed in DIR (installed_here),
# each taken out of the record; any other is left, named.
remove_installed() {
  local dir="$1" name
  shift
  for name in "$@"; do
    [[ -e "$dir/$name" || -L "$dir/$name" ]] || continue
    if installed_here "$dir" "$name"; then
      remove_file "$dir/$name"
    else
      say "  left $dir/$name: this script did not install it (or it changed since)"
    fi
    if ((!DRY_RUN)); then forget_sum "$dir" "$name"; fi
  done
}

# certs_copy DIR NAME SOURCE MODE: install SOURCE as DIR/NAME (copy_in) and note it. A different
# DIR/NAME that this script did not install (the operator's) is backed up first.
certs_copy() {
  local dir="$1" name="$2" source="$3" mode="$4"
  if [[ -f "$dir/$name" ]] && ! cmp -s -- "$source" "$dir/$name" && ! installed_here "$dir" "$name"; then
    if ((DRY_RUN)); then
      say "  would back up $dir/$name (this script did not install it) before replacing it"
    else
      say "  $dir/$name: this script did not install it"
      backup_file "$dir/$name"
    fi
  fi
  copy_in "$source" "$dir/$name" "$mode"
  # Written, or already the same bytes (an install from before the record was kept): noted.
  if ((!DRY_RUN)); then record_sum "$dir" "$name"; fi
}

# --- Docker: daemon.json ---------------------------------------------------------------------

# The JSON work, in python3's json module. Modes:
#   merge|remove FILE URL OUT [HOST...]
#                              write the new document to OUT, every other mirror at a HOST
#                              taken out too (--replace-host), and print what goes: with
#                              remove URL (once, as compared) if it was there, then each
#                              other URL at a HOST as FILE spells it; exit 0 changed, 10
#                              unchanged, 3 FILE is not a JSON object with a list of strings
#                              as mirrors
#   validate FILE              exit 0 when FILE is a JSON object, 3 otherwise
#   insecure FILE              print FILE's "insecure-registries" one per line; exit 0 when
#                              it has that key (whatever its value), 1 when not
#   mirrors JSON               print the mirrors of `docker info` (a JSON list) one per line,
#                              scheme and host in lower case, no trailing slash
daemon_json_tool() {
  python3 - "$@" <<'PY'
import json
import sys
from urllib.parse import urlsplit


def fail(path, why):
    print(f"{path}: {why}; left as it is", file=sys.stderr)
    sys.exit(3)


def unique_keys(pairs):
    keys = [key for key, _ in pairs]
    if len(keys) != len(set(keys)):
        raise ValueError("a key appears twice")
    return dict(pairs)


# A UTF-8 byte order mark (Notepad writes one) is read past, as dockerd 23.0 and later do, and
# written back. dockerd also reads UTF-16 with a mark; that is a Windows file: refused, named.
BOM = b"\xef\xbb\xbf"
UTF16_MARKS = (b"\xff\xfe", b"\xfe\xff")
COMMENT_STARTS = ("//", "/*", "#")


def read_text(path):
    """The text of the file at path and the byte order mark it began with (b"" for none)."""
    try:
        with open(path, "rb") as handle:
            raw = handle.read()
    except FileNotFoundError:
        return "", b""
    except OSError as exc:
        fail(path, f"cannot be read ({exc})")
    if raw.startswith(UTF16_MARKS):
        fail(path, "is UTF-16 (it starts with a UTF-16 byte order mark): save it as UTF-8")
    mark = BOM if raw.startswith(BOM) else b""
    try:
        return raw[len(mark):].decode("utf-8"), mark
    except UnicodeDecodeError as exc:
        fail(path, f"cannot be read ({exc})")


def not_json(path, text, exc):
    """Say why text is not JSON: by name when the parser stopped at a comment."""
    if isinstance(exc, json.JSONDecodeError) and text[exc.pos:].startswith(COMMENT_STARTS):
        fail(path, f"has a comment at line {exc.lineno} column {exc.colno}: JSON allows none,"
                   " and dockerd refuses the file too; delete it")
    if isinstance(exc, json.JSONDecodeError):
        # Python 3.13 points at the comma ("Illegal trailing comma"), older ones at the } or ]
        at, comma = exc.pos, None
        if text[at:at + 1] == "," and text[at + 1:].lstrip()[:1] in ("}", "]"):
            comma = at
        elif text[at:at + 1] in ("}", "]") and text[:at].rstrip().endswith(","):
            comma = len(text[:at].rstrip()) - 1
        if comma is not None:
            line = text.count("\n", 0, comma) + 1
            column = comma - text.rfind("\n", 0, comma)
            fail(path, f"has a trailing comma at line {line} column {column}: JSON allows"
                       " none, and dockerd refuses the file too; delete it")
    fail(path, f"is not valid JSON ({exc})")


def load(path):
    """The document in the file at path (a missing or blank file is {}) and its byte order mark.

    "registry-mirrors": null is read as dockerd reads it: no mirrors.
    """
    text, mark = read_text(path)
    if not text.strip():
        return {}, mark
    try:
        document = json.loads(text, object_pairs_hook=unique_keys)
    except ValueError as exc:
        not_json(path, text, exc)
    if not isinstance(document, dict):
        fail(path, "is not a JSON object")
    mirrors = document.get("registry-mirrors")
    if mirrors is None:
        mirrors = []
    if not isinstance(mirrors, list) or not all(isinstance(m, str) for m in mirrors):
        fail(path, '"registry-mirrors" is not a list of URLs')
    return document, mark


def canonical(url):
    """The URL as compared: scheme and host in lower case, no trailing slash."""
    scheme, sep, rest = url.rstrip("/").partition("://")
    host, slash, path = rest.partition("/")
    return f"{scheme.lower()}{sep}{host.lower()}{slash}{path}"


def same(a, b):
    return canonical(a) == canonical(b)


def host(url):
    """The URL's host in lower case, without port or an IPv6 address's brackets (None for no
    http(s) URL): mirror.example.com:8443's is mirror.example.com, and so is
    HTTP://Mirror.Example.com/'s, while mirror.example.com.evil.net is another host."""
    try:
        parts = urlsplit(url.strip())
        return parts.hostname if parts.scheme.lower() in ("http", "https") else None
    except ValueError:
        return None


mode = sys.argv[1]
if mode == "mirrors":
    try:
        mirrors = json.loads(sys.argv[2]) or []
    except ValueError:
        sys.exit(1)  # not an answer from a daemon
    # As the file's are compared: dockerd reports a mirror as daemon.json spells it (its host
    # in the operator's case), plus a slash.
    for url in mirrors if isinstance(mirrors, list) else []:
        if isinstance(url, str):
            print(canonical(url))
    sys.exit(0)
path = sys.argv[2]
document, mark = load(path)
if mode == "validate":
    sys.exit(0)
if mode == "has-mirrors":  # the key at all: dockerd refuses it beside --registry-mirror
    sys.exit(0 if "registry-mirrors" in document else 1)
if mode == "insecure":  # the key at all (any value: [] and null too), its strings one a line
    listed = document.get("insecure-registries")
    for entry in listed if isinstance(listed, list) else []:
        if isinstance(entry, str):
            print(entry)
    sys.exit(0 if "insecure-registries" in document else 1)
url, out, hosts = sys.argv[3], sys.argv[4], {h.strip("[]") for h in sys.argv[5:]}
had = document.get("registry-mirrors") is not None
mirrors = document.get("registry-mirrors") or []
others = [m for m in mirrors if not same(m, url) and host(m) not in hosts]
wanted = [url, *others] if mode == "merge" else others
if wanted == mirrors and (had or mode == "remove"):
    sys.exit(10)
# What goes, one a line: with remove this mirror (as compared, once), then each other URL of a
# replaced host as the file spells it.
if mode == "remove" and any(same(m, url) for m in mirrors):
    print(canonical(url))
for m in mirrors:
    if not same(m, url) and host(m) in hosts:
        print(m)
# The last mirror taken out leaves "registry-mirrors": [], not no key: dockerd's reload takes
# the mirrors from the file only when the key is there, and would go on using this one.
document["registry-mirrors"] = wanted
with open(out, "wb") as handle:
    handle.write(mark + json.dumps(document, indent=2, ensure_ascii=False).encode() + b"\n")
PY
}

configure_docker() {
  local verb=merge new rc=0 gone url
  ((REMOVE)) && verb=remove
  say "Docker: $DAEMON_JSON"
  new="$(mktemp)"
  gone="$(daemon_json_tool "$verb" "$DAEMON_JSON" "$MIRROR" "$new" "${REPLACE_HOSTS[@]}")" || rc=$?
  if ((rc == 3)); then
    rm -f -- "$new"
    warn "fix $DAEMON_JSON by hand (it was not changed), then run this again"
    exit 3
  elif ((rc != 0 && rc != 10)); then
    rm -f -- "$new"
    die "could not build the new $DAEMON_JSON (python3 exited with $rc)"
  fi
  if ((!REMOVE)) && mirror_flag_set; then
    rm -f -- "$new"
    beside_the_flag
    return
  fi
  if ((REMOVE && rc == 10)) && mirror_flag_set && mirror_on_the_flag; then
    rm -f -- "$new"
    return
  fi
  if ((rc == 10)); then
    rm -f -- "$new"
    if ((REMOVE)); then
      say "  $MIRROR is not in registry-mirrors: nothing to remove"
    else
      say "  $MIRROR is already the first registry mirror: unchanged"
    fi
    confirm_docker unchanged
    return
  fi
  # The written document is read back before it replaces anything.
  daemon_json_tool validate "$new" || { rm -f -- "$new"; die "the new daemon.json did not validate"; }
  if ((DRY_RUN)); then
    show_new_content "$DAEMON_JSON" "$new"
    rm -f -- "$new"
    while IFS= read -r url; do
      [[ -z "$url" ]] || say "  would remove $url from registry-mirrors"
    done <<<"$gone"
    served_host_said "$gone"
    if ((HOST_DOCKERD && RELOAD)); then say "  would reload dockerd and check \`docker info\`"; fi
    return
  fi
  LAST_BACKUP=""
  place_file "$DAEMON_JSON" "$new" 0644
  DAEMON_JSON_WRITTEN=1 DAEMON_JSON_BACKUP="$LAST_BACKUP"
  ((REMOVE)) || say "  registry-mirrors now starts with $MIRROR"
  while IFS= read -r url; do
    [[ -z "$url" ]] || say "  removed $url from registry-mirrors"
  done <<<"$gone"
  served_host_said "$gone"
  confirm_docker changed
}

# served_host_said GONE: when the served script took out mirrors at its own host unasked
# (served_host_replaced) and GONE names any, why, and how to keep them.
served_host_said() {
  [[ -n "$SERVED_HOST" && -n "$1" ]] || return 0
  say "  (other mirrors at $SERVED_HOST are taken for earlier URLs of this one; --keep-others keeps them)"
}

# dockerd runs with --registry-mirror on its command line (its unit or service file): it
# refuses to start with a registry-mirrors key in daemon.json beside that flag ("directives are
# specified both as a flag and in the configuration file"), so none is written; one already
# there (written before the flag was, say: the reload was refused) leaves Docker down at the
# next restart or boot, and is a failure whatever it lists. Nothing is changed or restarted.
beside_the_flag() {
  local mirrors
  if daemon_json_tool has-mirrors "$DAEMON_JSON"; then
    warn "dockerd runs with --registry-mirror on its command line, and $DAEMON_JSON has"
    warn "registry-mirrors too: dockerd refuses to start with both, so its next restart or"
    warn "boot leaves Docker down. Take registry-mirrors out of $DAEMON_JSON (by hand, or with"
    warn "this script's --remove where it lists only $MIRROR) and put --registry-mirror=$MIRROR"
    warn "on that command line"
    FAILED=1
    return
  fi
  if mirrors="$(active_mirrors)" && mirror_active "$mirrors"; then
    mirror_passed_by && return 0
    say "  dockerd already uses $MIRROR, from --registry-mirror on its command line:"
    say "  $DAEMON_JSON left as it is (dockerd refuses registry-mirrors there beside that flag)"
    return
  fi
  warn "dockerd runs with --registry-mirror on its command line (its unit or service file):"
  warn "a registry-mirrors key in $DAEMON_JSON beside that flag stops dockerd from starting"
  warn "(\"directives are specified both as a flag and in the configuration file\"). Add"
  warn "--registry-mirror=$MIRROR to that command line instead, or move its mirrors into"
  warn "$DAEMON_JSON and drop the flag; $DAEMON_JSON was not changed"
  FAILED=1
}

# --remove, the file without the mirror, and dockerd (run with --registry-mirror) using it all
# the same: it comes from that flag, which no reload or restart takes away. Said, and a failure;
# nothing is signalled. Fails (goes on as usual) when dockerd does not use the mirror.
mirror_on_the_flag() {
  local mirrors
  mirrors="$(active_mirrors)" && mirror_active "$mirrors" || return 1
  warn "dockerd uses $MIRROR from --registry-mirror on its command line (its unit or service"
  warn "file), not from $DAEMON_JSON: no reload takes it away. Take --registry-mirror=$MIRROR"
  warn "off that command line (systemctl edit docker), then restart dockerd"
  FAILED=1
}

# The mirrors the running dockerd uses, one per line; fails when no daemon answers.
active_mirrors() {
  local out
  have docker || return 1
  out="$(docker info --format '{{json .RegistryConfig.Mirrors}}' 2>/dev/null)" || return 1
  daemon_json_tool mirrors "$out"
}

# mirror_passed_by: dockerd lists the plain-HTTP mirror (`docker info`) yet will not use it: its
# registry config counts the mirror's host secure (no insecure-registries entry for it, no
# InsecureRegistryCIDRs range holding it), so it passes the mirror by and pulls from Docker Hub.
# Said, and a failure. Fails (says nothing) when the mirror is used, HTTPS, or that does not tell.
mirror_passed_by() {
  local config rc=0
  [[ "$MIRROR" == http://* ]] || return 1
  config="$(docker info --format '{{json .RegistryConfig}}' 2>/dev/null)" || return 1
  registry_host_tool counted "$MIRROR_HOST" "$config" || rc=$?
  ((rc == 1)) || return 1
  warn "\`docker info\` lists $MIRROR, yet dockerd will not use it: it counts \"$MIRROR_HOST\" secure"
  warn "(not in its insecure-registries, nor in its InsecureRegistryCIDRs), so it passes this"
  warn "plain-HTTP mirror by and pulls from Docker Hub. Add \"$MIRROR_HOST\" to \"insecure-registries\""
  warn "(not added here) and reload dockerd, or serve the mirror over HTTPS"
  FAILED=1
}

mirror_active() {
  local url
  while IFS= read -r url; do
    [[ "${url%/}" == "$MIRROR" ]] && return 0
  done <<<"$1"
  return 1
}

# Did dockerd take the file? Polled for up to DOCXY_RELOAD_WAIT (default 10 s; 30s, 1m: a
# duration as the mirror's settings take them): a SIGHUP reload finishes after kill returns.
RELOAD_WAIT=10
docker_agrees() {
  local tries=$((RELOAD_WAIT * 2)) mirrors
  while ((tries-- > 0)); do
    if mirrors="$(active_mirrors)"; then
      if ((REMOVE)); then
        mirror_active "$mirrors" || return 0
      else
        mirror_active "$mirrors" && return 0
      fi
    fi
    sleep 0.5
  done
  return 1
}

dockerd_pid() {
  local file pid
  for file in "$PIDFILE" "$(under_root /run/docker.pid)" "$(under_root /var/run/docker.pid)"; do
    [[ -n "$file" && -r "$file" ]] || continue
    pid="$(tr -dc '0-9' <"$file")"
    [[ -n "$pid" ]] && { printf '%s' "$pid"; return 0; }
  done
  return 1
}

# is_dockerd PID: whether PID is a running dockerd. A pid file left by a dockerd that is gone (or
# one under --root, an image's) may name any process of this host now, and SIGHUP ends most
# programs. The host's own /proc, whatever --root says: the pid is this host's.
is_dockerd() {
  local comm
  comm="$(cat "/proc/$1/comm" 2>/dev/null)" || return 1
  [[ "$comm" == dockerd ]]
}

# dockerd_args: the running dockerd's command line (systemd's docker unit's, else the pid
# file's), one argument a line; with none running, the one systemd's docker unit starts it
# with (its flags count at the next start all the same); fails when there is none to look at.
dockerd_args() {
  local pid=""
  ((HOST_DOCKERD)) || return 1
  if systemd_docker_active; then
    pid="$(systemctl show --property MainPID --value docker 2>/dev/null)" || pid=""
  fi
  if [[ ! "$pid" =~ ^[1-9][0-9]*$ ]] && ! pid="$(dockerd_pid)"; then
    unit_dockerd_args
    return
  fi
  is_dockerd "$pid" || { unit_dockerd_args; return; }
  tr '\0' '\n' <"/proc/$pid/cmdline" 2>/dev/null
}

# unit_dockerd_args: the command line in systemd's docker unit (ExecStart, drop-ins applied:
# "{ path=... ; argv[]=/usr/bin/dockerd -H fd:// ... ; ... }"), one argument a line; fails
# without one. Not with --dockerd-pidfile, which names a dockerd of its own.
unit_dockerd_args() {
  local line
  [[ -z "$PIDFILE" ]] && have systemctl || return 1
  line="$(systemctl show --property ExecStart --value docker 2>/dev/null)" || return 1
  [[ "$line" == *"argv[]="* ]] || return 1
  line="${line#*"argv[]="}"
  line="${line%%" ;"*}"
  tr -s ' ' '\n' <<<"$line"
}

# mirror_flag_set: whether the running dockerd was started with --registry-mirror, which it
# refuses to combine with a registry-mirrors key in daemon.json (it would not start again).
mirror_flag_set() {
  dockerd_args | grep -q -e '^--registry-mirror\b'
}

# insecure_flags: the values of the running dockerd's --insecure-registry flags, one a line;
# fails when it has none.
insecure_flags() {
  local arg next=0 found=1
  while IFS= read -r arg; do
    if ((next)); then
      printf '%s\n' "$arg"
      next=0 found=0
    elif [[ "$arg" == --insecure-registry=* ]]; then
      printf '%s\n' "${arg#*=}"
      found=0
    elif [[ "$arg" == --insecure-registry ]]; then
      next=1
    fi
  done < <(dockerd_args || true)
  return "$found"
}

# dockerd_version: the running dockerd's version as `docker version` gives it (20.10.24+dfsg1);
# fails when it does not tell (no dockerd answering, not this host's).
dockerd_version() {
  local out
  ((HOST_DOCKERD)) && have docker || return 1
  out="$(docker version --format '{{.Server.Version}}' 2>/dev/null)" || return 1
  out="${out%%$'\n'*}"
  [[ "$out" =~ ^[0-9]+\.[0-9]+ ]] || return 1
  printf '%s' "$out"
}

# version_at_least VERSION MAJOR MINOR
version_at_least() {
  [[ "$1" =~ ^([0-9]+)\.([0-9]+) ]] || return 1
  local major=$((10#${BASH_REMATCH[1]})) minor=$((10#${BASH_REMATCH[2]}))
  ((major > $2 || (major == $2 && minor >= $3)))
}

systemd_docker_active() {
  [[ -z "$PIDFILE" ]] && have systemctl && systemctl is-active --quiet docker 2>/dev/null
}

reload_dockerd() {
  local pid
  if systemd_docker_active; then
    say "  reloading dockerd: systemctl reload docker"
    # dockerd is running: whether the reload failed or not, `docker info` tells if it took.
    systemctl reload docker || warn "systemctl reload docker failed"
  elif pid="$(dockerd_pid)"; then
    if ! is_dockerd "$pid"; then
      warn "the dockerd pid file names pid $pid, which is not a running dockerd: not signalled"
      return 1
    fi
    say "  reloading dockerd: SIGHUP to pid $pid"
    env kill -s HUP "$pid"
  else
    say "  no running dockerd found: it reads the mirror when it starts"
    return 1
  fi
}

# dockerd did not start with the new daemon.json (a flag in its unit that the file now repeats,
# such as --registry-mirror): the old file goes back (none: the new one goes) and dockerd is
# started with it, so the host is left as it was, and says so.
restore_daemon_json() {
  local target staged
  target="$(real_target "$DAEMON_JSON")"
  warn "dockerd did not start with $DAEMON_JSON (see: journalctl -u docker)"
  if ((!DAEMON_JSON_WRITTEN)); then
    warn "this run did not change it; dockerd is not running: systemctl status docker"
    return 0
  elif [[ -n "$DAEMON_JSON_BACKUP" ]]; then
    staged="$(mktemp "$(dirname -- "$target")/.$(basename -- "$target").XXXXXX")"
    cp -p -- "$DAEMON_JSON_BACKUP" "$staged"
    mv -f -- "$staged" "$target"
    warn "put the old file back (from $DAEMON_JSON_BACKUP)"
  else
    rm -f -- "$target"
    warn "removed the new file (there was none before)"
  fi
  if systemctl restart docker; then
    warn "dockerd runs again with its old settings; the mirror is not configured for it"
  else
    warn "dockerd does not start with its old settings either: systemctl status docker"
  fi
}

# confirm_docker changed|unchanged: make the running dockerd use the file, and check it does.
confirm_docker() {
  local state="$1" mirrors
  ((DRY_RUN)) && return 0
  if ((!HOST_DOCKERD)); then
    say "  not reloading dockerd: --root $ROOT is not this host's (--reload, or --dockerd-pidfile P,"
    say "  reloads this host's running one)"
    return 0
  fi
  if [[ "$state" == unchanged ]]; then
    mirrors="$(active_mirrors)" || return 0
    if ((REMOVE)) && ! mirror_active "$mirrors"; then
      return 0
    elif ((!REMOVE)) && mirror_active "$mirrors"; then
      mirror_passed_by || say "  docker info: dockerd already uses $MIRROR"
      return 0
    fi
    say "  docker info: the running dockerd does not match the file yet"
  fi
  if ((!RELOAD)); then
    say "  not reloading dockerd (--no-reload): run 'systemctl reload docker' to apply"
    return 0
  fi
  if ! reload_dockerd; then
    # None found to reload, yet `docker info` may reach one (a snap's, another unit name's).
    local active=0
    mirrors="$(active_mirrors)" || return 0
    mirror_active "$mirrors" && active=1
    if ((active != REMOVE)); then return 0; fi
    warn "yet \`docker info\` answers, from a dockerd without this change: one this script cannot"
    warn "reload (not systemd's docker unit, no pid file) or that reads another daemon.json: restart it"
    FAILED=1
    return 0
  fi
  if ! have docker; then
    say "  no docker command here to confirm the reload with"
    return 0
  fi
  if docker_agrees; then
    if ((REMOVE)); then
      say "  docker info: dockerd no longer uses $MIRROR"
    elif ! mirror_passed_by; then
      say "  docker info: dockerd now uses $MIRROR"
    fi
    return 0
  fi
  if ((ALLOW_RESTART)) && systemd_docker_active; then
    say "  the reload did not take: restarting dockerd (systemctl restart docker)"
    if ! systemctl restart docker; then
      restore_daemon_json
      FAILED=1
      return 0
    fi
    if docker_agrees; then
      if ((!REMOVE)) && mirror_passed_by; then return 0; fi
      say "  docker info: dockerd uses the new settings after the restart"
      return 0
    fi
    # Restarted, and still without the change: another restart cannot help.
    warn "dockerd was restarted, and \`docker info\` still does not show the change:"
    warn "it does not read $DAEMON_JSON, or its command line overrides it. Look there"
    warn "(ps -o args= -C dockerd, or its unit: systemctl cat docker) for --config-file"
    warn "(another daemon.json) or --registry-mirror (mirrors named beside the file's)"
    FAILED=1
    return 0
  fi
  warn "dockerd did not pick up the change (\`docker info\` does not show it)."
  if ! systemd_docker_active; then
    # --allow-restart restarts systemd's docker unit alone: not this dockerd.
    warn "restart this dockerd to apply (it is not systemd's docker unit, which is all"
    warn "--allow-restart restarts); that stops its running containers unless live-restore is on"
  else
    warn "restart it to apply: systemctl restart docker, which stops its running containers unless"
    warn "live-restore is on (or rerun with --allow-restart, which puts the old file back if it fails)"
  fi
  FAILED=1
}

# --- containerd: certs.d/<registry>/hosts.toml ------------------------------------------------

# The hosts.toml work, in python3. Modes:
#   merge|remove FILE URL OUT REGISTRY SERVER NAME_SERVER [CLIENT_CERT CLIENT_KEY CA]
#                              exit 0 changed (OUT written, or empty OUT: delete FILE), 10
#                              unchanged; NAME_SERVER is the server REGISTRY alone gives (an
#                              earlier run's, which SERVER replaces); the last three are paths
#                              for hosts.toml ("" for none)
#   config-path CONFIG         print containerd's CRI config_path (nothing if unset)
hosts_toml_tool() {
  python3 - "$@" <<'PY'
import json
import re
import sys

# A [host."..."] table's header, as TOML allows it: spaces around the dot, a comment after.
HEADER = re.compile(r"""^\s*\[\s*host\s*\.\s*(?:"([^"]*)"|'([^']*)')\s*\]\s*(?:#.*)?$""")
MARK = "# Written by Docxy's configure-client.sh"


def blocks(lines):
    """Split into the preamble and [host."..."] blocks (url, lines up to the next host)."""
    preamble, found = [], []
    for line in lines:
        header = HEADER.match(line)
        if header:
            found.append((header.group(1) or header.group(2), [line]))
        elif found:
            found[-1][1].append(line)
        else:
            preamble.append(line)
    return preamble, found


def config_path(path):
    try:
        with open(path, "rb") as handle:
            raw = handle.read()
    except FileNotFoundError:
        return
    except OSError as exc:
        print(f"unreadable: {exc}")
        return
    try:
        import tomllib  # Python 3.11+
    except ImportError:  # Ubuntu 22.04's 3.10: the first config_path line will do
        found = re.search(rb'^\s*config_path\s*=\s*"([^"]*)"', raw, re.M)
        if found:
            print(found.group(1).decode())
        return
    try:
        config = tomllib.loads(raw.decode())
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        print(f"unreadable: {exc}")
        return
    plugins = config.get("plugins", {})
    for name in ("io.containerd.cri.v1.images", "io.containerd.grpc.v1.cri"):
        value = plugins.get(name, {}).get("registry", {}).get("config_path")
        if value:
            print(value)
            return


def our_block(url, cert, key, ca):
    """The mirror's [host] table: a TOML basic string is a JSON string for these paths."""
    lines = [f"[host.{json.dumps(url)}]\n", '  capabilities = ["pull", "resolve"]\n']
    if cert:
        lines.append(f"  client = [[{json.dumps(cert)}, {json.dumps(key)}]]\n")
    if ca:
        lines.append(f"  ca = {json.dumps(ca)}\n")
    return lines


def own_lines(block, url, cert, ca):
    """The operator's lines in our [host] table (a value that spans lines left out whole):
    all but the keys this run writes (capabilities; client and ca when it has them) and the
    client and ca lines an earlier run wrote (naming its files for this mirror), so a CA or
    client certificate of the operator's own stays where the script names none, and one of
    the script's whose file is gone is not left naming it."""
    owned = re.compile(
        r"^\s*(%s)\s*=" % "|".join(["capabilities"] + ["client"] * bool(cert) + ["ca"] * bool(ca))
    )
    host = url.split("://", 1)[-1].split("/", 1)[0]
    earlier = re.compile(
        r'^\s*(ca\s*=\s*"ca-%s\.crt"|client\s*=\s*\[\s*\[\s*"client-%s\.cert")'
        % (re.escape(host), re.escape(host))
    )
    kept, depth = [], 0
    for line in block[1:]:
        if depth > 0 or owned.match(line) or earlier.match(line):
            depth = max(0, depth + line.count("[") - line.count("]"))
            continue
        kept.append(line)
    while kept and not kept[-1].strip():
        kept.pop()
    return kept


def content(lines):
    return [line for line in lines if line.strip()]


def canonical(url):
    """The URL as compared: scheme and host in lower case, no trailing slash."""
    scheme, sep, rest = url.rstrip("/").partition("://")
    host, slash, path = rest.partition("/")
    return f"{scheme.lower()}{sep}{host.lower()}{slash}{path}"


mode = sys.argv[1]
if mode == "config-path":
    config_path(sys.argv[2])
    sys.exit(0)
path, url, out, registry, server, name_server = sys.argv[2:8]
cert, key, ca = (sys.argv[8:11] + ["", "", ""])[:3]
try:
    with open(path, encoding="utf-8") as handle:
        lines = handle.read().splitlines(keepends=True)
except FileNotFoundError:
    lines = []
if lines and not lines[-1].endswith("\n"):
    lines[-1] += "\n"  # a last line without one: the mirror's table must not be glued onto it
preamble, found = blocks(lines)
ours = [block for block in found if canonical(block[0]) == canonical(url)]
others = [block for block in found if canonical(block[0]) != canonical(url)]
mine = our_block(url, cert, key, ca) + (own_lines(ours[0][1], url, cert, ca) if ours else [])
SERVER = re.compile(r"^\s*server\s*=")
written_by_us = any(line.startswith(MARK) for line in preamble)
before = list(preamble)
if not any(line.strip() for line in preamble):
    preamble = [f"{MARK}: pulls of {registry} try the mirror first.\n",
                f"server = {json.dumps(server)}\n", "\n"]
elif written_by_us and server != name_server:
    # --registry NAME=URL names the real registry: it replaces the server an earlier run
    # wrote from the name alone (https://NAME), never another (an operator's own fallback)
    VALUE = re.compile(r"""^\s*server\s*=\s*(?:"([^"]*)"|'([^']*)')\s*(?:#.*)?$""")

    def value(line):
        match = VALUE.match(line)
        return None if match is None else match.group(1) if match.group(1) is not None else match.group(2)

    preamble = [f"server = {json.dumps(server)}\n" if value(line) == name_server else line
                for line in preamble]
if mode == "merge":
    first = found[0] if found else None
    if (first and canonical(first[0]) == canonical(url) and len(ours) == 1
            and content(first[1]) == content(mine) and preamble == before):
        sys.exit(10)
    body = [*preamble, *mine, *(["\n"] if others else []), *(l for b in others for l in b[1])]
else:
    if not ours:
        sys.exit(10)
    # The whole file goes only when this script wrote all of it: a server line of the
    # operator's own (a fallback proxy) is no line of ours.
    if not others and written_by_us and all(
            l.startswith(MARK) or not l.strip() or SERVER.match(l) for l in preamble):
        body = []
    else:
        # Its mark ("... try the mirror first") would say something false of a file that keeps
        # no mirror of this script's: it goes, and the server line (the registry) stays.
        preamble = [l for l in preamble if not l.startswith(MARK)]
        body = [*preamble, *(l for b in others for l in b[1])]
try:
    import tomllib  # Python 3.11+; Ubuntu 22.04's 3.10 goes without this check
except ImportError:
    tomllib = None
if tomllib is not None:
    try:
        tomllib.loads("".join(lines))
    except tomllib.TOMLDecodeError:
        pass  # not valid before either: the check below could not tell this script's doing
    else:
        try:
            tomllib.loads("".join(body))
        except tomllib.TOMLDecodeError as exc:
            print(f"the new {path} would not be valid TOML ({exc}): left as it is", file=sys.stderr)
            sys.exit(3)
with open(out, "w", encoding="utf-8") as handle:
    handle.writelines(body)
PY
}

# configure_registry ENTRY: /etc/containerd/certs.d/<registry>/hosts.toml sends that registry's
# pulls to the mirror (containerd adds ?ns=<registry>, which picks the mirror's upstream). The
# client certificate and server CA are copied beside it, under names that carry the mirror's
# host; hosts.toml names them relative to its own directory, as containerd resolves them, so
# the file stays right under --root and wherever config_path puts certs.d.
configure_registry() {
  local registry server dir target new rc=0 cert="" key="" ca=""
  registry="$(registry_name "$1")"
  server="$(registry_server "$1")"
  dir="$(under_root "/etc/containerd/certs.d/$registry")"
  target="$dir/hosts.toml"
  say "containerd: $target"
  if ((!REMOVE)); then
    # Noted in the record beside hosts.toml, as in certs.d: --remove deletes only those.
    if [[ -n "$CLIENT_DIR" ]]; then
      certs_copy "$dir" "client-$MIRROR_HOST.cert" "$CLIENT_DIR/client.cert" 0644
      certs_copy "$dir" "client-$MIRROR_HOST.key" "$CLIENT_DIR/client.key" 0600
    fi
    [[ -z "$CA_CERT" ]] || certs_copy "$dir" "ca-$MIRROR_HOST.crt" "$CA_CERT" 0644
    # Certificates installed by an earlier run stay named (the served script has no --client-cert).
    if [[ -n "$CLIENT_DIR" || -f "$dir/client-$MIRROR_HOST.cert" ]]; then
      cert="client-$MIRROR_HOST.cert"
      key="client-$MIRROR_HOST.key"
    fi
    if [[ -n "$CA_CERT" || -f "$dir/ca-$MIRROR_HOST.crt" ]]; then
      ca="ca-$MIRROR_HOST.crt"
    fi
  fi
  new="$(mktemp)"
  # The server an earlier run would have written from the name alone: --registry NAME=URL
  # replaces that one.
  hosts_toml_tool "$( ((REMOVE)) && echo remove || echo merge)" "$target" "$MIRROR" "$new" \
    "$registry" "$server" "$(registry_server "$registry")" "$cert" "$key" "$ca" || rc=$?
  if ((rc == 10)); then
    rm -f -- "$new"
    if ((REMOVE)); then say "  $MIRROR is not listed: nothing to remove"; else say "  $MIRROR is already the first host: unchanged"; fi
  elif ((rc == 3)); then
    rm -f -- "$new"
    if ((REMOVE)); then
      warn "this script cannot take the mirror out of $target (a host given by dotted keys?):"
      warn "remove its [host.\"$MIRROR\"] entry by hand; the other registries go on"
    else
      warn "this script cannot place the mirror in $target (a host given by dotted keys?): add"
      warn "a [host.\"$MIRROR\"] table first by hand; the other registries go on"
    fi
    FAILED=1
  elif ((rc != 0)); then
    rm -f -- "$new"
    die "could not build the new hosts.toml (python3 exited with $rc)"
  elif [[ ! -s "$new" && -L "$target" ]]; then
    # It lives elsewhere (a config repository): emptied through its link, as it was edited;
    # removing the link would leave the mirror in the file the next deploy brings back.
    if ((DRY_RUN)); then
      rm -f -- "$new"
      say "  would empty $(real_target "$target") (it held only this mirror)"
    else
      place_file "$target" "$new" 0644
      say "  emptied $(real_target "$target") (it held only this mirror)"
    fi
  elif [[ ! -s "$new" ]]; then
    rm -f -- "$new"
    if ((DRY_RUN)); then
      say "  would remove $target (it held only this mirror)"
    else
      backup_file "$target"
      rm -f -- "$target"
      CHANGES=$((CHANGES + 1))
      say "  removed $target (it held only this mirror)"
    fi
  elif ((DRY_RUN)); then
    show_new_content "$target" "$new"
    rm -f -- "$new"
  else
    place_file "$target" "$new" 0644
    say "  wrote $target (containerd reads it at each pull: no restart needed)"
  fi
  if ((REMOVE)); then
    remove_installed "$dir" "client-$MIRROR_HOST.cert" "client-$MIRROR_HOST.key" "ca-$MIRROR_HOST.crt"
  fi
}

# --remove without --registry: also every other registry whose certs.d directory names this
# mirror (in its hosts.toml, or a certificate copy beside it): one an earlier run was given
# with --registry, or one the mirror fronted then and /setup.sh no longer names.
add_listed_registries() {
  local dir name entry known
  for dir in "$(under_root /etc/containerd/certs.d)"/*/; do
    dir="${dir%/}"
    [[ -e "$dir/client-$MIRROR_HOST.cert" || -e "$dir/ca-$MIRROR_HOST.crt" ]] ||
      { [[ -f "$dir/hosts.toml" ]] && grep -qiF -- "$MIRROR" "$dir/hosts.toml"; } || continue
    name="$(basename -- "$dir")"
    known=0
    for entry in "${REGISTRIES[@]}"; do
      [[ "$(registry_name "$entry")" == "$name" ]] && known=1
    done
    ((known)) || REGISTRIES+=("$name")
  done
}

configure_containerd() {
  local entry config paths
  if ((REMOVE && !REGISTRIES_GIVEN)); then add_listed_registries; fi
  for entry in "${REGISTRIES[@]}"; do configure_registry "$entry"; done
  config="$(under_root /etc/containerd/config.toml)"
  paths="$(hosts_toml_tool config-path "$config")"
  case ":$paths:" in
    *:/etc/containerd/certs.d:* | *:/etc/containerd/certs.d/:*)
      say "  containerd's config_path points at /etc/containerd/certs.d: the CRI (Kubernetes) uses it" ;;
    ::)
      say "  containerd's config_path is not set in $config: containerd 2.x uses /etc/containerd/certs.d"
      say "  by default; for containerd 1.x set config_path = \"/etc/containerd/certs.d\" under"
      say "  [plugins.\"io.containerd.grpc.v1.cri\".registry] and restart containerd" ;;
    *)
      say "  containerd's config_path is '$paths', which does not include /etc/containerd/certs.d:"
      say "  the CRI will not see this file until it does (then restart containerd)" ;;
  esac
}

# --- podman: registries.conf.d drop-in -------------------------------------------------------

podman_dropin() {
  cat <<EOF
# Written by Docxy's configure-client.sh: pulls of docker.io try the mirror first.
[[registry]]
prefix = "docker.io"
location = "docker.io"

EOF
  podman_mirror_table
}

# podman_hub_tables DROPIN MIRROR FILE...: each [[registry]] table for Docker Hub in the FILEs
# other than DROPIN, as "listed FILE: PREFIX" when one of its [[registry.mirror]] locations is
# MIRROR (host[:port]), else "missing FILE: PREFIX". containers/image replaces a [[registry]]
# whose prefix an earlier file had, table and mirrors whole (containers-registries.conf.d(5)),
# and a longer prefix (docker.io/library) wins over docker.io for its images: a drop-in beside
# such a table would either throw the operator's settings away or never be read. Read line by
# line (tomllib is not in Ubuntu 22.04's python3).
podman_hub_tables() {
  python3 - "$@" <<'PY'
import re
import sys

HEADER = re.compile(r"^\s*\[")
REGISTRY = re.compile(r"^\s*\[\[\s*registry\s*\]\]\s*(#.*)?$")
MIRROR = re.compile(r"^\s*\[\[\s*registry\.mirror\s*\]\]\s*(#.*)?$")
KEY = re.compile(r"""^\s*(prefix|location)\s*=\s*(?:"([^"]*)"|'([^']*)')\s*(#.*)?$""")


def tables(path):
    """(prefix, else location; the mirrors' locations) of each [[registry]] table in ``path``."""
    found, current, target = [], None, None  # target: the table the keys below belong to
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            lines = handle.read().splitlines()
    except OSError:
        return found
    for line in lines:
        if HEADER.match(line):
            if REGISTRY.match(line):
                current = target = {"mirrors": []}
                found.append(current)
            elif MIRROR.match(line) and current is not None:
                target = {}
                current["mirrors"].append(target)
            else:
                current = target = None
            continue
        key = KEY.match(line)
        if key and target is not None:
            target[key.group(1)] = key.group(2) if key.group(2) is not None else key.group(3)
    return found


ours, wanted, files = sys.argv[1], sys.argv[2].lower(), sys.argv[3:]
for path in files:
    if path == ours:
        continue
    for table in tables(path):
        prefix = table.get("prefix") or table.get("location") or ""
        name = prefix.strip().lower()
        if name == "docker.io" or name.startswith("docker.io/"):
            listed = any(m.get("location", "").strip().lower() == wanted for m in table["mirrors"])
            print(f"{'listed' if listed else 'missing'} {path}: {prefix}")
PY
}

# podman_conflict TARGET: say so, and fail the run, when another file has a [[registry]] for
# Docker Hub that does not list the mirror; nothing is written then (the operator adds the
# mirror to their own table). Returns 0 when no drop-in is to be written.
podman_conflict() {
  local target="$1" conf dir found file line missing="" dirs=()
  conf="$(under_root /etc/containers/registries.conf)"
  dirs=("$(under_root /etc/containers/registries.conf.d)")
  if ((USER_MODE)); then
    # Rootless podman reads ~/.config/containers/registries.conf instead of the system's (and
    # then not the system's drop-ins) when there is one; its own drop-ins in any case, last.
    if [[ -e "$(podman_home)/registries.conf" ]]; then
      conf="$(podman_home)/registries.conf"
      dirs=()
    fi
    dirs+=("$(podman_home)/registries.conf.d")
  fi
  local files=("$conf")
  for dir in "${dirs[@]}"; do
    [[ -d "$dir" ]] || continue
    for file in "$dir"/*.conf; do [[ -e "$file" ]] && files+=("$file"); done
  done
  found="$(podman_hub_tables "$target" "${MIRROR#*://}" "${files[@]}")"
  [[ -n "$found" ]] || return 1
  while IFS= read -r line; do
    [[ "$line" == missing\ * ]] && missing+="${line#missing }"$'\n'
  done <<<"$found"
  if [[ -z "$missing" ]]; then
    while IFS= read -r line; do say "  ${line#listed }: lists the mirror already"; done <<<"$found"
    if [[ -e "$target" ]]; then
      warn "podman: delete $target, an earlier run's: it replaces your table for docker.io"
      FAILED=1
    fi
    return 0
  fi
  warn "podman: no drop-in written: Docker Hub already has a [[registry]] table of yours:"
  while IFS= read -r file; do [[ -z "$file" ]] || warn "  $file"; done <<<"$missing"
  warn "a drop-in would replace it whole (its mirrors and settings) or be replaced by it;"
  warn "add the mirror to that table yourself, first among its mirrors:"
  podman_mirror_table | sed 's/^/    /' >&2
  if [[ -e "$target" ]]; then
    warn "and delete $target, an earlier run's, which stands in its way"
  fi
  FAILED=1
  return 0
}

# rootless_note DIR: after a system install of a client key, say that rootless podman cannot
# use it. podman run by a user reads ~/.config/containers/certs.d/<host>/, else the first of
# /etc/containers/certs.d/<host>/ and /etc/docker/certs.d/<host>/ there is, and root's key
# (mode 600, as a key must stay) is unreadable to it: its pulls from the mirror fail with
# "permission denied". Each such user runs this script as themselves with --user.
rootless_note() {
  if ((USER_MODE)) || [[ -z "$CLIENT_DIR" ]]; then return 0; fi
  say "  rootless podman (podman run by a user, not root) cannot read $1/client.key"
  say "  (root's, mode 600) and fails its pulls from the mirror: each user who runs podman"
  say "  rootless runs, as that user, without sudo: $PROG --mirror $MIRROR --podman --user"
  say "  --client-cert DIR (with a kit of their own, or a copy they can read; and --ca-cert FILE"
  say "  if one is installed here: podman reads one certs.d directory, the user's first)"
}

podman_mirror_table() {
  printf '[[registry.mirror]]\nlocation = "%s"\n' "${MIRROR#*://}"
  [[ "$MIRROR" != http://* ]] || printf 'insecure = true\n'
}

# podman_home: where podman reads the files this run writes: $HOME/.config/containers with
# --user (rootless podman reads that first), else /etc/containers; either under --root DIR.
podman_home() {
  if ((USER_MODE)); then under_root "$HOME/.config/containers"; else under_root /etc/containers; fi
}

configure_podman() {
  local target new certs
  target="$(podman_home)/registries.conf.d/$PODMAN_DROPIN"
  certs="$(podman_home)/certs.d/$MIRROR_HOST"
  say "podman: $target"
  if ((REMOVE)); then
    if [[ ! -e "$target" ]] || ! grep -qiF "location = \"${MIRROR#*://}\"" -- "$target"; then
      say "  no drop-in for $MIRROR: nothing to remove"
    elif ((DRY_RUN)); then
      say "  would remove $target"
    else
      rm -f -- "$target"
      CHANGES=$((CHANGES + 1))
      say "  removed $target"
    fi
    certs_d podman "$certs"
    return
  fi
  certs_d podman "$certs"
  rootless_note "$certs"
  podman_conflict "$target" && return
  if [[ -e "$target" ]] && cmp -s -- "$target" <(podman_dropin); then
    say "  unchanged"
    return
  fi
  if ((DRY_RUN)); then
    say "  would write $target:"
    podman_dropin | sed 's/^/    | /'
    return
  fi
  new="$(mktemp)"
  podman_dropin >"$new"
  place_file "$target" "$new" 0644
  say "  wrote $target"
}

# Which plain-HTTP mirrors dockerd takes without more ado: those on hosts it counts insecure by
# default. That is 127.0.0.0/8 (and a name resolving there, localhost; an IPv4-mapped
# ::ffff:127.x is that too), and from Docker 28.0 also ::1/128 (moby PR #48540): [::1] needs
# "insecure-registries" up to Docker 27. From Docker 29.10 (moby PR #53868), once
# "insecure-registries" is set at all (in daemon.json, even as [], or by --insecure-registry
# flags) neither range is added: a loopback mirror not in that list is passed by. Anywhere else
# the mirror's host must be in "insecure-registries". Adding it is the operator's call (not
# written here): what is missing is said, or dockerd passes the mirror by and pulls from
# Docker Hub, unasked.
plain_http_note() {
  local host kind version="" entries="" explicit=0 where="" out
  [[ "$MIRROR" == http://* ]] && ((!REMOVE)) || return 0
  if [[ "$MIRROR_HOST" == \[* ]]; then host="${MIRROR_HOST%%]*}]"; else host="${MIRROR_HOST%%:*}"; fi
  kind="$(registry_host_tool kind "$host")"
  if [[ "$kind" == other ]]; then
    warn "$MIRROR is plain HTTP off loopback: dockerd uses it only if \"$MIRROR_HOST\" is in"
    warn "\"insecure-registries\" too (not added here; it counts only loopback insecure by default),"
    warn "else it pulls from Docker Hub; serve the mirror over HTTPS"
    return 0
  fi
  if out="$(daemon_json_tool insecure "$DAEMON_JSON")"; then
    explicit=1 entries="$out" where="$DAEMON_JSON has \"insecure-registries\""
  fi
  if out="$(insecure_flags)"; then
    explicit=1 entries="$entries"$'\n'"$out"
    where="${where:+$where, and }dockerd runs with --insecure-registry"
  fi
  if ((explicit)); then
    local listed=()
    mapfile -t listed <<<"$entries"
    # Listed there (or in a range listed there): insecure for every dockerd.
    registry_host_tool listed "$MIRROR_HOST" "${listed[@]}" && return 0
  fi
  version="$(dockerd_version)" || version=""
  if [[ "$kind" == v6 ]]; then
    if [[ -n "$version" ]] && ! version_at_least "$version" 28 0; then
      warn "$MIRROR is plain HTTP on [::1]: dockerd $version uses it only if \"$MIRROR_HOST\" is in"
      warn "\"insecure-registries\" (not added here; Docker counts [::1] insecure by default from 28.0"
      warn "on), else it pulls from Docker Hub; serve the mirror over HTTPS"
      return 0
    elif [[ -z "$version" ]] && ((explicit)); then
      # Neither "28 and later take it" (untrue from 29.10 with the key set) nor a second
      # warning on top: one that holds whatever the version.
      warn "$MIRROR is plain HTTP on [::1], and $where without \"$MIRROR_HOST\":"
      warn "dockerd up to 27 and from 29.10 on then pass it by and pull from Docker Hub (only 28.0 to"
      warn "29.9 count [::1] insecure). Add \"$MIRROR_HOST\" to \"insecure-registries\" (not added here),"
      warn "or serve the mirror over HTTPS"
      return 0
    elif [[ -z "$version" ]]; then
      warn "$MIRROR is plain HTTP on [::1]: dockerd 28 and later take it as it is; older ones use it"
      warn "only if \"$MIRROR_HOST\" is in \"insecure-registries\" (not added here), else they pull from Docker Hub"
    fi
  fi
  ((explicit)) || return 0
  if [[ -z "$version" ]]; then
    warn "$where: Docker 29.10 and later then count no loopback address insecure by default, and"
    warn "pass $MIRROR by (pulling from Docker Hub) unless \"$MIRROR_HOST\" is in"
    warn "\"insecure-registries\": add it there (not added here), or serve the mirror over HTTPS"
  elif version_at_least "$version" 29 10; then
    warn "dockerd $version passes $MIRROR by and pulls from Docker Hub: $where,"
    warn "and from Docker 29.10 on that leaves loopback out of the insecure registries it counts."
    warn "Add \"$MIRROR_HOST\" to \"insecure-registries\" (not added here), or serve the mirror over HTTPS"
  else
    warn "$MIRROR: dockerd $version uses it now, but Docker 29.10 and later will pass it by and pull"
    warn "from Docker Hub: $where, which from 29.10 on leaves loopback out of the"
    warn "insecure registries it counts. Add \"$MIRROR_HOST\" to \"insecure-registries\" before upgrading"
    warn "(not added here), or serve the mirror over HTTPS"
  fi
}

# Registry hosts judged as dockerd judges them (moby's registry config), in python3. Modes:
#   kind HOST                 print v4 (127.0.0.0/8, localhost, an IPv4-mapped ::ffff:127.x.y.z
#                             in any spelling), v6 (::1, any spelling) or other
#   listed HOST[:PORT] ENTRY...  exit 0 when an insecure-registries ENTRY names HOST[:PORT]
#                             (http:// or https:// before it is dropped, as dockerd drops it) or is
#                             a range (CIDR) holding its address; 1 when none does
#   counted HOST[:PORT] JSON  from `docker info`'s RegistryConfig (JSON): exit 0 when dockerd
#                             counts HOST[:PORT] insecure, 1 when it counts it secure, 2 when
#                             that does not tell (not its registry config; a name not looked up)
registry_host_tool() {
  python3 - "$@" <<'PY'
import ipaddress
import json
import sys


def addresses(hostport):
    """The addresses dockerd would match against its ranges; None for a name (not looked up
    here: no lookup leaves this host for a note) other than localhost."""
    host = hostport
    if host.startswith("["):
        host = host[1:].partition("]")[0]
    elif host.count(":") == 1:
        host = host.partition(":")[0]
    if host.lower() == "localhost":
        return [ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")]
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return None
    # Go's IPNet.Contains reads an IPv4-mapped address as the IPv4 one.
    mapped = getattr(address, "ipv4_mapped", None)
    return [mapped] if mapped is not None else [address]


def in_ranges(hostport, ranges):
    found = addresses(hostport) or []
    for cidr in ranges:
        try:
            network = ipaddress.ip_network(cidr, strict=False)
        except ValueError:
            continue
        if any(a.version == network.version and a in network for a in found):
            return True
    return False


def bare(entry):
    entry = entry.strip()
    for scheme in ("http://", "https://"):
        if entry.lower().startswith(scheme):
            entry = entry[len(scheme):]
    return entry.rstrip("/").lower()


mode, hostport = sys.argv[1], sys.argv[2]
if mode == "kind":
    found = addresses(hostport) or []
    if any(a.version == 4 and a in ipaddress.ip_network("127.0.0.0/8") for a in found):
        print("v4")
    elif found == [ipaddress.ip_address("::1")]:
        print("v6")
    else:
        print("other")
    sys.exit(0)
if mode == "listed":
    entries = [e for e in sys.argv[3:] if e.strip()]
    named = any(bare(e) == hostport.lower() for e in entries)
    sys.exit(0 if named or in_ranges(hostport, [bare(e) for e in entries]) else 1)
if mode == "counted":
    try:
        config = json.loads(sys.argv[3])
    except ValueError:
        sys.exit(2)
    if not isinstance(config, dict) or not isinstance(config.get("IndexConfigs"), dict):
        sys.exit(2)  # not a registry config
    # No range at all may come as null (a nil list in dockerd's JSON).
    ranges = config.get("InsecureRegistryCIDRs") or []
    if not isinstance(ranges, list):
        sys.exit(2)
    indexes = config["IndexConfigs"]
    # Its own spelling of an insecure-registries entry; compared as the mirror's host is.
    named = [v for k, v in indexes.items() if k.lower() == hostport.lower()]
    index = named[0] if named else None
    if isinstance(index, dict) and isinstance(index.get("Secure"), bool):
        sys.exit(1 if index["Secure"] else 0)
    if in_ranges(hostport, [c for c in ranges if isinstance(c, str)]):
        sys.exit(0)
    sys.exit(1 if addresses(hostport) is not None else 2)
sys.exit(2)
PY
}

# Docker's registry-mirrors (and the podman drop-in) serve Docker Hub images only; other
# registries go through the mirror by path prefix.
docker_hub_only_note() {
  local entry name
  ((REMOVE)) && return 0
  for entry in "${REGISTRIES[@]}"; do
    name="$(registry_name "$entry")"
    [[ "$name" == "$DOCKER_HUB" ]] && continue
    [[ "$name" == *:* ]] && continue # HOST:PORT is no path prefix: containerd's alone
    say "  registry-mirrors applies to Docker Hub only: pull $name images through the mirror by"
    say "  prefix, e.g. docker pull $MIRROR_HOST/$name/OWNER/IMAGE:TAG"
    return 0
  done
}

main() {
  parse_args "$@"
  have python3 || die "python3 is needed to edit JSON safely: apt-get install python3-minimal"
  if ((!WANT_DOCKER && !WANT_CONTAINERD && !WANT_PODMAN)); then
    if have dockerd || have docker || [[ -e "$DAEMON_JSON" ]]; then WANT_DOCKER=1; fi
    have containerd && WANT_CONTAINERD=1
    have podman && WANT_PODMAN=1
    ((WANT_DOCKER || WANT_CONTAINERD || WANT_PODMAN)) ||
      die "found no Docker, containerd or podman here; name one with --docker, --containerd or --podman"
  fi
  if [[ "$ROOT" == "" && "$(id -u)" != 0 && $DRY_RUN == 0 ]] && ((!USER_MODE)); then
    die "run as root (sudo), or try --dry-run first (rootless podman alone: --podman --user, as that user)"
  fi
  ((DRY_RUN && SUMMARY)) && say "Dry run: nothing is changed."
  say "Mirror: $MIRROR$( ((REMOVE)) && echo " (removing)")"
  if [[ -n "$CLIENT_DIR" && -e "$CLIENT_DIR/ca.crt" ]] && ((!REMOVE)); then
    say "  $CLIENT_DIR/ca.crt is the mirror's client CA (it checks clients): not installed;"
    say "  a private CA of the mirror's server certificate goes in with --ca-cert FILE"
  fi
  if ((WANT_DOCKER)); then
    configure_docker
    configure_docker_certs
    plain_http_note
    docker_hub_only_note
  fi
  ((WANT_CONTAINERD)) && configure_containerd
  ((WANT_PODMAN)) && configure_podman
  if ((!SUMMARY)); then
    : # the script that ran this one says its own
  elif ((DRY_RUN)); then
    say "Dry run: the changes above were not made."
  elif ((FAILED && CHANGES)); then
    # Files were written before a later step failed (a reload that did not take): they stay
    # as written, the messages above name each (and its backup).
    say "Not done: see the messages above; $CHANGES file(s) were changed all the same."
  elif ((FAILED)); then
    say "Not done: see the messages above."
  elif ((CHANGES == 0)); then
    say "Nothing to change: every file was already as wanted."
  fi
  return "$FAILED"
}

main "$@"
