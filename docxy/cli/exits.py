"""The exit codes the ``docxy`` commands share: 0 done; 1 ran but did not do what was asked
(a command may give its 1 a name of its own: ``docxy cache``'s not found, ``docxy health``'s
unhealthy); 2 a configuration or usage error (argparse's own code for bad usage); 130
interrupted (Ctrl-C: the shell's own code for a command ended by SIGINT)."""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_CONFIG = 2
EXIT_INTERRUPTED = 130
