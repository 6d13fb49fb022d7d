"""``docxy warm IMAGE[:TAG]... [--file FILE]``: prefetch images into a running mirror's cache.

Warm pulls through the mirror over HTTP, the way a Docker client does — ``/v2/`` challenge,
token from the realm it names, manifests, then every blob read to its end — so the running
mirror, the one process that owns the cache directory, fills its own cache. Every platform of a
manifest list or OCI index is fetched unless ``--platform`` picks one (attestation entries,
platform ``unknown/unknown``, are skipped like ``docker pull`` does; an entry without a
``platform`` is fetched with every platform, not with one). Each manifest and blob is
checked against its digest as it arrives; each blob's progress goes to stderr (a bar on a
terminal, plain lines otherwise: ``docxy.cli.progress``).

An image counts as warmed only if the mirror cached all of it: every answer's ``Cache-Status``
(RFC 9211) member of the mirror's says so, and a blob sent on a miss is then found by a
``HEAD``. A manifest or blob it passed through uncached (a private repository its own upstream
login may not read, a full or unwritable cache, the cache off) or did not keep fails the image
with the mirror's reason, although each one was fetched and checked.

Over HTTPS warm verifies the mirror's certificate with certifi's CAs, and those of
``--ca-file`` (a private CA, the mirror's self-signed certificate), alike on every Python
(:func:`mirror_ssl_context`); ``--client-cert`` presents a client certificate (``docxy clients
add``'s kit) to a mirror that asks for one, and to any server on warm's way that asks (one
context for every connection: a token realm on another host, a redirect's server gets it too;
the certificate only, never the key).

Exit codes: 0 every image warmed, 1 some image failed, 2 configuration or usage error.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import hashlib
import re
import ssl
import sys
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import httpx

from docxy import __version__
from docxy.cache import Digest, parse_digest
from docxy.cli.cache import human_size
from docxy.cli.exits import EXIT_CONFIG, EXIT_FAILED, EXIT_OK
from docxy.cli.options import ConfigLoader, add_config_arguments, seconds
from docxy.cli.warmtls import client_pair, mirror_ssl_context
from docxy.config import redacted
from docxy.core import jsondoc
from docxy.core.challenge import bearer_challenge, parse_challenge, split_challenges
from docxy.core.errors import ConfigError, DigestInvalid
from docxy.core.headers import ACCEPT_IDENTITY, split_quoted, unquoted
from docxy.core.headers import retry_after_seconds as retry_after_at
from docxy.core.names import ImageRef, parse_image_ref
from docxy.core.verify import NAME_MISMATCH, OUT_OF_DATE, RENEW_OR_CLOCK, UNKNOWN_ISSUER, ssl_cause

USER_AGENT = f"docxy-warm/{__version__}"
INDEX_TYPES = frozenset(
    {
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
    }
)
IMAGE_TYPES = frozenset(
    {
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    }
)
ACCEPT = ", ".join(sorted(INDEX_TYPES | IMAGE_TYPES))
CHUNK = 1 << 20
MAX_MANIFEST = 4 << 20
_REPO_PATH = re.compile(r"/v2/(.+)/(?:manifests|blobs)/[^/]+")


class WarmError(Exception):
    """One image could not be warmed; the message says why."""


# --- auth: the registry token flow, as an httpx.Auth ----------------------------------------


class RegistryAuth(httpx.Auth):
    """Answers a registry's ``401`` like a Docker client: a Bearer challenge sends us to its
    realm for a ``repository:<name>:pull`` token (anonymous, or with Basic credentials); a Basic
    challenge gets the credentials. Every challenge offered counts (several headers, or several
    in one), and Bearer wins over Basic. Tokens are kept per scope for the next requests."""

    def __init__(self, credentials: tuple[str, str] | None = None) -> None:
        self._basic = httpx.BasicAuth(*credentials) if credentials else None
        self._tokens: dict[str, str] = {}
        #: why the token service gave the last request no token (its status and registry
        #: error message: a wrong password, a throttled login), for the 401 warm then prints
        self.refused: str | None = None

    @property
    def credentialed(self) -> bool:
        return self._basic is not None

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        self.refused = None
        match = _REPO_PATH.fullmatch(request.url.path)
        scope = f"repository:{match.group(1)}:pull" if match else ""
        if scope in self._tokens:
            request.headers["Authorization"] = f"Bearer {self._tokens[scope]}"
        response = yield request
        if response.status_code != 401:
            return
        # Each header on its own (httpx's ``get`` joins repeated ones with ", ", which reads
        # as no challenge): a Bearer challenge wins, as in Docker's client; Basic otherwise.
        offered = response.headers.get_list("www-authenticate")
        challenge = bearer_challenge(offered)
        if challenge is None or not challenge.realm:
            if self._basic is not None and _offers_basic(offered):
                yield from self._basic.auth_flow(request)
            return
        params = {"scope": challenge.params.get("scope", scope)}
        if challenge.service:
            params["service"] = challenge.service
        token_request = httpx.Request("GET", challenge.realm, params=params)
        if self._basic is not None:
            token_request = next(self._basic.auth_flow(token_request))
        token_response = yield token_request
        token_response.read()
        if token_response.status_code != 200:
            self.refused = _refusal(token_response)
            return  # the caller sees the token service's answer (a 401: the image's 401)
        body = jsondoc.object_in(token_response.content) or {}
        token = body.get("token") or body.get("access_token")
        if not isinstance(token, str) or not token:
            # Asked again without one: the caller sees the registry's 401 and why (a bare
            # return handed it the token service's 200, read as the manifest).
            self.refused = "the token service sent no token"
            yield request
            return
        self._tokens[scope] = token
        request.headers["Authorization"] = f"Bearer {token}"
        yield request


def _refusal(response: httpx.Response) -> str:
    """A token service's refusal as warm prints it: the status, and the first message of a
    registry error body (``incorrect username or password``), if it is one."""
    errors = (jsondoc.object_in(response.content) or {}).get("errors")
    first = errors[0] if isinstance(errors, list) and errors else None
    message = first.get("message") if isinstance(first, dict) else None
    said = f"the token service answered {response.status_code}"
    if isinstance(message, str) and message.isprintable():
        said += f": {message[:200]}"
    return said


def _offers_basic(values: list[str]) -> bool:
    challenges = (parse_challenge(text) for value in values for text in split_challenges(value))
    return any(c is not None and c.scheme.lower() == "basic" for c in challenges)


# --- the pull -------------------------------------------------------------------------------


@dataclass
class Tally:
    manifests: int = 0
    blobs: int = 0
    bytes: int = 0
    seen: set[str] = field(default_factory=set)


@dataclass(frozen=True, slots=True)
class Descriptor:
    media_type: str
    digest: str
    size: int | None
    platform: str | None


def _descriptor(item: Any) -> Descriptor | None:
    if not isinstance(item, dict) or not isinstance(item.get("digest"), str):
        return None
    size = item.get("size")
    platform = item.get("platform")
    name = None
    if isinstance(platform, dict):
        parts = [platform.get("os"), platform.get("architecture"), platform.get("variant")]
        name = "/".join(str(p) for p in parts if p)
    return Descriptor(
        str(item.get("mediaType", "")),
        item["digest"],
        size if isinstance(size, int) and size >= 0 else None,
        name,
    )


def platform_matches(wanted: str, platform: str | None) -> bool:
    """``all`` takes every real platform, and an entry that names none (``platform`` is
    optional in an OCI index, and containerd pulls such an entry: skipped, it left an image
    that warm called warmed cold); ``linux/arm64`` also takes ``linux/arm64/v8``."""
    if platform is None:
        return wanted == "all"
    if platform.startswith("unknown/"):
        return False
    if wanted == "all":
        return True
    return platform == wanted or platform.startswith(wanted + "/")


def _digest(text: str | None, what: str) -> Digest:
    try:
        return parse_digest(str(text))
    except DigestInvalid as exc:
        raise WarmError(f"{what}: {exc}") from None


def _check(digest: Digest, hasher: Any) -> None:
    if hasher.hexdigest() != digest.hex:
        actual = f"{digest.algorithm}:{hasher.hexdigest()[:12]}"
        raise WarmError(f"{str(digest)[:19]}: the bytes hash to {actual}")


def _json_object(body: bytes, what: str) -> dict[str, Any]:
    doc = jsondoc.object_in(body)
    if doc is None:
        raise WarmError(f"{what}: not a JSON object")
    return doc


#: The mirror's member of ``Cache-Status`` (``docxy.http.responses.CACHE_NAME``).
MIRROR_CACHE = "docxy"
#: Its parameter for a blob served while its commit still runs (``responses.COMMITTING``):
#: every byte verified, not kept yet (a commit that fails leaves it uncached).
COMMITTING = "committing"
#: warm's own reason: a blob sent on a miss that a later HEAD does not find in the cache.
NOT_KEPT = "not-kept"
#: What each reason the mirror gives for passing content through uncached means to a user.
UNCACHED_BECAUSE = {
    "private": (
        "the mirror's own upstream login may not read it, so it passes it through with yours "
        "and caches none of it (pulls still work; an upstream.username that may read it "
        "would let the mirror cache it, for every client)"
    ),
    "bypass": "the mirror's cache is off (--no-cache, cache.enabled = false)",
    "cache-full": "the mirror's cache has no room for it (cache.max_size)",
    "cache-unwritable": "the mirror cannot write its cache (see its log)",
    "evicted": "the mirror's cache evicted it as it was stored (a cache too small for the pulls)",
    "cache-unreadable": "the mirror cannot read its cache (see its log)",
    "upstream-failed": "the mirror's own fetch failed (see its log); try again",
    "unconfirmed": "the upstream did not confirm that this repository holds it (see its log)",
    "upstream-answer": "the upstream's answer is not one the mirror caches (see its log)",
    NOT_KEPT: (
        "the mirror sent it but did not keep it: its download for the cache was given up "
        "midway (a failed write, no room: see its log)"
    ),
}
#: Seconds warm waits for the mirror to keep a blob it sent on a miss: the last byte goes
#: out once verified, before the blob is synced and committed (seconds for a big one).
KEPT_WAIT = 30.0
#: Seconds warm waits in all for a blob the mirror says it is still committing (synced and
#: renamed in: a big one on a slow disk can take more than :data:`KEPT_WAIT`).
COMMIT_WAIT = 300.0
#: A ``429`` (the mirror's per-client ``limits.*``, or its token service's) is asked again after
#: its ``Retry-After`` (a second if it names none), and so is a ``503`` that names one (every
#: connection to the upstream in use, too many open connections, a restart's drain: each says
#: when to come back), this many times at most per request; a wait
#: longer than :data:`RETRY_WAIT_ONE`, or one that would take the run's waits past
#: :data:`RETRY_WAIT_TOTAL` seconds, is not waited: the ``429`` is the answer then.
RETRIES = 5
RETRY_WAIT_ONE = 60.0
RETRY_WAIT_TOTAL = 600.0


def mirror_status(response: httpx.Response) -> dict[str, str] | None:
    """The parameters of the mirror's ``Cache-Status`` member on ``response`` (``{"hit": ""}``,
    ``{"fwd": "miss", "collapsed": ""}``...), or None: the mirror says nothing (an older one).
    The mirror's member is the last one named ``Docxy``: caches after it (a CDN in front)
    add theirs behind it."""
    members = _split(",".join(response.headers.get_list("cache-status")), ",")
    for member in reversed(members):
        name, *params = _split(member, ";")
        if _unquoted(name).lower() == MIRROR_CACHE:
            pairs = (param.partition("=")[::2] for param in params)
            return {key.strip().lower(): _unquoted(value) for key, value in pairs}
    return None


def _split(text: str, separator: str) -> list[str]:
    """``text`` split at ``separator`` outside quoted strings (:func:`split_quoted`), each
    part stripped: a member's ``detail="a, b"`` stays whole. A quote left open splits
    everywhere: it cannot hide the mirror's member behind it."""
    parts = split_quoted(text, separator)
    # A quote never closed: every quote taken as a character, as before RFC 8941.
    return [part.strip() for part in (text.split(separator) if parts is None else parts)]


