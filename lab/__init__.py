"""The loopback lab: real parts started on 127.0.0.1 for the tests and the benchmarks.

    registry     a Distribution registry (Debian's docker-registry): token or Basic auth, none,
                 proxy mode, TLS
    mirror       Docxy itself as a child process (`python -m docxy serve`)
    basic_upstream  a second upstream: a registry with htpasswd Basic auth, seeded
    acme         a real ACME server: pebble, with pebble-challtestsrv as its DNS (certbot's tests)
    bed/         the Docker-Hub-like upstream: token server, registry, front, CDN, faults, images
    clients/     private dockerd and containerd, the egress guard, relays and forwarders, a network
                 namespace, TLS trust for daemons, the appliance's base image and containers
    service      a child process serving HTTP on a free port, waited on until it answers
    health       a stand-in for the mirror's /health, for the probes that ask it
    processes    polling, stopping, unmounting; CPU and memory of a process tree (/proc)
    ports, certs free loopback ports, whether one accepts; a self-signed certificate for 127.0.0.1,
                 and certificate chains (a root, intermediates, a leaf)
    need         the binaries and privileges a part needs

Nothing here imports pytest. A part that cannot run on this machine (a missing binary, not
root) raises `Unavailable`: the tests turn it into a skip (a failure under DOCXY_REQUIRE_E2E=1,
tests/unavailable.py), a benchmark into a message. Not shipped: neither the wheel nor the image
contains this package.
"""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
"""The checkout the lab runs from (the mirror and the image are this tree's code)."""


class Unavailable(Exception):
    """A part cannot be started on this machine; the message says what is missing."""
