import signal

# First of all, before the imports below (APScheduler, docxy's settings: a good part of a
# second): supervisord or the entrypoint may send SIGHUP while the renewer starts, and its
# default action ends the process. Ignored until main() puts its own handler in place (its
# first line). ``python -m scheduler`` runs scheduler/__init__.py first, which holds only its
# docstring: this is the first line of the renewer's own that runs. The appliance's supervisord
# (scheduler.supervise) starts the renewer with SIGHUP ignored already, which also covers the
# interpreter's own start before this line; started another way, that moment stays open.
signal.signal(signal.SIGHUP, signal.SIG_IGN)

import sys  # noqa: E402 - after the signal

try:
    from scheduler.main import main
except ModuleNotFoundError as exc:
    if (exc.name or "").partition(".")[0] != "apscheduler":
        raise
    # `pip install -e .` (the README's first line) leaves the renewer's own dependencies out.
    print(
        "python -m scheduler: APScheduler is not installed; the renewer needs the scheduler "
        "extra: pip install -e '.[scheduler]' (from a clone) or pip install 'docxy[scheduler]'",
        file=sys.stderr,
    )
    sys.exit(2)

sys.exit(main())
