"""An upstream's ``ca_origins``: more origins its ``ca_file`` is trusted for (the storage its
blobs redirect to, behind the same private CA).

The setting in every layer (file, environment, flag; ``[upstream]`` and ``[[upstreams]]``), its
start-up errors (without ``ca_file``, an entry that is no https origin), ``--show-config``; the
trust it gives (the ``ca_file``'s context on those origins alone, not where another upstream
uses one without a ``ca_file``), the 502's words; and real handshakes on 127.0.0.78/79: a
registry whose blob redirects to storage with a certificate of the same CA, refused without
``ca_origins`` (the 502 naming it) and served with it, through the shared httpx client and a
fill's direct GET alike.
"""

from __future__ import annotations

import logging
import ssl
from pathlib import Path

import pytest

from docxy.config import describe, load_config, redacted
from docxy.core.errors import UpstreamUnavailable
from docxy.upstream import direct
from docxy.upstream.client import (
    Upstream,
    UpstreamClient,
    read_small,
    upstream_ssl_context,
)
from docxy.upstream.failures import certificate_refused
from docxy.upstream.trust import UpstreamTrust
from tests.unit.test_review_ca_file import PrivateCA, made_private_ca
from tests.unit.test_upstream_ca_file import (
    config_error,
    tls_server,
    trusting_client,
    trusting_direct,
)

REGISTRY_HOST = "127.0.0.78"  # the private registry
STORAGE_HOST = "127.0.0.79"  # the storage its blobs redirect to: the same private CA
STORE = "https://store.lab.example"
LAB = "lab.example"
LAB_ENV = "DOCXY_UPSTREAMS_LAB_EXAMPLE_"
BLOB = b"a blob kept in the lab's storage"


@pytest.fixture(scope="module")
def private_ca(tmp_path_factory: pytest.TempPathFactory) -> PrivateCA:
    return made_private_ca(tmp_path_factory, "docxy ca_origins test CA")


# --- the setting in every layer ---------------------------------------------------------------


def test_upstream_ca_origins_in_the_file_the_environment_and_a_flag(
    private_ca: PrivateCA, tmp_path: Path
) -> None:
    pem = private_ca.ca_file.path
    toml = tmp_path / "docxy.toml"
    toml.write_text(
        f'[upstream]\nca_file = "{pem}"\nca_origins = ["https://Store.lab.example:443/", '
        '"https://cdn.lab.example:8443"]\n'
    )
    from_file = load_config(config_file=toml, environ={})
    assert from_file.upstream.ca_origins == (STORE, "https://cdn.lab.example:8443")
    assert from_file.sources["upstream.ca_origins"] == f"file {toml}"
    assert Upstream.from_config(from_file.upstream).ca_origins == from_file.upstream.ca_origins

    env = {"DOCXY_UPSTREAM_CA_ORIGINS": "https://a.lab.example, https://b.lab.example:9000"}
    from_env = load_config(config_file=toml, environ=env)
    assert from_env.upstream.ca_origins == ("https://a.lab.example", "https://b.lab.example:9000")
    rows = {key: (text, source) for key, text, source in describe(from_env)}
    assert rows["upstream.ca_origins"] == (
        "https://a.lab.example,https://b.lab.example:9000",
        "env DOCXY_UPSTREAM_CA_ORIGINS",
    )

    flagged = load_config({"upstream.ca_origins": STORE}, toml, env)
    assert flagged.upstream.ca_origins == (STORE,)
    assert flagged.sources["upstream.ca_origins"] == "flag"
    unset = {key: text for key, text, _ in describe(load_config(environ={}))}
    assert unset["upstream.ca_origins"] == "(none)"


def test_named_upstream_ca_origins_in_every_layer(private_ca: PrivateCA, tmp_path: Path) -> None:
    toml = tmp_path / "docxy.toml"
    toml.write_text(
        f'[[upstreams]]\nname = "{LAB}"\nregistry = "https://registry.lab.example"\n'
        f'ca_file = "{private_ca.ca_file.path}"\nca_origins = ["{STORE}"]\n'
    )
    key = f"upstreams.{LAB}.ca_origins"
    (named,) = load_config(config_file=toml, environ={}).upstreams
    assert named.ca_origins == (STORE,)
    assert Upstream.from_config(named).ca_origins == (STORE,)

    variable = LAB_ENV + "CA_ORIGINS"
    config = load_config(config_file=toml, environ={variable: "https://a.lab,https://b.lab:1"})
    assert config.upstreams[0].ca_origins == ("https://a.lab", "https://b.lab:1")
    rows = {row[0]: row[1:] for row in describe(config)}
    assert rows[key] == ("https://a.lab,https://b.lab:1", f"env {variable}")

    flagged = load_config({key: "https://c.lab"}, toml, {variable: "https://a.lab"})
    assert flagged.upstreams[0].ca_origins == ("https://c.lab",)
    assert flagged.sources[key] == "flag"
    plain = load_config({"upstreams": "lab.test=https://lab.test"}, environ={})
    assert plain.upstreams[0].ca_origins == ()
    assert {r[0]: r[1] for r in describe(plain)}["upstreams.lab.test.ca_origins"] == "(none)"