def _unquoted(value: str) -> str:
    """A token as it is, a quoted string without its quotes and escapes."""
    value = value.strip()
    return unquoted(value) if len(value) >= 2 and value[0] == value[-1] == '"' else value


def uncached_reason(response: httpx.Response) -> str | None:
    """Why the mirror passed ``response`` through uncached or did not keep it (its member's
    ``detail``), or None: it served it through its cache, or says nothing (an older mirror)."""
    return _uncached_because(mirror_status(response))


def _uncached_because(status: dict[str, str] | None) -> str | None:
    """:func:`uncached_reason`, from the mirror's member as :func:`mirror_status` read it."""
    if status is None:
        return None
    if status.get("fwd") == "bypass":
        return status.get("detail") or "bypass"
    if status.get("stored") == "?0":
        return status.get("detail") or NOT_KEPT
    return None


def _sent_on_a_miss(status: dict[str, str] | None) -> bool:
    """Whether the mirror's member (:func:`mirror_status`) says it sent the answer through
    its cache from the upstream (or the bucket) just now, or from a download whose commit still
    runs (``committing``): kept only if that download for the cache ends well."""
    if status is None or status.get("stored") == "?0":
        return False
    return COMMITTING in status or ("hit" not in status and status.get("fwd") == "miss")


def _uncached(counts: collections.Counter[str]) -> str:
    """The WarmError message for content the mirror did not cache, by reason."""
    said = []
    for reason, count in sorted(counts.items()):
        what = UNCACHED_BECAUSE.get(reason, f"the mirror says {reason}")
        said.append(f"{count} not cached: {what}")
    return "fetched and checked, but not cached: " + "; ".join(said)


