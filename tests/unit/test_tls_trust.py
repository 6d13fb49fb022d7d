"""What /health says of the served certificate: a CA's for the domain, the self-signed bootstrap
one, or one for another name. /health said ``ok`` while the mirror served its bootstrap
certificate or a lineage for another name, and every ``docker pull`` failed with an x509 error.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from docxy.config import Config
from docxy.http.app import create_app
from docxy.http.health import health_report
from docxy.http.server import load_tls
from docxy.http.state import mirror_state
from docxy.observe.status import render_page
from docxy.tls import trust
from docxy.tls.certs import describe_files
from docxy.tls.context import ReloadableTLS, from_staging
from lab.certs import Issued, issue
from tests.unit.test_observe_metrics import make_state
from tests.unit.test_tls_bootstrap import config

DOMAIN = "mirror.example.test"


@pytest.mark.parametrize(
    ("sans", "host"),
    [
        (["mirror.example.test"], "mirror.example.test"),
        (["MIRROR.Example.test"], "mirror.example.TEST"),  # DNS names have no case
        (["other.test", "mirror.example.test"], "mirror.example.test"),  # any entry
        (["mirror.example.test."], "mirror.example.test"),  # a root's dot
        (["*.example.test"], "mirror.example.test"),  # a wildcard: one whole label
        (["192.0.2.7"], "192.0.2.7"),
        (["2001:db8::1"], "[2001:db8:0::1]"),  # one address, two spellings
    ],
)
def test_names_covers(sans: list[str], host: str) -> None:
    assert trust.names(sans, host)


@pytest.mark.parametrize(
    ("sans", "host"),
    [
        ([], "mirror.example.test"),  # only a common name: Go's TLS ignores it
        (["mirror.example.test"], "mirror2.example.test"),
        (["example.test"], "mirror.example.test"),
        (["*.example.test"], "example.test"),  # not the bare domain
        (["*.example.test"], "a.mirror.example.test"),  # not two labels
        (["m*.example.test"], "mirror.example.test"),  # a partial wildcard: not taken
        (["*.test"], "example.test.evil"),
        (["192.0.2.7"], "192.0.2.8"),
        (["192.0.2.7"], "mirror.example.test"),  # a name is not its address
        (["mirror.example.test"], "192.0.2.7"),
    ],
)
def test_names_does_not_cover(sans: list[str], host: str) -> None:
    assert not trust.names(sans, host)


@pytest.mark.parametrize(
    ("self_signed", "sans", "domain", "kind"),
    [
        (False, [DOMAIN], DOMAIN, trust.CA_ISSUED),
        (True, [DOMAIN], DOMAIN, trust.SELF_SIGNED),  # its name right, its issuer not
        (True, ["other.test"], DOMAIN, trust.SELF_SIGNED),  # the worse of two
        (False, ["other.test"], DOMAIN, trust.OTHER_NAME),
        (False, ["other.test"], None, trust.CA_ISSUED),  # no domain: no name to check
        (True, ["localhost"], None, trust.SELF_SIGNED),
    ],
)
def test_served_kind(self_signed: bool, sans: list[str], domain: str | None, kind: str) -> None:
    assert trust.served_kind(self_signed, sans, domain) == kind


@pytest.mark.parametrize(
    ("sans", "domain"),
    [([DOMAIN], DOMAIN), (["other.test"], DOMAIN), ([DOMAIN], None)],
)
def test_a_staging_certificate_is_one_whatever_it_names(
    sans: list[str], domain: str | None
) -> None:
    assert trust.served_kind(False, sans, domain, staging=True) == trust.STAGING


def test_only_a_mirror_expecting_a_domains_certificate_is_refused() -> None:
    assert trust.refusal(trust.CA_ISSUED, [DOMAIN], DOMAIN) is None
    assert trust.refusal(trust.SELF_SIGNED, ["localhost"], None) is None  # the own pair
    bootstrap = trust.refusal(trust.SELF_SIGNED, [DOMAIN], DOMAIN)
    assert bootstrap is not None and "self-signed" in bootstrap and DOMAIN in bootstrap
    other = trust.refusal(trust.OTHER_NAME, ["old.test"], DOMAIN)
    assert other is not None and "old.test" in other and DOMAIN in other
    assert trust.refusal(trust.STAGING, [DOMAIN], None) is None  # a pair installed by hand
    staging = trust.refusal(trust.STAGING, [DOMAIN], DOMAIN)
    assert staging is not None and "staging CA" in staging and f"live/{DOMAIN}" in staging


@pytest.mark.parametrize(
    ("issuer", "staging"),
    [
        (x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "(STAGING) Ersatz Edamame E1")]), True),
        (
            x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "(STAGING) Let's Encrypt")]),
            True,
        ),
        (x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "E5")]), False),  # production
        (x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Let's Encrypt")]), False),
        (x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Not (STAGING) CA")]), False),
    ],
)
def test_a_staging_issuer_is_told_by_its_mark(issuer: x509.Name, staging: bool) -> None:
    assert from_staging(issuer) is staging


# --- as the mirror serves them ------------------------------------------------------------------


def with_domain(tmp_path: Path) -> Config:
    """The appliance's: certs.domain, and the paths the renewer installs its certificate at."""
    return config(
        tmp_path,
        **{
            "certs.domain": DOMAIN,
            "tls.cert_path": str(tmp_path / "served" / "fullchain.pem"),
            "tls.key_path": str(tmp_path / "served" / "privkey.pem"),
        },
    )