# --- errors at start-up -----------------------------------------------------------------------


def test_ca_origins_without_a_ca_file_stops_start_up_naming_the_key() -> None:
    message = config_error(environ={"DOCXY_UPSTREAM_CA_ORIGINS": STORE})
    assert message.startswith("upstream.ca_origins: needs the upstream's ca_file")
    assert message.endswith("(env DOCXY_UPSTREAM_CA_ORIGINS)")
    message = config_error(
        overrides={"upstreams": "lab.example=https://registry.lab.example"},
        environ={LAB_ENV + "CA_ORIGINS": STORE},
    )
    assert message.startswith(f"upstreams.{LAB}.ca_origins: needs the upstream's ca_file")
    assert message.endswith(f"(env {LAB_ENV}CA_ORIGINS)")
    # An empty list asks for nothing: no ca_file needed.
    assert load_config(environ={"DOCXY_UPSTREAM_CA_ORIGINS": ""}).upstream.ca_origins == ()


@pytest.mark.parametrize(
    ("entry", "said"),
    [
        ("http://store.lab.example", "expected an origin"),
        ("https://store.lab.example/bucket", "expected an origin"),
        ("https://store.lab.example?x=1", "URL must not carry a query"),
        ("https://", "not an http(s) URL"),
        ("store.lab.example", "not an http(s) URL"),
        ("https://store.lab.example:99999", "bad port"),
        ("https://store.lab.example:port", "bad port"),
    ],
)
def test_a_malformed_entry_stops_start_up_naming_it(
    private_ca: PrivateCA, entry: str, said: str
) -> None:
    environ = {
        "DOCXY_UPSTREAM_CA_FILE": str(private_ca.ca_file.path),
        "DOCXY_UPSTREAM_CA_ORIGINS": f"{STORE},{entry}",
    }
    message = config_error(environ=environ)
    assert message.startswith(f"upstream.ca_origins: {said}"), message
    # named, but a query only up to its '?' (docxy.config.redacted: it may be a credential)
    assert repr(redacted(entry.rstrip("/"))) in message or entry in message
    assert message.endswith("(env DOCXY_UPSTREAM_CA_ORIGINS)")
    named = config_error(
        overrides={"upstreams": "lab.example=https://registry.lab.example"},
        environ={LAB_ENV + "CA_FILE": str(private_ca.ca_file.path), LAB_ENV + "CA_ORIGINS": entry},
    )
    assert named.startswith(f"upstreams.{LAB}.ca_origins: {said}"), named


def test_credentials_in_an_entry_are_refused_not_shown(private_ca: PrivateCA) -> None:
    environ = {
        "DOCXY_UPSTREAM_CA_FILE": str(private_ca.ca_file.path),
        "DOCXY_UPSTREAM_CA_ORIGINS": "https://alice:s3cret@store.lab.example",
    }
    message = config_error(environ=environ)
    assert message.startswith("upstream.ca_origins: ")
    assert "s3cret" not in message and "(credentials hidden)" in message


def test_a_list_of_something_else_is_refused(private_ca: PrivateCA, tmp_path: Path) -> None:
    toml = tmp_path / "docxy.toml"
    toml.write_text(f'[upstream]\nca_file = "{private_ca.ca_file.path}"\nca_origins = [1]\n')
    assert config_error(config_file=toml, environ={}).startswith("upstream.ca_origins: ")
    toml.write_text(f'[upstream]\nca_file = "{private_ca.ca_file.path}"\nca_origins = 1\n')
    assert "expected a list of origins" in config_error(config_file=toml, environ={})


def test_two_names_of_one_upstream_must_agree_on_ca_origins(private_ca: PrivateCA) -> None:
    environ = {
        "DOCXY_UPSTREAM_REGISTRY": "https://lab.test",
        "DOCXY_UPSTREAM_CA_FILE": str(private_ca.ca_file.path),
        "DOCXY_UPSTREAM_CA_ORIGINS": "https://a.lab,https://b.lab",
        "DOCXY_UPSTREAMS": "lab.test=https://lab.test",
        "DOCXY_UPSTREAMS_LAB_TEST_CA_FILE": str(private_ca.ca_file.path),
        "DOCXY_UPSTREAMS_LAB_TEST_CA_ORIGINS": "https://a.lab",
    }
    message = config_error(environ=environ)
    assert "with other ca_origins" in message and "another ca_file" not in message
    same = environ | {"DOCXY_UPSTREAMS_LAB_TEST_CA_ORIGINS": "https://b.lab,https://a.lab"}
    assert load_config(environ=same).upstreams[0].ca_origins == ("https://b.lab", "https://a.lab")