class Warmer:
    """Pulls images through a mirror with one ``httpx.Client``."""

    def __init__(
        self, client: httpx.Client, platform: str = "all", progress: TextIO | None = None
    ) -> None:
        self.client = client
        self.platform = platform
        self.progress = sys.stderr if progress is None else progress
        self.tally = Tally()
        #: The client certificate warm presents (``--client-cert``), for the messages of a
        #: refused handshake: None, none.
        self.client_cert: str | None = None
        #: Of the image being warmed: manifests and blobs passed through uncached, by reason.
        self.uncached: collections.Counter[str] = collections.Counter()
        #: Of the image being warmed: the blobs fetched, and those sent on a miss (to be
        #: found in the cache once the image is read: :meth:`_confirm_kept`).
        self._fetched: set[str] = set()
        self._missed: list[Digest] = []
        #: How warm waits out a ``429``'s ``Retry-After``, and what it waited so far in all.
        self.sleep: Callable[[float], object] = time.sleep
        self.waited = 0.0
        #: Answers (200s) that said nothing of the cache: no ``Cache-Status`` member of the
        #: mirror's (a plain registry or another mirror as ``--mirror``).
        self.unsaid = 0

    @contextlib.contextmanager
    def _ask(
        self, method: str, path: str, headers: dict[str, str] | None = None
    ) -> Iterator[httpx.Response]:
        """``client.stream(method, path)``, asked again after a ``429``'s ``Retry-After``
        (or a ``503``'s: :data:`RETRIES`, :data:`RETRY_WAIT_ONE`, :data:`RETRY_WAIT_TOTAL`):
        the mirror's per-client limits refuse a long list's requests for a second or so, not
        for good. Every answer without the mirror's ``Cache-Status`` member is counted
        (:attr:`unsaid`)."""
        for attempt in range(RETRIES + 1):
            with self.client.stream(method, path, headers=headers) as response:
                wait = None if attempt == RETRIES else self._retry_wait(response)
                if wait is None:
                    if response.status_code == 200 and mirror_status(response) is None:
                        self.unsaid += 1
                    yield response
                    return
            self.sleep(wait)
            self.waited += wait

    def _retry_wait(self, response: httpx.Response) -> float | None:
        """Seconds to wait before asking again after ``response``, or None: it is the answer."""
        if response.status_code == 503 and "retry-after" in response.headers:
            pass  # the mirror says when it expects to answer again
        elif response.status_code != 429:
            return None
        wait = retry_after_seconds(response.headers.get("retry-after"))
        if wait > RETRY_WAIT_ONE or self.waited + wait > RETRY_WAIT_TOTAL:
            return None
        return wait

    def warm(self, image: ImageRef) -> Tally:
        """Fetch ``image``'s manifests and blobs; what it took is added to ``self.tally``.
        Raises :class:`WarmError` if the mirror did not cache all of it."""
        before = Tally(self.tally.manifests, self.tally.blobs, self.tally.bytes)
        self.uncached.clear()
        self._fetched.clear()
        self._missed.clear()
        body, media_type = self._manifest(image.name, image.ref, image.digest)
        if media_type in INDEX_TYPES:
            entries = _json_object(body, f"manifest {image.ref}").get("manifests")
            children = [_descriptor(item) for item in entries or []]
            chosen = [c for c in children if c and platform_matches(self.platform, c.platform)]
            if not chosen:
                raise WarmError(f"no manifest for platform {self.platform}")
            for child in chosen:
                digest = _digest(child.digest, "a platform entry")
                child_body, child_type = self._manifest(image.name, str(digest), digest)
                self._blobs(image.name, child_body, child_type)
        else:
            self._blobs(image.name, body, media_type)
        self._confirm_kept(image.name)
        if self.uncached:
            raise WarmError(_uncached(self.uncached))
        return Tally(
            self.tally.manifests - before.manifests,
            self.tally.blobs - before.blobs,
            self.tally.bytes - before.bytes,
        )

    def _manifest(self, name: str, ref: str, digest: Digest | None) -> tuple[bytes, str]:
        """Manifest ``ref``, checked against ``digest`` or the mirror's Docker-Content-Digest."""
        path = f"/v2/{name}/manifests/{ref}"
        with self._ask("GET", path, headers={"Accept": ACCEPT}) as response:
            _raise_for_status(response, path, self.client.auth, self.client_cert)
            self._note_uncached(mirror_status(response))
            buffer = bytearray()
            for chunk in response.iter_raw():  # the digest's bytes: see run()
                buffer += chunk
                if len(buffer) > MAX_MANIFEST:
                    raise WarmError(f"{path}: manifest larger than {human_size(MAX_MANIFEST)}")
        body = bytes(buffer)
        media_type = response.headers.get("content-type", "").split(";")[0].strip()
        header = response.headers.get("docker-content-digest")
        if digest is None and header:
            digest = _digest(header, f"manifest {ref}: Docker-Content-Digest")
        if digest is not None:
            _check(digest, hashlib.new(digest.algorithm, body))
        if media_type not in INDEX_TYPES | IMAGE_TYPES:
            raise WarmError(f"manifest {ref}: unsupported media type {media_type!r}")
        self.tally.manifests += 1
        return body, media_type

    def _note_uncached(self, status: dict[str, str] | None) -> bool:
        """Count an answer if the mirror's member (``status``) says it did not cache it; True
        if it did not say so."""
        reason = _uncached_because(status)
        if reason is not None:
            self.uncached[reason] += 1
        return reason is None

    def _blobs(self, name: str, body: bytes, media_type: str) -> None:
        if media_type not in IMAGE_TYPES:
            raise WarmError(f"a platform entry is a {media_type}, not an image manifest")
        doc = _json_object(body, "image manifest")
        layers = doc.get("layers")
        items = [doc.get("config"), *(layers if isinstance(layers, list) else [])]
        for descriptor in filter(None, map(_descriptor, items)):
            digest = descriptor.digest
            if digest in self.tally.seen or digest in self._fetched:
                continue
            self._fetched.add(digest)  # once per image: another platform's may share it
            if self._blob(name, descriptor):
                self.tally.seen.add(digest)  # not if uncached: another image may cache it

    def _blob(self, name: str, descriptor: Descriptor) -> bool:
        """Read one blob through the mirror, checked; True if the mirror had it cached (or,
        an older one, says nothing)."""
        from docxy.cli.progress import TransferProgress  # rich: not in `docxy serve`'s memory

        digest = _digest(descriptor.digest, "a layer")
        hasher = digest.hasher()
        done = 0
        path = f"/v2/{name}/blobs/{digest}"
        with (
            TransferProgress(self.progress, str(digest)[:19], descriptor.size) as progress,
            self._ask("GET", path) as response,
        ):
            _raise_for_status(response, path, self.client.auth, self.client_cert)
            status = mirror_status(response)
            cached = self._note_uncached(status)
            if _sent_on_a_miss(status):
                self._missed.append(digest)
                cached = False  # not yet: once the mirror has it (_confirm_kept)
            for chunk in response.iter_raw(CHUNK):  # the digest's bytes: see run()
                hasher.update(chunk)
                done += len(chunk)
                progress.update(done)
            if descriptor.size is not None and done != descriptor.size:
                progress.finish(done, "wrong length")
                raise WarmError(
                    f"{str(digest)[:19]}: got {done} bytes, the manifest says {descriptor.size}"
                )
            try:
                _check(digest, hasher)
            except WarmError:
                progress.finish(done, "digest mismatch")
                raise
            progress.finish(done, "ok")
        self.tally.blobs += 1
        self.tally.bytes += done
        return cached

    def _confirm_kept(self, name: str) -> None:
        """Ask the mirror (``HEAD``) for each blob of the image it sent on a miss, until it has
        it (a ``HEAD`` of a blob it does not have passes through, and says so) or up to
        :data:`KEPT_WAIT` seconds: one given up midway was sent whole, and is not cached. One
        whose commit still runs (``committing``: the commit may yet fail) is waited for up to
        :data:`COMMIT_WAIT` seconds: the sync of a big blob on a slow disk takes that long."""
        pending = list(self._missed)
        started, delay = time.monotonic(), 0.05
        committing = False
        while pending:
            said = {digest: self._kept(name, digest) for digest in pending}
            self.tally.seen.update(str(digest) for digest, kept in said.items() if kept)
            pending = [digest for digest, kept in said.items() if not kept]
            # COMMIT_WAIT while a blob's latest answer says its commit runs: not for good
            committing = any(kept is None for kept in said.values())
            waited = time.monotonic() - started
            if not pending or waited >= (COMMIT_WAIT if committing else KEPT_WAIT):
                break
            time.sleep(delay)
            delay = min(delay * 2, 2.0)
        if pending:
            self.uncached[NOT_KEPT] += len(pending)

    def _kept(self, name: str, digest: Digest) -> bool | None:
        """Whether the mirror has ``digest`` kept; None: its commit still runs."""
        path = f"/v2/{name}/blobs/{digest}"
        with self._ask("HEAD", path) as response:
            status = mirror_status(response)
            if status is not None and COMMITTING in status:
                return None  # served from the verified temp file: the commit may yet fail
            return response.status_code == 200 and _uncached_because(status) is None


