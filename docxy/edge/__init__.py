"""The edge: what stands between the internet and the registry routes.

``connections`` caps open connections (a TLS one from its accept: it does the handshake once
the connection is counted) and closes idle and stalled ones (hypercorn's TCP server, one
subclass), ``admission`` is the ASGI layer for allow lists, repository rules and
per-client limits, ``limits`` keeps the token buckets, ``clients`` names a client,
``relays`` limits the ``/v2/`` and token requests passed upstream per client address,
``replies`` sends a registry error from an ASGI layer before the app.
"""
