"""A token server that behaves like auth.docker.io, for the bed's Distribution registry.

    GET  /token?service=S&scope=repository:NAME:pull[&scope=...]&account=U   (Basic auth optional)
    POST /token   (OAuth2 form: grant_type=password, username, password, service, scope)

A wrong password is 401. Anonymous callers get `pull` on public repositories, known users get
`pull` everywhere, admins get `pull,push` (used to seed images). A scope that is not granted is
left out of the token, as Docker Hub does; the registry then answers 401. Tokens are ES256 JWTs
whose `x5c` header holds a self-signed certificate that the registry trusts (rootcertbundle).
Every request is recorded in `log`, without the password.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
import secrets
import time
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

from lab.bed.httpserver import LoopbackServer, QuietHandler, RequestLog

TOKEN_LIFETIME = 300


@dataclass(frozen=True)
class TokenRequest:
    """One request the token server saw. Never holds a password."""

    method: str
    path: str
    service: str | None
    scopes: tuple[str, ...]
    account: str | None
    basic_user: str | None
    status: int

    @property
    def had_basic_auth(self) -> bool:
        return self.basic_user is not None


@dataclass(frozen=True)
class Scope:
    type: str
    name: str
    actions: tuple[str, ...]

    @classmethod
    def parse(cls, text: str) -> Scope | None:
        kind, sep, rest = text.partition(":")
        name, sep2, actions = rest.rpartition(":")
        if not sep or not sep2 or not name:
            return None
        return cls(kind, name, tuple(a for a in actions.split(",") if a))


@dataclass
class AccessPolicy:
    users: dict[str, str]
    admins: frozenset[str]
    private_repos: frozenset[str]

    def authenticate(self, user: str, password: str) -> bool:
        expected = self.users.get(user)
        return expected is not None and secrets.compare_digest(expected, password)

    def allowed(self, user: str | None, scope: Scope) -> tuple[str, ...]:
        if scope.type != "repository":
            return ()
        if user in self.admins:
            granted: tuple[str, ...] = ("pull", "push")
        elif user is not None or scope.name not in self.private_repos:
            granted = ("pull",)
        else:
            granted = ()
        return tuple(a for a in scope.actions if a in granted)


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass
class Signer:
    """An ES256 key and the self-signed certificate the registry trusts."""

    issuer: str
    key: ec.EllipticCurvePrivateKey = field(
        default_factory=lambda: ec.generate_private_key(ec.SECP256R1())
    )
    cert: x509.Certificate = field(init=False)

    def __post_init__(self) -> None:
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "docxy bed token signer")])
        now = dt.datetime.now(dt.UTC)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=7))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256())
        )

    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def sign(self, claims: dict[str, object]) -> str:
        der = self.cert.public_bytes(serialization.Encoding.DER)
        header = {"typ": "JWT", "alg": "ES256", "x5c": [base64.b64encode(der).decode()]}
        signing_input = (
            f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
        )
        der_sig = self.key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256()))
        r, s = decode_dss_signature(der_sig)
        return f"{signing_input}.{_b64url(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"

    def token(
        self, service: str, subject: str, access: list[dict[str, object]], lifetime: int
    ) -> str:
        now = int(time.time())
        claims: dict[str, object] = {
            "iss": self.issuer,
            "sub": subject,
            "aud": service,
            "exp": now + lifetime,
            "nbf": now - 10,
            "iat": now,
            "jti": secrets.token_hex(12),
            "access": access,
        }
        return self.sign(claims)


def _basic_credentials(header: str | None) -> tuple[str, str] | None:
    if not header or not header.lower().startswith("basic "):
        return None
    try:
        decoded = base64.b64decode(header[6:].strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, sep, password = decoded.partition(":")
    return (user, password) if sep else None


class TokenServer(LoopbackServer):
    def __init__(self, policy: AccessPolicy, service: str, signer: Signer) -> None:
        super().__init__(_TokenHandler)
        self.policy = policy
        self.service = service
        self.signer = signer
        self.log: RequestLog[TokenRequest] = RequestLog()
        self.lifetime = TOKEN_LIFETIME
        """Seconds a new token is valid; lower it to test expiry (check how much clock skew
        the registry tolerates past `exp` before relying on an exact moment)."""

    @property
    def realm(self) -> str:
        return f"{self.url}/token"

    def mint(self, user: str | None, scope_texts: list[str], service: str | None = None) -> str:
        """A signed token granting `user` what the policy allows of `scope_texts`."""
        access: list[dict[str, object]] = []
        for text in scope_texts:
            scope = Scope.parse(text)
            if scope is None:
                continue
            actions = self.policy.allowed(user, scope)
            access.append({"type": scope.type, "name": scope.name, "actions": list(actions)})
        return self.signer.token(service or self.service, user or "", access, self.lifetime)

    def issue(self, user: str | None, service: str, scope_texts: list[str]) -> dict[str, object]:
        token = self.mint(user, scope_texts, service)
        issued = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        return {
            "token": token,
            "access_token": token,
            "expires_in": self.lifetime,
            "issued_at": issued,
        }


class _TokenHandler(QuietHandler):
    def do_GET(self) -> None:  # noqa: N802 - stdlib naming
        query = parse_qs(urlsplit(self.path).query)
        self._answer(query, _basic_credentials(self.headers.get("Authorization")))

    def do_POST(self) -> None:  # noqa: N802 - stdlib naming
        form = parse_qs(self.read_body().decode("utf-8", "replace"))
        creds: tuple[str, str] | None
        if form.get("grant_type") == ["password"]:
            creds = (form.get("username", [""])[0], form.get("password", [""])[0])
        else:
            creds = _basic_credentials(self.headers.get("Authorization"))
        self._answer(form, creds)

    def _answer(self, query: dict[str, list[str]], creds: tuple[str, str] | None) -> None:
        server: TokenServer = self.owner()
        path = urlsplit(self.path).path
        scopes = [s for text in query.get("scope", []) for s in text.split(" ") if s]
        service = query.get("service", [None])[0]
        account = query.get("account", [None])[0]
        status = 200
        if path != "/token":
            status = 404
            body: dict[str, object] = {"details": "not found"}
        elif creds is not None and not server.policy.authenticate(*creds):
            status = 401
            body = {"details": "incorrect username or password"}
        else:
            body = server.issue(creds[0] if creds else None, service or server.service, scopes)
        server.log.append(
            TokenRequest(
                method=self.command,
                path=path,
                service=service,
                scopes=tuple(scopes),
                account=account,
                basic_user=creds[0] if creds else None,
                status=status,
            )
        )
        headers = {"Www-Authenticate": 'Basic realm="docxy bed"'} if status == 401 else {}
        self.send_bytes(status, json.dumps(body).encode(), "application/json", headers)