def retry_after_seconds(value: str | None) -> float:
    """A ``Retry-After`` (seconds, or an HTTP date) as seconds from now, at least 0
    (:func:`docxy.core.headers.retry_after_seconds`); a second when there is none or it is
    neither."""
    wait = retry_after_at(value, time.time())
    return 1.0 if wait is None else wait


def _raise_for_status(
    response: httpx.Response, path: str, auth: object = None, client_cert: str | None = None
) -> None:
    """A ``WarmError`` for anything but a ``200``; a ``401`` says what the token service said
    (``auth``: the client's :class:`RegistryAuth`), else that the image may be private (and,
    over HTTPS, that a client certificate is a way in too, or, when warm presented
    ``client_cert``, that the mirror did not take it as a client)."""
    if response.status_code == 200:
        return
    if response.status_code == 401:
        refused = auth.refused if isinstance(auth, RegistryAuth) else None
        if refused is not None and isinstance(auth, RegistryAuth) and auth.credentialed:
            raise WarmError(f"{path}: unauthorized: {refused}")
        hint = "private? try --username and --password-stdin"
        if response.url.scheme == "https" and client_cert is not None:
            # past the handshake, so from the mirror's CA: not (or no longer) a client of it
            hint += f"; the client certificate warm presented ({client_cert}) was not taken"
            hint += " as a client of this mirror (revoked?)"
        elif response.url.scheme == "https":
            # auth.mode = users with auth.client_certs: a client without a certificate
            # passes the handshake (the mirror asks, does not require) and is then a 401
            hint += ", or --client-cert DIR (a kit from docxy clients add)"
        raise WarmError(f"{path}: unauthorized ({refused + '; ' if refused else ''}{hint})")
    if response.status_code == 404:
        raise WarmError(f"{path}: not found")
    response.read()
    if response.status_code == 429:
        raise WarmError(
            f"{path}: the mirror answered 429 (its per-client limits, limits.*, or its token "
            f"service's; Retry-After: {response.headers.get('retry-after', 'none')}), after "
            f"waiting as long as warm waits: {response.text[:200]}"
        )
    raise WarmError(f"{path}: the mirror answered {response.status_code}: {response.text[:200]}")


