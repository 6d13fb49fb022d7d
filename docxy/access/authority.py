"""``/auth/token`` when the mirror is its own token authority (``auth.mode = "users"``).

The client's Basic credentials (or the password of a POSTed password grant, read into the same
form by ``docxy.http.token_ask``) are checked against the users file (constant time, as slow for
unknown names); a right password gets a short-lived token for ``pull`` on the repositories it
asked for. Anything else is ``401`` with a message the docker CLI prints. Nothing here asks the
upstream: the mirror verifies its own users even while the upstream's token service is down,
and never answers a wrong password with a token.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass

from docxy.access.gate import AccessControl, basic_credentials, key_unreadable, users_unreadable
from docxy.access.keys import TokenKeyError
from docxy.access.scopes import grant, parse_scopes
from docxy.access.tokens import issue
from docxy.access.users import UsersFileError
from docxy.core.errors import RegistryError, Unauthorized

log = logging.getLogger(__name__)

BAD_CREDENTIALS = "incorrect username or password"
BASIC_CHALLENGE = 'Basic realm="docxy"'


class BadCredentials(Unauthorized):
    """A user name and password the users file does not have (what the guessing limit counts,
    ``docxy.access.logins``)."""


@dataclass(frozen=True, slots=True)
class Issued:
    body: bytes
    user: str
    #: what the token grants, as scopes (``repository:library/redis:pull``)
    scope: str = ""

    def posted_body(self) -> bytes:
        """The answer to the OAuth2 POST form: the same, with the ``scope`` granted
        (Distribution's ``oauth.md``). No ``refresh_token``: the mirror issues none."""
        return json.dumps({**json.loads(self.body), "scope": self.scope}).encode()


def issue_token(
    access: AccessControl, authorization: str | None, scopes: list[str]
) -> Issued | RegistryError:
    """A token for the user named by ``authorization``, or why not."""
    credentials = basic_credentials(authorization)
    if credentials is None:
        return Unauthorized("authentication required: docker login first", BASIC_CHALLENGE)
    user, password = credentials
    try:
        fingerprint = access.users.checked(user, password)
    except UsersFileError as exc:
        log.error("users file: %s", exc)
        return users_unreadable()
    if fingerprint is None:
        log.info("token refused: bad credentials")  # never the name tried or the password
        return BadCredentials(BAD_CREDENTIALS, BASIC_CHALLENGE)
    now = time.time()
    granted = grant(parse_scopes(scopes))
    try:
        token = issue(access.keys, access.spec, user, granted, now, fingerprint=fingerprint)
    except TokenKeyError as exc:
        return key_unreadable(exc)
    # No ``issued_at`` (optional in the token spec): docker and containerd count
    # ``expires_in`` from it by their own clock, so a client clock ahead by the lifetime took
    # each token for expired on arrival (a password hash here for every request) and one
    # behind kept one the mirror no longer honours; without it they count from its arrival.
    body = {"token": token, "access_token": token, "expires_in": access.spec.ttl}
    scope = " ".join(access.scope() for access in granted)
    return Issued(json.dumps(body).encode(), user, scope)