def install(tls: ReloadableTLS, leaf: Issued, ca: Issued) -> None:
    """What the renewer does: the full chain and the key at the served paths, then a reload."""
    tls.cert_path.write_bytes(leaf.cert_pem + ca.cert_pem)
    tls.key_path.write_bytes(leaf.key_pem)
    assert tls.reload() is True


def ca() -> Issued:
    return issue("Test CA", ca=True)


def health(tmp_path: Path, tls: ReloadableTLS) -> dict[str, object]:
    state = make_state(tmp_path / "state")
    state.extras["health"] = {"tls": tls.status}
    return health_report(state)


def test_the_bootstrap_certificate_degrades_health_until_the_issued_one_is_served(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A first start with a domain serves a self-signed stand-in until certbot's first
    certificate: /health says so (every pull fails meanwhile), and ``ok`` once it is served."""
    caplog.set_level(logging.WARNING, logger="docxy.tls.context")
    tls = load_tls(with_domain(tmp_path))
    assert tls is not None
    report = health(tmp_path, tls)
    shown = report["tls"]
    assert isinstance(shown, dict)
    assert (report["status"], shown["served"], shown["domain"]) == (
        "degraded",
        "self-signed",
        DOMAIN,
    )
    assert "self-signed" in str(shown["warning"])
    said = f"no certificate for {DOMAIN} has been installed yet"
    assert any(said in r.getMessage() for r in caplog.records)  # the log says it too
    root = ca()
    install(tls, issue(DOMAIN, root, names=[x509.DNSName(DOMAIN)]), root)
    report = health(tmp_path, tls)
    shown = report["tls"]
    assert isinstance(shown, dict)
    assert (report["status"], shown["served"], shown["warning"]) == ("ok", "ca-issued", None)


def test_a_certificate_for_another_name_degrades_health(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A lineage for an earlier domain installed at the served paths: issued by a CA, valid,
    and refused by every client asking for this domain."""
    tls = load_tls(with_domain(tmp_path))
    assert tls is not None
    root = ca()
    caplog.set_level(logging.WARNING, logger="docxy.tls.context")
    install(tls, issue("old.test", root, names=[x509.DNSName("old.test")]), root)
    report = health(tmp_path, tls)
    shown = report["tls"]
    assert isinstance(shown, dict)
    assert (report["status"], shown["served"]) == ("degraded", "other-name")
    assert "old.test" in str(shown["warning"]) and DOMAIN in str(shown["warning"])
    assert any("old.test, not " + DOMAIN in r.getMessage() for r in caplog.records)
    page = render_page(report)
    assert "for old.test, not mirror.example.test" in page  # the status page's "served"
    assert "x509: certificate is not valid for the name" in page  # and its warning


def test_a_staging_certificate_degrades_health(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A certificate from Let's Encrypt's staging CA (``docxy certs obtain --staging``) names the
    domain and is issued by a CA, yet every Docker client refuses it: /health said ``ok``."""
    tls = load_tls(with_domain(tmp_path))
    assert tls is not None
    root = issue("(STAGING) Ersatz Edamame E1", ca=True)
    caplog.set_level(logging.WARNING, logger="docxy.tls.context")
    install(tls, issue(DOMAIN, root, names=[x509.DNSName(DOMAIN)]), root)
    report = health(tmp_path, tls)
    shown = report["tls"]
    assert isinstance(shown, dict)
    assert (report["status"], shown["served"]) == ("degraded", "staging-ca")
    assert "staging CA" in str(shown["warning"])
    assert any("staging CA" in r.getMessage() for r in caplog.records)
    page = render_page(report)
    assert "from Let&#x27;s Encrypt&#x27;s staging CA (untrusted)" in page
    status = describe_files(tls.cert_path, tls.key_path, DOMAIN)  # docxy certs status
    assert (status["served"], status["warning"]) == ("staging-ca", shown["warning"])


def test_a_leaf_served_without_its_issuers_certificate_degrades_health(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """cert.pem where fullchain.pem belongs: the leaf alone, issued by a CA for the domain,
    which Go's TLS (Docker's) refuses, as it does not fetch a missing intermediate. /health
    said ``ok``; with the issuer's certificate after the leaf it is ``ok`` again."""
    tls = load_tls(with_domain(tmp_path))
    assert tls is not None
    root = ca()
    leaf = issue(DOMAIN, root, names=[x509.DNSName(DOMAIN)])
    caplog.set_level(logging.WARNING, logger="docxy.tls.context")
    tls.cert_path.write_bytes(leaf.cert_pem)
    tls.key_path.write_bytes(leaf.key_pem)
    assert tls.reload() is True
    report = health(tmp_path, tls)
    shown = report["tls"]
    assert isinstance(shown, dict)
    assert (report["status"], shown["served"]) == ("degraded", "ca-issued")
    assert "fullchain.pem" in str(shown["warning"])
    assert any("without its issuer" in r.getMessage() for r in caplog.records)
    status = describe_files(tls.cert_path, tls.key_path, DOMAIN)  # docxy certs status
    assert status["warning"] == shown["warning"]

    install(tls, leaf, root)
    assert health(tmp_path, tls)["status"] == "ok"


def test_a_wildcard_certificate_for_the_domain_keeps_health_ok(tmp_path: Path) -> None:
    tls = load_tls(with_domain(tmp_path))
    assert tls is not None
    root = ca()
    install(tls, issue("*.example.test", root, names=[x509.DNSName("*.example.test")]), root)
    report = health(tmp_path, tls)
    assert report["status"] == "ok", report


def test_the_mirrors_own_self_signed_certificate_is_told_not_held_against_it(
    tmp_path: Path,
) -> None:
    """TLS on and no certificate paths: the mirror's own pair, self-signed on purpose (its
    clients trust it). /health says what it is and stays ``ok``, as it always did."""
    tls = load_tls(config(tmp_path, **{"certs.domain": DOMAIN}))
    assert tls is not None
    report = health(tmp_path, tls)
    shown = report["tls"]
    assert isinstance(shown, dict)
    assert (report["status"], shown["served"], shown["warning"]) == ("ok", "self-signed", None)
    assert "self-signed" in render_page(report)


async def test_a_degraded_certificate_still_answers_200(tmp_path: Path) -> None:
    """What Docker's HEALTHCHECK (`docxy health`) and the watchdog read is the status code: a
    fresh appliance on its bootstrap certificate must stay healthy (200) while it says
    ``degraded``, or Docker marks it unhealthy before its first certificate."""
    cfg = with_domain(tmp_path)
    tls = load_tls(cfg)
    assert tls is not None
    app = create_app(cfg, probe=False)
    mirror_state(app).extras.setdefault("health", {})["tls"] = tls.status
    async with app.test_app():
        answer = await app.test_client().get("/health")
        assert answer.status_code == 200
        body = await answer.get_json()
    assert (body["status"], body["tls"]["served"]) == ("degraded", "self-signed")
