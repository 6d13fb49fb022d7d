import sys

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
