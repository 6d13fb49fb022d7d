import sys

__version__ = "0.1.0"

# httpx imports its command-line client (httpx._main: rich and pygments, 69 modules and ~3.4
# MiB of a mirror's memory) whenever click is installed, and Quart installs click. Docxy never
# runs that client; a None in sys.modules makes httpx take the ImportError path it has for a
# missing click (its `httpx.main` then only says the CLI's dependencies are missing).
sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]
