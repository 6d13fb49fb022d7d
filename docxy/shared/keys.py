"""Object keys and URLs of the shared tier: content-addressed, so replicas never disagree.

A blob ``sha256:<hex>`` is the object ``<prefix>/blobs/sha256/<hex>`` in the bucket, addressed
path-style (``<endpoint>/<bucket>/<key>``), which every S3-compatible store understands.
"""

from __future__ import annotations

import re
from urllib.parse import quote

from docxy.core.digests import Digest

_PREFIX = re.compile(r"[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*")
#: S3's bucket naming rules (3-63 characters: lower case, digits, dots and hyphens).
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")


def parse_prefix(value: str) -> str:
    """A key prefix: path segments of ``[A-Za-z0-9._-]``, slashes trimmed; may be empty.

    Neither ``.`` nor ``..`` is a segment: httpx and the signer both remove such segments from
    a URL's path, so ``a/./b`` would put the blobs under ``a/b`` (and ``.`` at the bucket's
    root), not under the prefix set (nor where a lifecycle rule for it looks)."""
    text = value.strip().strip("/")
    if text and (_PREFIX.fullmatch(text) is None or {".", ".."} & set(text.split("/"))):
        raise ValueError(
            f"expected path segments of letters, digits, '.', '_', '-' (not '.' nor '..'), "
            f"got {value!r}"
        )
    return text


def parse_bucket(value: str) -> str:
    text = value.strip()
    if _BUCKET.fullmatch(text) is None or ".." in text:
        raise ValueError(f"not an S3 bucket name (3-63 of a-z 0-9 . -): {value!r}")
    return text


def blob_key(prefix: str, digest: Digest) -> str:
    """``<prefix>/blobs/<algorithm>/<hex>`` (no prefix: ``blobs/<algorithm>/<hex>``)."""
    key = f"blobs/{digest.algorithm}/{digest.hex}"
    return f"{prefix}/{key}" if prefix else key


def object_url(endpoint: str, bucket: str, key: str) -> str:
    """Path-style URL of ``key``; keys are made of URL-safe characters, quoted all the same."""
    return f"{endpoint.rstrip('/')}/{bucket}/{quote(key, safe='/')}"