# --- wiring into ``docxy`` ------------------------------------------------------------------


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``docxy warm``; ``args.handler(args, load_config)`` runs it."""
    warm = commands.add_parser(
        "warm", help="prefetch images into the running mirror's cache (all platforms)"
    )
    warm.add_argument("images", metavar="IMAGE[:TAG]", nargs="*")
    warm.add_argument(
        "--file",
        metavar="FILE",
        help="warm the images listed in FILE too, one a line (blank lines and # comments "
        "skipped; CRLF line ends taken)",
    )
    warm.add_argument(
        "--mirror", metavar="URL", help="the running mirror (default: server.public_url)"
    )
    warm.add_argument(
        "--platform", default="all", metavar="all|OS/ARCH", help="platforms of a list (all)"
    )
    warm.add_argument("--username", help="log in to the mirror's token service as this user")
    warm.add_argument(
        "--password-stdin", action="store_true", help="read the password from standard input"
    )
    warm.add_argument("--timeout", type=seconds, default=60.0, help="read timeout, seconds (60)")
    warm.add_argument(
        "--ca-file",
        metavar="PEM",
        help="trust the CAs in this file too, for the mirror's certificate (a private CA, or "
        "the mirror's own self-signed certificate)",
    )
    warm.add_argument(
        "--client-cert",
        metavar="CERT|DIR",
        help="present this client certificate (or a `docxy clients add` kit directory's "
        "client.cert and client.key) to the mirror",
    )
    warm.add_argument("--client-key", metavar="KEY", help="the key of --client-cert CERT")
    # --set too: warm reads the mirror's settings (server.public_url, upstream.library_prefix,
    # the upstreams), given as the mirror was started with them.
    add_config_arguments(warm)
    warm.set_defaults(handler=run)


def run(args: argparse.Namespace, load_config: ConfigLoader) -> int:
    try:
        config = load_config(args)
        mirror = _mirror_url(args.mirror or config.server.public_url)
        credentials = _credentials(args)
        prefix = config.upstream.library_prefix
        names = [upstream.name for upstream in config.upstreams]
        listed = [*args.images, *(_image_list(args.file) if args.file is not None else [])]
        if not listed:
            raise ValueError("no image to warm: name one (IMAGE[:TAG]), or --file FILE")
        images = [_mirror_image(text, names, library_prefix=prefix) for text in listed]
        if args.platform != "all" and not re.fullmatch(
            r"[a-z0-9]+/[a-z0-9_]+(/[a-z0-9]+)?", args.platform
        ):
            raise ValueError(f"--platform {args.platform!r}: expected all or OS/ARCH[/VARIANT]")
        client_cert, client_key = client_pair(args.client_cert, args.client_key)
        tls = mirror_ssl_context(args.ca_file, client_cert, client_key)
    except (ConfigError, ValueError) as exc:
        print(f"docxy warm: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    _say_unused_tls(mirror, args.ca_file, client_cert)
    timeout = httpx.Timeout(connect=10.0, read=args.timeout, write=30.0, pool=10.0)
    with httpx.Client(
        base_url=mirror,
        auth=RegistryAuth(credentials),
        timeout=timeout,
        follow_redirects=True,
        verify=tls,
        # Identity, and bodies read raw: a digest names the bytes as stored. httpx asked for
        # gzip and undid any Content-Encoding, so a layer its storage labels gzip (passed
        # through uncached) was unzipped into other bytes and failed its check.
        headers=dict([("User-Agent", USER_AGENT), ACCEPT_IDENTITY]),
    ) as client:
        warmer = Warmer(client, args.platform)
        warmer.client_cert = client_cert
        return warm_all(warmer, images, sys.stdout)


def _say_unused_tls(mirror: str, ca_file: str | None, client_cert: str | None) -> None:
    """A warning for TLS options given with a plain-HTTP mirror: they are used only if it
    redirects warm to ``https://`` (a user who gave them most likely meant its TLS listener)."""
    given = [
        option
        for option, value in (("--ca-file", ca_file), ("--client-cert", client_cert))
        if value is not None
    ]
    if given and httpx.URL(mirror).scheme == "http":
        print(
            f"docxy warm: warning: {' and '.join(given)} not used with {mirror}, a plain-HTTP "
            "URL (only if it redirects to https://); the mirror's TLS listener is "
            "https://HOST[:PORT]",
            file=sys.stderr,
        )


