#!/usr/bin/env bash
# The image's `docxy` command (/opt/docxy/bin/docxy): the CLI under the settings the entrypoint
# derives for the mirror, so `docker exec <container> docxy cache du` sees what the mirror sees.
set -euo pipefail
exec /usr/local/lib/docxy/entrypoint.sh python -m docxy "$@"
