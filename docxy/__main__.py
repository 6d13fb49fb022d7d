import signal
import sys

# `python -m docxy serve` (the container's supervisor starts it so): SIGHUP asks a running
# mirror to reload its certificate, and the renewer may send it while the mirror starts. Its
# default action ends the process, and the imports below take a good part of a second: it is
# ignored from the first line on (docxy.cli.main ignores it too, and the server answers it).
if sys.argv[1:2] == ["serve"]:
    signal.signal(signal.SIGHUP, signal.SIG_IGN)

from docxy.cli.main import main  # noqa: E402 - after the signal, which the imports take time for

sys.exit(main())
