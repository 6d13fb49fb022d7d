"""Unit and route tests: no daemons, no network (see tests/e2e/ for those)."""
