#!/usr/bin/env bash
# supervisord event listener for PROCESS_STATE_FATAL: a program that gave up restarting (the
# mirror cannot bind its port or write its cache, the renewer cannot start) takes the whole
# appliance down instead of leaving a container that is up without it. It leaves a note that
# `python -m scheduler.supervise` turns into exit status 1, then stops supervisord, its parent.
#
# Protocol (supervisord's eventlistener): READY, one header line ending in len:N, N bytes of
# payload, then RESULT 2\nOK. stdout is the protocol; messages go to stderr.
set -euo pipefail
export LC_ALL=C # `read -N` counts characters: make them bytes

note="${DOCXY_RUN_DIR:?}/fatal"
while :; do
  printf 'READY\n'
  IFS= read -r header || exit 0
  IFS= read -r -N "${header##*len:}" payload
  # Only a FATAL. supervisor's processes compare equal by priority, and this listener shares
  # the watchdog's: an event the watchdog died holding is put back into this pool too.
  if [[ "$header" == *" eventname:PROCESS_STATE_FATAL "* ]]; then
    echo "docxy: program gave up ($payload): stopping the container" >&2
    printf '%s\n' "$payload" >"$note"
    kill -TERM "$PPID"
  fi
  printf 'RESULT 2\nOK'
done