def test_an_origin_listed_twice_is_kept_once(private_ca: PrivateCA) -> None:
    """The same origin twice, or spelt twice (case, the default port), is one entry: shown
    once in ``--show-config``, claimed once (before: kept, and shown, as often as written)."""
    environ = {
        "DOCXY_UPSTREAM_CA_FILE": str(private_ca.ca_file.path),
        "DOCXY_UPSTREAM_CA_ORIGINS": f"{STORE},https://Store.Lab.Example:443,{STORE}/",
    }
    assert load_config(environ=environ).upstream.ca_origins == (STORE,)


def test_an_ipv6_origin_is_one_origin_however_it_is_spelt(private_ca: PrivateCA) -> None:
    """``https://[0:0:0:0:0:0:0:1]:9000`` in ca_origins covers a redirect to ``[::1]:9000``
    (and the other way round): one address, one origin, as the connection makes it (before:
    two origins, the redirect's refused with the 502 saying to list it in ca_origins)."""
    lab = Upstream(
        "https://[0:0::1]:5000",
        ca_file=private_ca.ca_file,
        name=LAB,
        ca_origins=("https://[0:0:0:0:0:0:0:1]:9000", "https://[FE80::A]:9000"),
    )
    trust = UpstreamTrust([lab], upstream_ssl_context)
    extended = trust.context_for_url(lab.registry)
    assert extended is not trust.default
    assert trust.context_for_url("https://[::1]:5000/v2/") is extended
    assert trust.context_for_url("https://[::1]:9000/blob") is extended
    assert trust.context_for(("https", "0::1", 9000)) is extended  # a direct GET's
    assert trust.context_for_url("https://[fe80::a]:9000/blob") is extended
    assert trust.context_for_url("https://[::2]:9000/blob") is trust.default
    assert trust.covers("https://[::1]:9000/blob")


# --- the trust it gives -----------------------------------------------------------------------


def test_a_ca_origin_gets_the_ca_files_context_and_another_does_not(
    private_ca: PrivateCA,
) -> None:
    lab = Upstream(
        "https://registry.lab.example",
        ca_file=private_ca.ca_file,
        name=LAB,
        ca_origins=(STORE, "https://cdn.lab.example:8443", "https://bücher.example"),
    )
    trust = UpstreamTrust([lab], upstream_ssl_context)
    extended = trust.context_for_url(lab.registry)
    assert extended is not trust.default
    assert trust.context_for_url(STORE + "/bucket/blob?sig=1") is extended
    assert trust.context_for_url(STORE + ":443/x") is extended  # the port 443 when none is named
    assert trust.context_for(("https", "store.lab.example", 443)) is extended  # a direct GET's
    assert trust.context_for_url("https://cdn.lab.example:8443/x") is extended
    assert trust.context_for_url("https://xn--bcher-kva.example/x") is extended  # as httpx sends
    assert trust.context_for_url("https://cdn.lab.example/x") is trust.default  # another port
    assert trust.context_for_url("http://store.lab.example/x") is trust.default  # another scheme
    assert trust.context_for_url("https://other.lab.example/x") is trust.default
    assert trust.covers(STORE + "/bucket/blob")
    assert trust.covers("https://cdn.lab.example:8443/")
    assert not trust.covers("https://cdn.lab.example/")
    assert not trust.covers("https://other.lab.example/")


def test_an_origin_another_upstream_uses_without_a_ca_file_stays_on_the_default(
    private_ca: PrivateCA, caplog: pytest.LogCaptureFixture
) -> None:
    """The lab lists, as its storage, the registry of an upstream without a ca_file: that
    upstream trusts certifi's CAs there, and no upstream's CA may vouch for it."""
    caplog.set_level(logging.INFO, logger="docxy.upstream.trust")
    lab = Upstream(
        "https://registry.lab.example", ca_file=private_ca.ca_file, name=LAB, ca_origins=(STORE,)
    )
    other = Upstream(STORE, name="store.lab.example")
    trust = UpstreamTrust([lab, other], upstream_ssl_context)
    assert trust.context_for_url(STORE + "/v2/") is trust.default
    assert trust.context_for_url(lab.registry) is not trust.default
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warned == [
        "upstream trust: https://store.lab.example:443 is verified with the default CAs only, "
        "no ca_file: store.lab.example registry uses it without one"
    ]


