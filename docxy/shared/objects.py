"""The object store's requests: HEAD, GET (streamed), PUT (streamed from a file).

Requests go through the tier's own httpx client (made like the upstream's; the store's answers
must not count as the upstream's in health and metrics) and are signed with AWS Signature
Version 4 by botocore's signer (``botocore.auth.SigV4Auth``, loaded only when the tier is on).
The payload's SHA-256 is given, never computed by the signer: an upload streams the blob from
disk and its hash is the blob's own digest, already verified by the fill; other requests have
no body.
"""

from __future__ import annotations

import asyncio
import hashlib
import html
import importlib
import re
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field

import httpx

from docxy.cache.files import BlobFile
from docxy.core.digests import Digest
from docxy.core.errors import ConfigError
from docxy.core.headers import ACCEPT_IDENTITY, content_length
from docxy.shared.keys import blob_key, object_url
from docxy.tasks import Coalesced
from docxy.upstream.failures import failure

EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
#: Bytes read from disk per chunk of an upload.
UPLOAD_CHUNK = 1024 * 1024
#: Bytes of an error answer's body read for the store's reason (an S3 ``<Error>`` is ~500).
ERROR_BODY = 4096
_CODE = re.compile(rb"<Code>([A-Za-z0-9.]{1,64})</Code>")
_MESSAGE = re.compile(rb"<Message>([^<]{1,300})</Message>")


class BlobChanged(Exception):
    """A blob's file no longer holds the blob (shorter, or not hashing to its digest): it is
    not uploaded. The local disk's fault, not the store's."""


