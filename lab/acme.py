"""A real ACME server on loopback: pebble, with pebble-challtestsrv as its DNS.

    pebble-challtestsrv   DNS only: every name resolves to 127.0.0.1 (no AAAA)
    pebble                the ACME directory; validates HTTP-01 on the `http_port` it is given
                          (the mirror's plain-HTTP listener, which serves certbot's webroot)

Pebble's root CA is new at every start; it is fetched from the management port into `root`,
for the clients to trust. Pebble's own HTTPS certificate is `tls_ca` (certbot trusts it through
`--ca-bundle` or REQUESTS_CA_BUNDLE). Issued certificates live `VALIDITY` seconds, so a
certificate is always due for renewal (certbot renews within 30 days of the end).
Without `pebble`, `pebble-challtestsrv` or `certbot` on PATH, `start` raises `lab.Unavailable`.
"""

from __future__ import annotations

import contextlib
import json
import os
import ssl
import subprocess
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from docxy.tls.context import self_signed
from lab import need
from lab.ports import LOOPBACK, accepts, free_port
from lab.processes import stop_process, wait_for

DOMAIN = "mirror.test"
"""The name certificates are issued for (challtestsrv resolves every name to 127.0.0.1)."""
EMAIL = "ops@mirror.test"
VALIDITY = 3600


@dataclass
class Pebble:
    workdir: Path
    http_port: int
    directory: str = ""
    tls_ca: Path = Path()  # pebble's own HTTPS certificate, for certbot
    root: Path = Path()  # the CA behind issued certificates (new at every start)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    #: Where pebble, its DNS and the names it resolves live, and where their ports come from
    #: (a test kept to an address and a range of its own passes both).
    host: str = LOOPBACK
    pick_port: Callable[[], int] = free_port

    def start(self) -> None:
        for name in ("pebble", "pebble-challtestsrv", "certbot"):
            need.binary(name)
        self.workdir.mkdir(parents=True, exist_ok=True)
        host = self.host
        self.tls_ca, tls_key = self_signed(
            self.workdir, host, cert_name="pebble-tls.pem", key_name="pebble-tls.key"
        )
        dns, dns_admin, acme, admin = (self.pick_port() for _ in range(4))
        config = {
            "pebble": {
                "listenAddress": f"{host}:{acme}",
                "managementListenAddress": f"{host}:{admin}",
                "certificate": str(self.tls_ca),
                "privateKey": str(tls_key),
                "httpPort": self.http_port,
                "tlsPort": self.pick_port(),
                "ocspResponderURL": "",
                "externalAccountBindingRequired": False,
                "certificateValidityPeriod": VALIDITY,
            }
        }
        (self.workdir / "pebble.json").write_text(json.dumps(config))
        self._spawn(
            "challtestsrv",
            ["pebble-challtestsrv", "-defaultIPv4", host, "-defaultIPv6", ""]
            + ["-dns01", f"{host}:{dns}", "-management", f"{host}:{dns_admin}"]
            + ["-http01", "", "-https01", "", "-tlsalpn01", ""],
            {},
        )
        wait_for(lambda: accepts(dns, host), timeout=15, what="challtestsrv DNS")
        self._spawn(
            "pebble",
            ["pebble", "-config", str(self.workdir / "pebble.json")]
            + ["-dnsserver", f"{host}:{dns}"],
            {"PEBBLE_VA_NOSLEEP": "1", "PEBBLE_WFE_NONCEREJECT": "0", "PEBBLE_AUTHZREUSE": "0"},
        )
        self.directory = f"https://{host}:{acme}/dir"
        verify = ssl.create_default_context(cafile=self.tls_ca)
        wait_for(lambda: _get(self.directory, verify) is not None, timeout=30, what="pebble")
        root = _get(f"https://{host}:{admin}/roots/0", verify)
        if root is None or b"BEGIN CERTIFICATE" not in root:
            raise RuntimeError(f"pebble gave no root certificate: {root!r}\n{self.logs()}")
        self.root = self.workdir / "pebble-root.pem"
        self.root.write_bytes(root)

    def _spawn(self, name: str, cmd: list[str], env: Mapping[str, str]) -> None:
        with (self.workdir / f"{name}.log").open("ab") as log:
            proc = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **env}
            )
        self.procs.append(proc)

    def stop(self) -> None:
        for proc in reversed(self.procs):
            stop_process(proc, grace=10)
        self.procs.clear()

    def logs(self) -> str:
        """The tail of each log (pebble's and challtestsrv's), for a failure's message."""
        return "\n".join(p.read_text(errors="replace")[-3000:] for p in self.workdir.glob("*.log"))


def _get(url: str, verify: ssl.SSLContext) -> bytes | None:
    try:
        response = httpx.get(url, verify=verify, timeout=5)
    except httpx.TransportError:
        return None
    return response.content if response.status_code == 200 else None


@contextlib.contextmanager
def running_pebble(
    workdir: Path,
    http_port: int,
    *,
    host: str = LOOPBACK,
    pick_port: Callable[[], int] = free_port,
) -> Iterator[Pebble]:
    """Pebble validating HTTP-01 on `http_port`, its files and logs in `workdir`; stopped after.
    On `host` with ports from `pick_port` when given (every name then resolves to `host`)."""
    pebble = Pebble(workdir, http_port, host=host, pick_port=pick_port)
    try:
        pebble.start()
        yield pebble
    finally:
        pebble.stop()
