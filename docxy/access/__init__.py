"""Who the client is: the mirror's own users, tokens and client certificates.

    users.py      the users file (``name:hash``, argon2id or bcrypt), constant-time checks
    logins.py     wrong passwords a client address may try a minute (password guessing)
    scopes.py     token scopes (``repository:library/redis:pull``): parsing and granting
    keys.py       the token signing keys on disk: current, previous (kept for a grace), rotation
    tokens.py     issuing and verifying the mirror's short-lived signed tokens (JWT, ES256)
    clientca.py   the mirror's own CA: client certificates issued, listed and revoked
    peer.py       the client certificate a TLS connection presented (hypercorn does not say)
    identity.py   the client identity of a request, for limits and logs
    gate.py       the check every ``/v2/`` request passes in ``users`` mode
    authority.py  ``/auth/token`` when the mirror is its own token authority

Everything here is used only when ``auth.mode = "users"`` or ``auth.client_certs`` is on; the
default (``open``) mirror behaves as before.
"""