class ObjectStoreError(Exception):
    """The object store could not be reached or answered with an error; the message says.

    ``status`` is the store's answer (None: none came: unreachable, timed out, cut off) and
    ``code`` its S3 error code (``NoSuchKey``, ``RequestTimeTooSkewed``...; empty: none given).
    """

    def __init__(self, message: str, status: int | None = None, code: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class NotAnS3Store(ObjectStoreError):
    """A success (a ``200``) that no S3 store gave: a web server at ``shared.endpoint`` answers
    every path so. Its page is no object, its PUT stores nothing: the store failing, not a
    corrupt object per blob nor an upload made."""


class NoFreeConnection(ObjectStoreError):
    """No connection of the tier's own client came free in time (its cap taken by other fills
    and uploads): the mirror's limit, not the store failing."""


@dataclass(frozen=True, slots=True)
class Bucket:
    """Where the shared blobs live and how to sign for them."""

    endpoint: str
    bucket: str
    region: str
    access_key: str
    secret_key: str = field(repr=False)
    prefix: str = ""

    def url(self, digest: Digest) -> str:
        return object_url(self.endpoint, self.bucket, blob_key(self.prefix, digest))


def require_signer() -> None:
    """Load the signer at start-up (not on the loop at the first miss); without botocore the
    mirror refuses to start."""
    try:
        importlib.import_module("botocore.auth")
    except ImportError as exc:
        raise ConfigError(
            "shared.endpoint: the shared tier needs botocore: pip install 'docxy[shared]'"
        ) from exc


def signed_headers(
    bucket: Bucket, method: str, url: str, payload_sha256: str, headers: Mapping[str, str] = {}
) -> dict[str, str]:
    """The headers of a SigV4-signed request (``x-amz-date``, ``x-amz-content-sha256``,
    ``Authorization``, and ``headers``); the host is signed as the URL names it."""
    from botocore.auth import SigV4Auth  # ~6 MB: only when the shared tier is on
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    request = AWSRequest(
        method=method, url=url, headers={**headers, "X-Amz-Content-SHA256": payload_sha256}
    )
    SigV4Auth(Credentials(bucket.access_key, bucket.secret_key), "s3", bucket.region).add_auth(
        request
    )
    return {str(name): str(value) for name, value in request.headers.items()}


class ObjectStore:
    """Blobs in one bucket, through ``client``."""

    def __init__(self, bucket: Bucket, client: httpx.AsyncClient) -> None:
        self.bucket = bucket
        self.client = client
        #: monotonic time the endpoint last answered :data:`NEVER_STORED` as an S3 store does
        #: (:meth:`_vouch`): a success without an ``x-amz-`` header is trusted for
        #: :data:`S3_TRUST_FOR` after it, unless the store failed meanwhile (:meth:`distrust`)
        self.vouched_at: float | None = None
        #: the one probe in flight: concurrent askers wait for its answer
        self._probes: Coalesced[str, int | None] = Coalesced(ObjectStoreError)

    def distrust(self) -> None:
        """The store failed, or an object it served did not verify: whatever answers at the
        endpoint now (a store restarted, or replaced by a web server) is asked again whether
        it is an S3 store at its next success without an ``x-amz-`` header."""
        self.vouched_at = None

    async def _send(
        self,
        method: str,
        url: str,
        *,
        payload: str = EMPTY_SHA256,
        headers: Mapping[str, str] = {},
        content: AsyncIterator[bytes] | None = None,
        stream: bool = False,
    ) -> httpx.Response:
        signed = signed_headers(self.bucket, method, url, payload, headers)
        request = self.client.build_request(method, url, headers=signed, content=content)
        try:
            return await self.client.send(request, stream=stream)
        except httpx.PoolTimeout as exc:  # never reached the store
            raise NoFreeConnection(failure(method, exc)) from exc
        except httpx.HTTPError as exc:
            raise ObjectStoreError(failure(method, exc)) from exc

    async def size_of(self, digest: Digest) -> int | None:
        """The stored object's length, or None when there is none (:meth:`head`)."""
        headers = await self.head(digest)
        return None if headers is None else content_length(headers.get("content-length"))

    async def head(self, digest: Digest) -> httpx.Headers | None:
        """The stored object's headers (its length, ETag, Last-Modified), or None when there
        is none.

        A HEAD's answer has no body, so no S3 error code: its 404 is a miss when it is S3's
        (:func:`s3_head_miss`); a 404 that may be anyone's is asked again as a GET, whose
        code tells (:meth:`open`). Asked as :meth:`open` asks (``Accept-Encoding:
        identity``): its ETag is compared with the one a GET's answer gave (a bad object's
        stamp), which a compressing proxy would change for a client that accepts gzip, and
        its length is the object's own."""
        identity = dict([ACCEPT_IDENTITY])
        answer = await self._send("HEAD", self.bucket.url(digest), headers=identity)
        vouched = False
        if answer.status_code == 404:
            miss = s3_head_miss(answer)
            if miss is None:
                await answer.aclose()
                body = await self.open(digest)  # raises for a 404 that is not NoSuchKey
                if body is None:
                    return None
                answer, vouched = body, True  # there after all (uploaded meanwhile): its length
            elif miss:
                return None
        try:
            await _check(answer, "HEAD")
            vouched = vouched or self._vouched(answer)
        finally:
            await answer.aclose()
        if not vouched:
            await self._vouch(answer.status_code, "HEAD")
        return answer.headers

    async def open(self, digest: Digest) -> httpx.Response | None:
        """The object's body, streamed (the caller closes it), or None when there is none.

        Only S3's ``NoSuchKey`` is a miss. Another 404 (``NoSuchBucket``: a bucket never made,
        a typo in ``shared.bucket``; one with no S3 code: no S3 store at that address, a
        path-style URL where the store wants the bucket in the host) is the store's trouble,
        not a miss: no blob can come from it. A ``200`` not vouched for (:meth:`_vouched`) is
        closed, the endpoint asked whether it is an S3 store (:meth:`_vouch`), and the object
        asked for again."""
        identity = dict([ACCEPT_IDENTITY])  # the blob's own bytes, never re-encoded
        url = self.bucket.url(digest)
        vouched = False
        while True:  # twice at most: asked again once the endpoint is vouched for
            answer = await self._send("GET", url, headers=identity, stream=True)
            if answer.status_code == 200:
                if vouched or self._vouched(answer):
                    return answer
                # Its connection goes back first: the probe must not wait for one this answer
                # holds (the client's every connection so held, it would wait out the pool).
                await answer.aclose()
                await self._vouch(answer.status_code, "GET")
                vouched = True
                continue
            error = await refusal(answer, "GET")
            if answer.status_code == 404 and error.code == "NoSuchKey":
                return None
            raise error

    async def put(self, digest: Digest, file: BlobFile, size: int) -> None:
        """Store ``size`` bytes read from ``file`` (a verified sha256 blob) under ``digest``.

        The bytes are hashed again as they are sent, and the PUT is cut before its last byte
        (:class:`BlobChanged`) unless they are the blob: not every store checks the payload
        hash a request is signed with (SeaweedFS does not), and a file can rot after its fill.
        """
        if digest.algorithm != "sha256":
            raise ValueError("only sha256 blobs are signed by their digest")
        if size == 0 and hashlib.sha256().hexdigest() != digest.hex:
            # No last byte to cut the request before: a store would keep an empty object.
            raise BlobChanged("the blob file is empty")
        headers = {"Content-Length": str(size), "Content-Type": "application/octet-stream"}
        answer = await self._send(
            "PUT",
            self.bucket.url(digest),
            payload=digest.hex,
            headers=headers,
            content=_read_chunks(file, size, digest),
        )
        try:
            await _check(answer, "PUT")
            vouched = self._vouched(answer)
        finally:
            await answer.aclose()
        if not vouched:
            await self._vouch(answer.status_code, "PUT")

    def _vouched(self, answer: httpx.Response) -> bool:
        """Whether ``answer``, a success, is an S3 store's: it has an ``x-amz-`` header (every
        answer of AWS S3, MinIO, SeaweedFS, Ceph RGW does), or the endpoint answered
        :data:`NEVER_STORED` as S3 does within :data:`S3_TRUST_FOR` and has not failed since.
        An ``x-amz-`` header vouches for its own answer only: a web server put at the
        endpoint later (a proxy's route changed) sends none, and is asked about at once."""
        if any(name.lower().startswith(S3_HEADERS) for name in answer.headers):
            return True
        at = self.vouched_at
        return at is not None and time.monotonic() - at < S3_TRUST_FOR

    async def _vouch(self, status: int, what: str) -> None:
        """Raise :class:`NotAnS3Store` unless the endpoint answers a key no blob has
        (:data:`NEVER_STORED`) as S3 does, with an error of S3's (``NoSuchKey``, or
        ``AccessDenied`` for a key that may not list the bucket): ``what`` was answered
        ``status``, a success with no ``x-amz-`` header. A web server's page, ``200`` at every
        path, would otherwise pass for each blob's object (a fill that never verifies: its
        client cut, the blob counted corrupt, the tier shown reachable) and its ``200`` to a
        PUT for an upload made. Called with no connection held by that answer; one probe at a
        time, whose answer every caller meanwhile shares (a burst of misses asks once)."""
        said = await self._probes.run("s3", "shared-s3-probe", self._probe)
        if said is not None:
            raise NotAnS3Store(
                f"{what} answered {status} with no x-amz- header, and so did a GET of a key no "
                f"blob has ({said}): {NOT_S3_STORE}",
                status,
            )

    async def _probe(self) -> int | None:
        """Ask :data:`NEVER_STORED`: None when answered as S3 does (the endpoint is vouched
        for from now), the status of a success that says it is no S3 store; raises for an
        error that is not S3's (a 5xx, a 404 with nothing of S3 in it: :data:`NOT_S3_HINT`)."""
        probe = await self._send("GET", self.bucket.url(NEVER_STORED), stream=True)
        if probe.status_code >= 300:
            error = await refusal(probe, "GET")
            if error.code and error.status is not None and error.status < 500:
                self.vouched_at = time.monotonic()  # an S3 error code: a key not there
                return None
            raise error
        await probe.aclose()
        return probe.status_code


#: The header every answer of S3 (and of SeaweedFS, MinIO, Ceph RGW) has; not a web server's.
S3_REQUEST_ID = "x-amz-request-id"
#: What the names of an S3 store's own headers start with (``x-amz-request-id``, ``x-amz-id-2``).
S3_HEADERS = "x-amz-"
#: A key no blob has (a sha256 no one knows the bytes of): what a store that sent nothing of S3
#: with a success answers for it says whether it is one (:meth:`ObjectStore._vouch`).
NEVER_STORED = Digest("sha256", "0" * 64)
#: Seconds the endpoint's answer to :data:`NEVER_STORED` vouches for its successes without an
#: ``x-amz-`` header (a store that sends none: one probe per this while, or after a failure).
S3_TRUST_FOR = 600.0
#: A success from no S3 store (:class:`NotAnS3Store`).
NOT_S3_STORE = (
    "not an S3 store (a web server?); check shared.endpoint: the store's S3 API, "
    "e.g. http://10.0.0.5:8333"
)
#: MinIO's S3 error code of an answer without a body (a HEAD's).
MINIO_ERROR_CODE = "x-minio-error-code"


def s3_head_miss(answer: httpx.Response) -> bool | None:
    """Whether a HEAD's 404 is S3's "no such key": True when an S3 store gave it (its
    ``x-amz-request-id``, and MinIO's code, if any, ``NoSuchKey``); False when it says
    another code (``NoSuchBucket``); None when nothing in it says it is S3's."""
    if MINIO_ERROR_CODE in answer.headers:
        return _header_code(answer) == "NoSuchKey"
    return True if S3_REQUEST_ID in answer.headers else None


async def _check(answer: httpx.Response, what: str) -> None:
    if not 200 <= answer.status_code < 300:
        raise await refusal(answer, what)


#: AWS S3 (and MinIO) answer a GET or HEAD of a missing object 403, not 404, to a key that may
#: not list the bucket: every miss would look like the store refusing the mirror.
LIST_BUCKET_HINT = (
    "a key without s3:ListBucket on the bucket gets this for an object that is not there: "
    "allow it, with GetObject and PutObject"
)

#: A 404 without an S3 error code: not S3's "no such key" (the tier counts it as failing).
NOT_S3_HINT = (
    "no S3 error code: not an S3 store's answer; check shared.endpoint (a store that wants "
    "the bucket in the host name does not take the path-style URLs the mirror sends)"
)


async def refusal(answer: httpx.Response, what: str) -> ObjectStoreError:
    """The error for an answer that is not a success, with the store's own reason when its body
    gives one (an S3 ``<Error>``'s ``Code`` and ``Message``): a bare 403 does not tell a wrong
    secret from a clock that drifted. Reads at most :data:`ERROR_BODY` bytes, and closes it."""
    body = await _head_of_body(answer)
    code = _CODE.search(body)
    message = _MESSAGE.search(body)
    reason = code.group(1).decode() if code else _header_code(answer)
    text = f"{what} answered {answer.status_code}"
    if reason:
        text += f" {reason}"
    if message:
        said = html.unescape(message.group(1).decode("utf-8", "replace"))
        text += ": " + "".join(c if c.isprintable() else " " for c in said).strip()
    if answer.status_code == 403 and what in ("GET", "HEAD") and reason in ("", "AccessDenied"):
        text += f" ({LIST_BUCKET_HINT})"
    elif answer.status_code == 404 and not reason and what != "HEAD":
        text += f" ({NOT_S3_HINT})"
    return ObjectStoreError(text, answer.status_code, reason)


def _header_code(answer: httpx.Response) -> str:
    """The S3 error code of an answer without a body, where the store gives one (MinIO)."""
    code = answer.headers.get(MINIO_ERROR_CODE, "")
    return code if _CODE.fullmatch(f"<Code>{code}</Code>".encode()) else ""


async def _head_of_body(answer: httpx.Response) -> bytes:
    if answer.is_closed:  # read already (not streamed)
        return answer.content[:ERROR_BODY]
    body = b""
    try:
        async for chunk in answer.aiter_raw():
            body += chunk
            if len(body) >= ERROR_BODY:
                break
    except httpx.HTTPError:
        pass  # the status says enough
    finally:
        await answer.aclose()
    return body[:ERROR_BODY]


async def _read_chunks(file: BlobFile, size: int, digest: Digest) -> AsyncIterator[bytes]:
    """``size`` bytes of ``file`` from its start, read and hashed in worker threads. The last
    chunk goes only if all of them hash to ``digest``; else, or if the file is short,
    :class:`BlobChanged` is raised, which cuts the request before its body is complete."""
    hasher = hashlib.sha256()
    offset = 0
    while offset < size:
        length = min(UPLOAD_CHUNK, size - offset)
        chunk = await asyncio.to_thread(_read_and_hash, file, length, offset, hasher)
        if not chunk:
            raise BlobChanged(f"the blob file ended at {offset} of {size} bytes")
        offset += len(chunk)
        if offset >= size and hasher.hexdigest() != digest.hex:
            raise BlobChanged(f"the blob file hashes to sha256:{hasher.hexdigest()}")
        yield chunk


def _read_and_hash(file: BlobFile, length: int, offset: int, hasher: hashlib._Hash) -> bytes:
    chunk = file.pread(length, offset)
    hasher.update(chunk)
    return chunk
