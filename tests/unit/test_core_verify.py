"""docxy.core.verify: the ssl error under a library's own, and the verify codes' groups."""

from __future__ import annotations

import ssl

import httpx

from docxy.core.verify import NAME_MISMATCH, OUT_OF_DATE, UNKNOWN_ISSUER, ssl_cause


def chained(inner: BaseException) -> httpx.ConnectError:
    """``inner`` two levels down, as httpx raises its error from httpcore's, from ssl's."""
    try:
        try:
            raise inner
        except BaseException as exc:
            raise OSError("httpcore's") from exc
    except OSError as exc:
        try:
            raise httpx.ConnectError("httpx's") from exc
        except httpx.ConnectError as outer:
            return outer


def test_the_ssl_error_is_found_under_the_chain() -> None:
    error = ssl.SSLCertVerificationError(1, "certificate verify failed")
    assert ssl_cause(chained(error)) is error
    assert ssl_cause(error) is error


def test_a_chain_without_one_gives_none_and_a_cycle_ends() -> None:
    assert ssl_cause(chained(ConnectionRefusedError(111, "refused"))) is None
    first, second = OSError("a"), OSError("b")
    first.__cause__, second.__cause__ = second, first
    assert ssl_cause(first) is None


def test_the_groups_do_not_overlap_and_hold_openssls_codes() -> None:
    # X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY 20, _HOSTNAME_MISMATCH 62, _CERT_HAS_EXPIRED 10
    assert 20 in UNKNOWN_ISSUER and 62 in NAME_MISMATCH and 10 in OUT_OF_DATE
    assert not (UNKNOWN_ISSUER & NAME_MISMATCH or UNKNOWN_ISSUER & OUT_OF_DATE)
    assert not NAME_MISMATCH & OUT_OF_DATE