def _mirror_url(text: str) -> str:
    """``--mirror`` (or ``server.public_url``) as an http(s) URL with a host and no login, or
    ValueError (naming the URL with any login in it masked).

    A login in the URL (``http://user:password@host``, as curl takes it) is refused: warm's
    own auth (:class:`RegistryAuth`) left httpx to ignore it, so the mirror saw an anonymous
    client, and every message naming the mirror printed the password."""
    shown = redacted(text)
    try:
        url = httpx.URL(text)
    except httpx.InvalidURL as exc:
        raise ValueError(f"--mirror {shown!r}: not a URL ({redacted(str(exc))})") from None
    if url.userinfo:
        raise ValueError(
            f"--mirror {shown!r}: a login in the URL is not used; give it as --username USER "
            "--password-stdin (passwords never go on the command line)"
        )
    if url.scheme not in ("http", "https") or not url.host:
        raise ValueError(f"--mirror {shown!r}: expected http://HOST[:PORT] or https://HOST[:PORT]")
    return text


def _image_list(path: str) -> list[str]:
    """The images a list file names (``--file``): one a line, what follows a ``#`` a comment
    (no image reference holds one), blank lines skipped, each line stripped (a CRLF line end
    too). ValueError naming the file: it cannot be read, names no image, or a line is not one
    image reference (the line's number)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise ValueError(f"--file {path}: cannot read it ({why})") from None
    images = []
    for number, line in enumerate(text.splitlines(), 1):
        words = line.split("#", 1)[0].split()
        if len(words) > 1:
            raise ValueError(f"--file {path}: line {number}: one image a line, not {len(words)}")
        for word in words:
            try:
                parse_image_ref(word, library_prefix=False)  # which line, if it is none
            except ValueError as exc:
                raise ValueError(f"--file {path}: line {number}: {exc}") from None
            images.append(word)
    if not images:
        raise ValueError(f"--file {path}: no image in it (only blank lines and # comments)")
    return images


def _mirror_image(text: str, upstreams: list[str], *, library_prefix: bool) -> ImageRef:
    """The image as the mirror names it: ``library/`` added only if ``upstream.library_prefix``;
    ``ghcr.io/owner/img`` by path prefix when ``ghcr.io`` is one of the configured upstreams."""
    image = parse_image_ref(text, library_prefix=library_prefix)
    if image.on_hub():
        return image
    if image.domain in upstreams and ":" in image.domain:
        # A repository name has no ``:``: such an upstream is reached by ?ns= alone.
        raise ValueError(
            f"{text!r}: warm pulls by path prefix, and {image.domain}, named with its port, "
            f"is no path prefix (containerd reaches it by ?ns=)"
        )
    if image.domain in upstreams:
        return ImageRef(None, f"{image.domain}/{image.name}", image.tag, image.digest)
    known = ", ".join(["docker.io", *upstreams])
    raise ValueError(
        f"{text!r}: {image.domain} is not one of the mirror's upstreams ({known}); "
        f"configure it under upstreams, or name the image without a registry"
    )


def _credentials(args: argparse.Namespace) -> tuple[str, str] | None:
    if args.password_stdin and not args.username:
        raise ValueError("--password-stdin needs --username")
    if not args.username:
        return None
    if not args.password_stdin:
        raise ValueError(
            "--username needs --password-stdin (passwords never go on the command line)"
        )
    password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        raise ValueError("--password-stdin: no password on standard input")
    try:
        args.username.encode()  # from the command line, in another encoding: the same refusal
        password.encode()
    except UnicodeEncodeError:  # its message holds a character of the password and its place
        raise ValueError(
            "--username/--password-stdin: the login is not UTF-8 text (typed or piped in "
            "another encoding, such as Latin-1?): the mirror takes a login as UTF-8, so it "
            "could never match"
        ) from None
    return args.username, password


def warm_all(warmer: Warmer, images: list[ImageRef], out: TextIO) -> int:
    status = EXIT_OK
    started = time.monotonic()
    cached = 0
    for image in images:
        began = time.monotonic()
        try:
            took = warmer.warm(image)
        except WarmError as exc:
            print(f"docxy warm: {image}: {exc}", file=sys.stderr)
            status = EXIT_FAILED
            continue
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            # Every image after this one would fail the same way: say where, once, and stop
            # (the total still says how many were cached before).
            unreachable = _unreachable(warmer.client, exc, warmer.client_cert)
            print(f"docxy warm: {image}: {unreachable}", file=sys.stderr)
            status = EXIT_FAILED
            break
        except httpx.HTTPError as exc:
            refused = _certificate_refused(warmer.client, exc, warmer.client_cert)
            if refused is not None:  # the same for every image after this one: stop
                print(f"docxy warm: {image}: {refused}", file=sys.stderr)
                status = EXIT_FAILED
                break
            print(f"docxy warm: {image}: {type(exc).__name__}: {exc}", file=sys.stderr)
            status = EXIT_FAILED
            continue
        cached += 1
        print(f"{image}: {_summary(took, time.monotonic() - began)}", file=out)
    if warmer.unsaid:
        print(
            f"docxy warm: {warmer.unsaid} answers of {warmer.client.base_url} had no "
            f"Cache-Status of the mirror's: not a Docxy mirror? What was read was checked, "
            "but whether it is cached there is unknown",
            file=sys.stderr,
        )
    if len(images) > 1:
        # what was read, failed images' reads included, beside how many images it cached
        read = _summary(warmer.tally, time.monotonic() - started)
        print(f"total: {cached} of {len(images)} images cached; read {read}", file=out)
    return status


def _unreachable(
    client: httpx.Client, exc: httpx.TransportError, client_cert: str | None = None
) -> str:
    """What a failed connection means: the mirror is not where warm looked, or (when the
    mirror sent warm elsewhere, e.g. to a token realm built from its server.public_url) that
    other place is not reachable from here; or its certificate is not one warm trusts, or it
    refused warm's client certificate (or its lack) in the handshake (TLS 1.2), or it answered
    warm's TLS hello with plain HTTP."""
    refused = _certificate_refused(client, exc, client_cert)
    if refused is not None:
        return refused
    untrusted = ssl_cause(exc)
    if isinstance(untrusted, ssl.SSLCertVerificationError):
        return (
            f"{_place(client, exc)} sent a certificate warm does not trust "
            f"({untrusted.verify_message}){_untrusted_hint(client, exc, untrusted.verify_code)}"
        )
    reason = f"{type(exc).__name__}: {exc}"
    mirror = str(client.base_url).rstrip("/")
    where = _elsewhere(client, exc)
    if untrusted is not None and untrusted.reason in _NOT_TLS:
        said = f"{_place(client, exc)} answered warm's TLS hello with what is not TLS ({reason})"
        if where is None:  # the mirror: its plain-HTTP listener, named https://?
            plain = str(client.base_url.copy_with(scheme="http")).rstrip("/")
            return f"{said}: plain HTTP there? --mirror {plain}"
        return said
    if where is None:
        return (
            f"cannot reach the mirror at {mirror} ({reason}): is docxy serve running there? "
            f"--mirror URL names another (the default is server.public_url)"
        )
    return f"the mirror at {mirror} sent warm to {where}, which cannot be reached ({reason})"


