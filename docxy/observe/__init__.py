"""Seeing what the mirror does: Prometheus metrics and a status page, on an admin listener.

observer.py  Observer: fed when a request ends (access log) and when the upstream answers
metrics.py   prometheus-client metrics: per request, and read from the mirror at scrape time
recent.py    bounded tallies for the page: most pulled images, recent upstream errors
status.py    the status report (``/status.json``) and its HTML page (``/status``)
admin.py     the admin app and listener (``server.admin_listen``)
"""

from docxy.observe.admin import create_admin_app, serve_admin
from docxy.observe.observer import Observer

__all__ = ["Observer", "create_admin_app", "serve_admin"]
