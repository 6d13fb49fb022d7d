#!/usr/bin/env bash
# supervisord event listener: restarts a mirror that answered /health and then stopped answering
# for DOCXY_WATCHDOG_SECONDS (300). supervisord restarts a mirror that exits, never one that
# hangs (its event loop stuck), and Docker only marks that container unhealthy: nothing restarts
# it. A mirror that has not answered since it started (still opening a large cache, or failing
# to start: supervisord's own retries and FATAL deal with that) is left alone.
#
# Events: TICK_5 (a probe every min(30, DOCXY_WATCHDOG_SECONDS) s), PROCESS_STATE_STARTING
# (a mirror (re)started: not answered yet) and PROCESS_STATE_STOPPED (a mirror stopped on
# purpose, `supervisorctl stop docxy`: not hung, left stopped until it starts again). The
# probe asks the address `docxy health` asks (docxy.cli.healthcheck.local_urls' first, found once:
# python costs most of a second of CPU to start) with bash alone. Protocol as in
# supervisor-fatal.sh: stdout is supervisord's; messages go to stderr.
set -uo pipefail # not -e: a probe that fails is what this is for
export LC_ALL=C  # `read -N` counts characters: make them bytes

patience="${DOCXY_WATCHDOG_SECONDS:-300}"
# Whole seconds, read in base 10 (bash would take 08 for octal). Anything else ("5m") was an
# arithmetic error at each tick, which ended this listener: supervisord started it again, and
# a python with it, every second or two, and no hung mirror was restarted.
if [[ ! "$patience" =~ ^[0-9]{1,9}$ ]]; then
  echo "docxy: watchdog: DOCXY_WATCHDOG_SECONDS=$patience is not a whole number of" \
    "seconds: 300 instead" >&2
  patience=300
fi
patience=$((10#$patience))
every=$((patience < 30 ? patience : 30))
host="" port="" # none: every event is answered, nothing probed
# 0 is off, as 0 is for the mirror's own limits: it was a restart at the first failed probe.
if ((patience == 0)); then
  echo "docxy: watchdog: DOCXY_WATCHDOG_SECONDS=0: off (a hung mirror is not restarted)" >&2
else
  target=$(python -c '
from urllib.parse import urlsplit
from docxy.cli.healthcheck import local_urls
from docxy.config import load_config
url = urlsplit(local_urls(load_config().server.listen)[0])
print(url.hostname, url.port)')
  read -r host port <<<"$target"
  if [[ -z "${port:-}" ]]; then
    echo "docxy: watchdog: no listener to probe (a config error: the mirror says which); idle" >&2
  fi
fi

# Whether the mirror answers GET /health within 10 s. Any status: one at its connection cap
# answers 503 and is busy, not hung (Docker's HEALTHCHECK, `docxy health`, wants 200).
# In the background, waited for: a stop (SIGTERM from supervisord) ends the probe with this
# listener. In the foreground bash died alone and the probe (`timeout` runs in a process group
# of its own) went on for up to 10 s, past supervisord's end.
answers() {
  # shellcheck disable=SC2016 # expanded by the inner bash, from its arguments
  timeout 10 bash -c 'exec 3<>"/dev/tcp/$1/$2" || exit 1
    printf "GET /health HTTP/1.0\r\nHost: %s:%s\r\n\r\n" "$1" "$2" >&3
    IFS=" " read -r version status _ <&3 && [[ "$version" == HTTP/* && "$status" =~ ^[0-9]{3}$ ]]
  ' _ "$host" "$port" 2>/dev/null &
  wait "$!"
}

# Stopped: end a probe under way (timeout passes SIGTERM on to its group), then this listener.
stop() {
  local probes
  probes=$(jobs -p)
  # shellcheck disable=SC2086 # one pid a word
  [[ -z "$probes" ]] || kill -TERM $probes 2>/dev/null
  exit 0
}
trap stop TERM INT HUP

# Seconds since boot (CLOCK_BOOTTIME): never stepped. The wall clock is (a VPS that booted with
# its clock ahead, then NTP): stepped back, no probe ran for the whole step; forward, one failed
# probe counted as the whole patience.
seconds() {
  local up
  read -r up _ </proc/uptime
  printf '%s' "${up%.*}"
}

answered=false  # since the mirror last started
failing_since=0 # 0: answering
last_probe=0
while :; do
  printf 'READY\n'
  IFS= read -r header || exit 0
  IFS= read -r -N "${header##*len:}" payload
  case "$header" in
    *eventname:PROCESS_STATE_STARTING* | *eventname:PROCESS_STATE_STOPPED*)
      if [[ "$payload" == *"processname:docxy "* ]]; then
        answered=false
        failing_since=0
      fi
      ;;
    *eventname:TICK_*)
      if [[ -n "${port:-}" ]] && (($(seconds) - last_probe >= every)); then
        answers
        probed=$?
        # From the probe's end: the ticks that queued up meanwhile are let through unprobed.
        now=$(seconds)
        last_probe=$now
        if ((probed == 0)); then
          answered=true
          failing_since=0
        elif $answered; then
          ((failing_since)) || failing_since=$now
          if ((now - failing_since >= patience)); then
            echo "docxy: the mirror has not answered /health for $((now - failing_since)) s:" \
              "restarting it" >&2
            supervisorctl -s "unix://${DOCXY_RUN_DIR:?}/supervisor.sock" restart docxy >&2
            answered=false
            failing_since=0
          fi
        fi
      fi
      ;;
  esac
  printf 'RESULT 2\nOK'
done