#: What OpenSSL (3.0, 1.1) says when the answer to its hello is not TLS (plain HTTP, say); one
#: that says it otherwise gets the message of a mirror not reached, as before.
_NOT_TLS = frozenset({"WRONG_VERSION_NUMBER"})


def _untrusted_hint(client: httpx.Client, exc: httpx.HTTPError, code: int) -> str:
    """What mends a certificate warm does not trust, by why (``verify_code``): ``--ca-file``
    only for an issuer warm does not know; it cannot help a name mismatch or an expired one."""
    if code in UNKNOWN_ISSUER:
        return (
            ": --ca-file PEM adds the CA that issued it (for a mirror's own self-signed "
            "certificate: that certificate)"
        )
    if code in NAME_MISMATCH:
        where = _elsewhere(client, exc)
        if where is not None:  # the mirror's token realm or a redirect: its name, not warm's
            return f": it is not for {httpx.URL(where).host}"
        return f": it is not for {client.base_url.host}: --mirror URL with a name it holds"
    if code in OUT_OF_DATE:
        return f": {RENEW_OR_CLOCK}"
    return ""


def _elsewhere(client: httpx.Client, exc: httpx.HTTPError) -> str | None:
    """Where the request that failed went (its URL without the query) if not to the mirror's
    scheme, host and port, else None."""
    try:
        asked = exc.request.url
    except RuntimeError:  # no request attached: it can only be the mirror
        return None
    mirror = client.base_url
    if (asked.scheme, asked.host, asked.port) == (mirror.scheme, mirror.host, mirror.port):
        return None
    return str(asked.copy_with(query=None))