def test_without_a_ca_file_ca_origins_claim_nothing() -> None:
    """Refused at start-up; were it not, the origin would keep certifi's CAs alone."""
    lab = Upstream("https://registry.lab.example", name=LAB, ca_origins=(STORE,))
    trust = UpstreamTrust([lab], upstream_ssl_context)
    assert not trust.extends
    assert trust.context_for_url(STORE) is trust.default


# --- the 502's words --------------------------------------------------------------------------


def _unknown_issuer() -> ssl.SSLCertVerificationError:
    exc = ssl.SSLCertVerificationError(1, "certificate verify failed")
    exc.verify_code = 20
    exc.verify_message = "unable to get local issuer certificate"
    return exc


def test_the_502_on_a_host_not_covered_names_ca_origins() -> None:
    told = certificate_refused("store.lab.example:9000", _unknown_issuer(), covered=False)
    assert told == (
        "cannot reach the upstream registry (store.lab.example:9000): its certificate could not "
        "be verified (unable to get local issuer certificate); an upstream's ca_file is "
        "trusted for its registry, its token service and its ca_origins only, not for "
        "store.lab.example:9000: to trust it there, list https://store.lab.example:9000 in that "
        "upstream's ca_origins"
    )
    covered = certificate_refused("store.lab.example", _unknown_issuer(), covered=True)
    assert covered is not None and "ca_origins" not in covered
    assert covered.endswith("name that CA's certificate in the upstream's ca_file")


# --- real handshakes: a blob redirected to storage behind the same CA -------------------------


Routes = dict[str, tuple[int, dict[str, str], bytes]]


def _routes(storage: str) -> Routes:
    return {"/v2/r/blobs/sha256:1": (307, {"Location": storage + "/bucket/blob"}, b"")}


def _lab(registry: str, pem: Path, storage: str | None) -> Upstream:
    """The lab upstream as the settings make it: ca_file, and ca_origins if ``storage``."""
    environ = {"DOCXY_UPSTREAM_REGISTRY": registry, "DOCXY_UPSTREAM_CA_FILE": str(pem)}
    if storage is not None:
        environ["DOCXY_UPSTREAM_CA_ORIGINS"] = storage
    return Upstream.from_config(load_config(environ=environ).upstream)


async def _through_the_pool(upstream: Upstream, url: str) -> bytes:
    trust = UpstreamTrust([upstream], upstream_ssl_context)
    http = trusting_client(trust)
    try:
        answer = await UpstreamClient(http, None, trust).send(upstream, "GET", url, [])
        return await read_small(answer)
    finally:
        await http.aclose()


def _by_a_direct_get(upstream: Upstream, url: str) -> bytes:
    trust = UpstreamTrust([upstream], upstream_ssl_context)
    settings = trusting_direct(trust)
    try:
        answer = direct.get(settings, url, [])
        try:
            assert answer.status == 200
            return answer.body.read(1 << 16)
        finally:
            answer.close()
    finally:
        settings.idle.close()


async def test_a_blob_redirected_to_storage_behind_the_same_ca(
    private_ca: PrivateCA, tmp_path: Path
) -> None:
    """Without ca_origins the storage is refused, through the pool and by a fill's direct GET,
    with a 502 naming ca_origins and the storage's origin; with it, the blob is served."""
    blob_route: Routes = {"/bucket/blob": (200, {}, BLOB)}
    pem = private_ca.ca_file.path
    with (
        tls_server(STORAGE_HOST, private_ca.leaf(STORAGE_HOST), tmp_path, blob_route) as storage,
        tls_server(
            REGISTRY_HOST, private_ca.leaf(REGISTRY_HOST), tmp_path, _routes(storage.url)
        ) as registry,
    ):
        url = registry.url + "/v2/r/blobs/sha256:1"
        without = _lab(registry.url, pem, None)
        advice = f"list {storage.url} in that upstream's ca_origins"
        with pytest.raises(UpstreamUnavailable) as caught:
            await _through_the_pool(without, url)
        assert caught.value.status == 502
        assert f"({STORAGE_HOST}:{storage.port}): its certificate could not" in caught.value.message
        assert caught.value.message.endswith(advice)
        with pytest.raises(UpstreamUnavailable) as caught:
            _by_a_direct_get(without, url)
        assert caught.value.message.endswith(advice)

        lab = _lab(registry.url, pem, storage.url)
        assert lab.ca_origins == (storage.url,)
        assert await _through_the_pool(lab, url) == BLOB
        assert _by_a_direct_get(lab, url) == BLOB
