"""The `docxy` command: serve, cache, warm, certs."""
