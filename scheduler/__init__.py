"""Docxy's certificate renewer: ``python -m scheduler``.

An APScheduler 3.x process beside the mirror. Twice a day, at an hour and minute picked at random
when it starts (so many mirrors don't all call the CA at once), and once right at start, it asks
certbot to renew (certbot decides what is due) or, when no certificate exists yet, to obtain one.
A new certificate is installed atomically where the mirror serves it and the mirror is told to
reload. Failures are retried with exponential backoff; every run leaves a small JSON status file.

    settings.py   [scheduler] in the mirror's settings table, plus its [certs] and [tls]
    runs.py       what the renewer remembers of its runs, the backoff, the status file
    worker.py     each run in a child process, so the renewer that waits stays small
    renewal.py    a run's work: obtain-or-renew, install, tell the mirror
    main.py       the APScheduler jobs, signals, clock steps, ``main(argv) -> int``
"""
