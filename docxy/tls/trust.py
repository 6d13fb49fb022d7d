"""What a Docker client makes of the served certificate: one a CA issued for the mirror's
domain, the self-signed bootstrap one, one from Let's Encrypt's staging CA, or one that does
not name the domain.

``/health`` stayed ``ok`` while the mirror served its bootstrap certificate (before certbot's
first issuance, or while issuance kept failing) or a lineage for another name, and every
``docker pull`` failed with an x509 error. :func:`served_kind` says which it is from the
certificate alone; :func:`refusal` says, in a sentence for ``/status.json`` (the public
``/health``: ``clients_refuse``), why clients refuse it, when the mirror knows they will:
with ``certs.domain`` and ``tls.cert_path`` the renewer puts a CA's certificate for that
domain there, so anything else is a stand-in or a mistake. The mirror's own self-signed pair
(no certificate paths) and a pair the operator installed without ``certs.domain`` are the
operator's choice: their kind is shown, never held against them.

Names are compared as TLS clients compare them (RFC 6125): case-insensitively, a wildcard
only as the whole left-most label (``*.example.com`` names ``mirror.example.com``, not
``example.com`` nor ``a.b.example.com``), an IP address only by an IP entry. The common name
is not looked at: Go's TLS (Docker's) ignores it.

An upstream's ``hosts`` (host-based routing) are names clients reach the mirror by too, and
the certificate certbot is asked for names ``certs.domain`` alone: :func:`uncovered` says which
of them the served certificate does not name, :func:`hosts_refusal` what that means and what
to do. Said whatever the certificate is: no client takes one for a name it does not carry.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence

from docxy.core.hosts import host_key

#: :func:`served_kind`'s answers, as ``/health`` shows them under ``tls.served``.
CA_ISSUED = "ca-issued"
SELF_SIGNED = "self-signed"
STAGING = "staging-ca"  # from Let's Encrypt's staging CA (docxy.tls.context.from_staging)
OTHER_NAME = "other-name"


def names(sans: Sequence[str], host: str) -> bool:
    """Whether a certificate with these subject alternative names is one for ``host``."""
    address = _address(host)
    if address is not None:
        return any(_address(san) == address for san in sans)
    wanted = host.rstrip(".").lower()
    for san in sans:
        entry = san.rstrip(".").lower()
        if entry == wanted:
            return True
        if entry.startswith("*.") and "." in wanted:
            first, rest = wanted.split(".", 1)
            if first and rest == entry[2:]:
                return True
    return False


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        return None


def served_kind(
    self_signed: bool, sans: Sequence[str], domain: str | None, *, staging: bool = False
) -> str:
    """:data:`SELF_SIGNED`, :data:`STAGING` (``staging``: its issuer is Let's Encrypt's staging
    CA), :data:`OTHER_NAME` (one that does not name ``domain``), or :data:`CA_ISSUED`. The
    first two first: no client trusts them, whatever they name. Without a domain no name is
    checked."""
    if self_signed:
        return SELF_SIGNED
    if staging:
        return STAGING
    if domain is not None and not names(sans, domain):
        return OTHER_NAME
    return CA_ISSUED


def verdict(
    self_signed: bool,
    sans: Sequence[str],
    domain: str | None,
    *,
    staging: bool = False,
    issuer_included: bool = True,
) -> tuple[str, str | None]:
    """:func:`served_kind` and :func:`refusal` of one certificate: what ``/health`` and
    ``docxy certs status`` show as ``served`` and ``warning``. A CA's certificate for the
    domain served without its issuer's (``issuer_included`` false: the leaf alone, cert.pem
    where fullchain.pem belongs) is refused too."""
    kind = served_kind(self_signed, sans, domain, staging=staging)
    refused = refusal(kind, sans, domain)
    if refused is None and domain is not None and kind == CA_ISSUED and not issuer_included:
        refused = (
            "serving the certificate without its issuer's (the intermediate): clients refuse it"
            " (x509: certificate signed by unknown authority); install the full chain"
            " (certbot's fullchain.pem, not cert.pem) at tls.cert_path"
        )
    return kind, refused


def refusal(kind: str, sans: Sequence[str], domain: str | None) -> str | None:
    """Why Docker clients refuse the served certificate (None: they need not), when the mirror
    expects a CA's certificate for ``domain`` (None: it expects none, see the module's
    docstring)."""
    if domain is None or kind == CA_ISSUED:
        return None
    if kind == SELF_SIGNED:
        return (
            f"serving the self-signed bootstrap certificate: no certificate for {domain} has"
            " been installed yet, and clients refuse this one (x509: certificate signed by"
            " unknown authority); see renewal"
        )
    if kind == STAGING:
        return (
            "serving a certificate from Let's Encrypt's staging CA: clients refuse it (x509:"
            " certificate signed by unknown authority), and its renewals keep to the CA that"
            f" issued it; for a trusted one, move the lineage of {domain}"
            f" (renewal/{domain}.conf, live/{domain}, archive/{domain}) out of"
            " certs.config_dir, then obtain one from the production CA (no --staging, no"
            " staging certs.acme_server)"
        )
    named = ", ".join(sans) or "no name"
    return (
        f"serving a certificate for {named}, not {domain}: clients refuse it (x509: certificate"
        " is not valid for the name); see renewal, certs.domain and tls.cert_path"
    )


def uncovered(
    sans: Sequence[str], hosts: Mapping[str, Sequence[str]]
) -> dict[str, tuple[str, ...]]:
    """Of each setting's mirror host names (``upstreams.<name>.hosts`` → its entries), those a
    certificate with these subject alternative names does not name, each once and without its
    port (a certificate names hosts, not ports: ``HOST:8443`` is ``HOST``); a setting whose
    every name is named is left out."""
    missing: dict[str, tuple[str, ...]] = {}
    for key, entries in hosts.items():
        bare = dict.fromkeys(host_key(entry)[1] for entry in entries)
        lacking = tuple(host for host in bare if host and not names(sans, host))
        if lacking:
            missing[key] = lacking
    return missing


def hosts_refusal(missing: Mapping[str, Sequence[str]], sans: Sequence[str]) -> str | None:
    """Why clients that reach the mirror by an upstream's ``hosts`` name over TLS refuse the
    certificate, and what to do (None: ``missing`` is empty, from :func:`uncovered`)."""
    if not missing:
        return None
    listed = "; ".join(f"{key}: {', '.join(hosts)}" for key, hosts in missing.items())
    named = ", ".join(sans) or "no name"
    return (
        f"the served certificate names {named}, not these upstream host names ({listed}):"
        " clients that pull by them over TLS refuse it (x509: certificate is not valid for"
        " the name); the certificate the renewer obtains names certs.domain alone, so use a"
        " certificate that covers them (tls.cert_path and tls.key_path: one naming each, or"
        " a wildcard *.<parent> for names one label under it), or pick those upstreams by"
        " path prefix or containerd's ?ns= instead"
    )