def _place(client: httpx.Client, exc: httpx.HTTPError) -> str:
    """The server of the request that failed, as a message names it."""
    mirror = str(client.base_url).rstrip("/")
    where = _elsewhere(client, exc)
    return f"the mirror at {mirror}" if where is None else f"{where} (the mirror sent warm there)"


#: What a server says (a TLS alert) when it wants a client certificate it did not get, or
#: does not take the one it got. Under TLS 1.3 it comes with the first read, not the handshake;
#: under TLS 1.2 a missing one is a plain handshake failure (as is a cipher suite or version
#: the two do not share: the message says both).
_CLIENT_CERT_ALERTS = (
    "HANDSHAKE_FAILURE",
    "CERTIFICATE_REQUIRED",
    "BAD_CERTIFICATE",
    "UNKNOWN_CA",
    "CERTIFICATE_UNKNOWN",
    "CERTIFICATE_EXPIRED",
    "CERTIFICATE_REVOKED",
    "UNSUPPORTED_CERTIFICATE",
)


def _certificate_refused(
    client: httpx.Client, exc: httpx.HTTPError, client_cert: str | None = None
) -> str | None:
    """What warm prints for a server that refused its TLS client (no client certificate, or
    ``client_cert``, the one it presented, not taken), or None: ``exc`` is another failure."""
    error = ssl_cause(exc)
    reason = (getattr(error, "reason", None) or "") if error is not None else ""
    if "ALERT" not in reason or not reason.endswith(_CLIENT_CERT_ALERTS):
        return None
    said = (
        f"{_place(client, exc)} refused warm's TLS connection ({reason.lower().replace('_', ' ')})"
    )
    if client_cert is not None:
        refused = (
            f"the client certificate warm presented ({client_cert}) is not one it takes (a "
            f"kit of its CA from docxy clients add, not expired or revoked?)"
        )
    else:
        refused = (
            "if it takes only clients with a certificate from its CA, give one: --client-cert "
            "CERT --client-key KEY, or --client-cert DIR (a kit from docxy clients add)"
        )
    if reason.endswith("HANDSHAKE_FAILURE"):
        return f"{said}: the two share no TLS version or cipher suite; or {refused}"
    return f"{said}: {refused}"


def _summary(tally: Tally, seconds: float) -> str:
    rate = human_size(int(tally.bytes / seconds)) if seconds > 0 else "-"
    return (
        f"{tally.manifests} manifests, {tally.blobs} blobs, {human_size(tally.bytes)} "
        f"in {seconds:.1f}s ({rate}/s)"
    )
