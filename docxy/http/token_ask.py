"""What a client asks ``/auth/token`` for: the query of a GET, or the OAuth2 form of a POST.

Docker's token protocol has two forms (Distribution's ``docs/spec/auth/token.md`` and
``oauth.md``)::

    GET  /auth/token?service=S&scope=A&scope=B     Authorization: Basic user:password, or none
    POST /auth/token   grant_type=password&username=U&password=P&service=S&scope=A B&client_id=C
    POST /auth/token   grant_type=refresh_token&refresh_token=R&service=S&scope=A B&client_id=C

containerd, nerdctl and BuildKit POST the password grant whenever they hold a login (falling
back to GET on a 405 or 404); docker POSTs the refresh grant when it holds an identity token,
and does not fall back. Both forms become one :class:`TokenAsk`: the parameters, the
credentials as the GET form carries them (``Basic``), and a refresh token if one was sent.
The realm's own query (``?upstream=``) is kept with the form's parameters.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable
from dataclasses import dataclass, replace

from docxy.core import jsondoc

#: the form's parameters the mirror reads (the secrets are taken apart)
FORM_PARAMS = frozenset({"service", "scope", "client_id"})


@dataclass(frozen=True, slots=True)
class TokenAsk:
    """One token request, whichever form it came in."""

    #: the query's parameters, then the form's (``service``, ``scope``, ``client_id``)
    args: tuple[tuple[str, str], ...]
    #: ``Basic`` for a password grant; for a GET, the client's header as sent
    authorization: str | None = None
    #: a POSTed ``refresh_token`` grant's token
    refresh_token: str | None = None
    #: it came as the OAuth2 POST form (its answer must carry ``access_token``)
    posted: bool = False

    def get(self, key: str) -> str | None:
        return next((value for name, value in self.args if name == key), None)

    @property
    def scopes(self) -> list[str]:
        """Every ``scope`` value (each may hold several, space-separated)."""
        return [value for name, value in self.args if name == "scope"]

    @property
    def credentialed(self) -> bool:
        return self.authorization is not None or self.refresh_token is not None

    def anonymous(self) -> TokenAsk:
        """The same request without its credentials (and without ``account``, which names
        the login left out)."""
        args = tuple((name, value) for name, value in self.args if name != "account")
        return replace(self, args=args, authorization=None, refresh_token=None)


def basic_authorization(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode("ascii")


def from_query(args: Iterable[tuple[str, str]], authorization: str | None) -> TokenAsk:
    return TokenAsk(tuple(args), authorization)


def from_form(
    query: Iterable[tuple[str, str]], form: Iterable[tuple[str, str]], authorization: str | None
) -> TokenAsk:
    """A POST: the password grant becomes ``Basic`` (and ``account``, as docker's GET sends
    it), the refresh grant its token. A form without either asks anonymously, unless the
    client sent ``Authorization`` with it."""
    fields = list(form)
    found = dict(fields)
    args = list(query) + [(name, value) for name, value in fields if name in FORM_PARAMS]
    grant = found.get("grant_type")
    user, password = found.get("username", ""), found.get("password", "")
    if grant == "password" and user and password:
        args.append(("account", user))
        return TokenAsk(tuple(args), basic_authorization(user, password), posted=True)
    refresh = found.get("refresh_token", "")
    if grant == "refresh_token" and refresh:
        return TokenAsk(tuple(args), refresh_token=refresh, posted=True)
    return TokenAsk(tuple(args), authorization, posted=True)


def for_post_client(body: bytes) -> bytes:
    """A token answer as a POST client reads it: with ``access_token`` (a GET answer may
    carry ``token`` only, which containerd's POST reader ignores). Anything that is not such
    an answer passes unchanged."""
    parsed = jsondoc.object_in(body)
    if parsed is None or "access_token" in parsed:
        return body
    token = parsed.get("token")
    if not isinstance(token, str) or not token:
        return body
    return json.dumps({**parsed, "access_token": token}).encode()
