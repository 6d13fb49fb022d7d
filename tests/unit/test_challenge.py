"""``WWW-Authenticate`` challenges and token scopes: parsing, rendering, rewriting."""

from __future__ import annotations

import pytest

from docxy.core.challenge import (
    Challenge,
    bearer_challenge,
    parse_challenge,
    prefix_scope,
    rewrite_challenge,
    rewrite_challenges,
    rewrite_scope,
    split_challenges,
    unprefix_scope,
)

HUB = (
    'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
    'scope="repository:library/redis:pull"'
)
MIRROR_REALM = "https://mirror.example.com/auth/token"


@pytest.mark.parametrize(
    ("header", "scheme", "params"),
    [
        (
            HUB,
            "Bearer",
            {
                "realm": "https://auth.docker.io/token",
                "service": "registry.docker.io",
                "scope": "repository:library/redis:pull",
            },
        ),
        ('Basic realm="Registry Realm"', "Basic", {"realm": "Registry Realm"}),
        ("Bearer", "Bearer", {}),
        ("  Bearer  ", "Bearer", {}),
        # spaces around separators, bare tokens, parameter names are case-insensitive
        (
            'bearer Realm = "https://a/t" ,  Service=reg , error=insufficient_scope',
            "bearer",
            {"realm": "https://a/t", "service": "reg", "error": "insufficient_scope"},
        ),
        # a comma inside quotes belongs to the value
        (
            'Bearer realm="https://a/t",scope="repository:x/y:pull,push"',
            "Bearer",
            {"realm": "https://a/t", "scope": "repository:x/y:pull,push"},
        ),
        # escaped quotes and backslashes inside quotes
        (
            r'Bearer realm="say \"hi\"",service="back\\slash"',
            "Bearer",
            {"realm": 'say "hi"', "service": "back\\slash"},
        ),
        # several scopes separated by spaces stay one value
        (
            'Bearer realm="r",scope="repository:a:pull repository:b:pull"',
            "Bearer",
            {"realm": "r", "scope": "repository:a:pull repository:b:pull"},
        ),
        ('Bearer realm=""', "Bearer", {"realm": ""}),
    ],
)
def test_parse_challenge(header: str, scheme: str, params: dict[str, str]) -> None:
    challenge = parse_challenge(header)
    assert challenge == Challenge(scheme, params)


@pytest.mark.parametrize(
    "header",
    [
        "",
        "   ",
        '"Bearer"',
        '=realm="x"',
        'Bearer realm="unterminated',
        "Bearer realm",
    ],
)
def test_unparsable_challenges(header: str) -> None:
    assert parse_challenge(header) is None


def test_challenge_properties() -> None:
    challenge = parse_challenge(HUB)
    assert challenge is not None
    assert challenge.realm == "https://auth.docker.io/token"
    assert challenge.service == "registry.docker.io"
    assert Challenge("Bearer").realm is None
    assert Challenge("Bearer").service is None


@pytest.mark.parametrize(
    ("challenge", "rendered"),
    [
        (Challenge("Bearer"), "Bearer"),
        (
            Challenge("Bearer", {"realm": "https://m/auth/token"}),
            'Bearer realm="https://m/auth/token"',
        ),
        (
            Challenge("Bearer", {"realm": "r", "service": "s", "scope": "a,b c"}),
            'Bearer realm="r",service="s",scope="a,b c"',
        ),
        (Challenge("Bearer", {"realm": 'q"uote'}), r'Bearer realm="q\"uote"'),
        (Challenge("Bearer", {"realm": "back\\slash"}), r'Bearer realm="back\\slash"'),
    ],
)
def test_render(challenge: Challenge, rendered: str) -> None:
    assert challenge.render() == rendered
    assert parse_challenge(rendered) == challenge


def test_rewrite_replaces_realm_keeps_service_and_prefixes_scope() -> None:
    header = (
        'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
        'scope="repository:redis:pull"'
    )
    assert rewrite_challenge(header, MIRROR_REALM, library_prefix=True) == (
        f'Bearer realm="{MIRROR_REALM}",service="registry.docker.io",'
        'scope="repository:library/redis:pull"'
    )


def test_rewrite_keeps_every_other_parameter() -> None:
    header = (
        'Bearer realm="https://auth.example/token",service="svc",'
        'scope="repository:redis:pull,push",error="insufficient_scope"'
    )
    rewritten = parse_challenge(rewrite_challenge(header, MIRROR_REALM, library_prefix=True))
    assert rewritten == Challenge(
        "Bearer",
        {
            "realm": MIRROR_REALM,
            "service": "svc",
            "scope": "repository:library/redis:pull,push",
            "error": "insufficient_scope",
        },
    )


def test_rewrite_every_scope_in_a_challenge() -> None:
    header = 'Bearer realm="r",scope="repository:redis:pull repository:org/app:pull"'
    rewritten = parse_challenge(rewrite_challenge(header, MIRROR_REALM, library_prefix=True))
    assert rewritten is not None
    assert rewritten.params["scope"] == "repository:library/redis:pull repository:org/app:pull"


def test_rewrite_without_library_prefix_keeps_scope() -> None:
    header = 'Bearer realm="r",service="s",scope="repository:redis:pull"'
    rewritten = parse_challenge(rewrite_challenge(header, MIRROR_REALM, library_prefix=False))
    assert rewritten == Challenge(
        "Bearer", {"realm": MIRROR_REALM, "service": "s", "scope": "repository:redis:pull"}
    )


def test_rewrite_adds_realm_when_missing() -> None:
    rewritten = parse_challenge(rewrite_challenge('Bearer service="s"', MIRROR_REALM, True))
    assert rewritten == Challenge("Bearer", {"service": "s", "realm": MIRROR_REALM})


def test_rewrite_is_case_insensitive_on_scheme_and_keys() -> None:
    rewritten = parse_challenge(
        rewrite_challenge('bearer REALM="https://up/token",Service="s"', MIRROR_REALM, True)
    )
    assert rewritten == Challenge("Bearer", {"realm": MIRROR_REALM, "service": "s"})


def test_rewrite_keeps_quoted_commas_and_escaped_quotes() -> None:
    header = r'Bearer realm="https://up/token",service="a \"quoted\", service"'
    rewritten = rewrite_challenge(header, MIRROR_REALM, True)
    assert parse_challenge(rewritten) == Challenge(
        "Bearer", {"realm": MIRROR_REALM, "service": 'a "quoted", service'}
    )


@pytest.mark.parametrize(
    "header",
    [
        'Basic realm="Registry Realm"',
        'basic realm="https://auth.docker.io/token"',
        'Digest realm="r",nonce="n"',
        "not a challenge at all ===",
        "",
    ],
)
def test_rewrite_leaves_other_schemes_untouched(header: str) -> None:
    assert rewrite_challenge(header, MIRROR_REALM, library_prefix=True) == header


@pytest.mark.parametrize(
    ("scope", "prefix", "expected"),
    [
        ("repository:redis:pull", True, "repository:library/redis:pull"),
        ("repository:redis:pull,push", True, "repository:library/redis:pull,push"),
        ("repository:redis:*", True, "repository:library/redis:*"),
        ("repository:redis:pull", False, "repository:redis:pull"),
        ("repository:library/redis:pull", True, "repository:library/redis:pull"),
        ("repository:org/app:pull", True, "repository:org/app:pull"),
        ("repository:a/b/c:pull", True, "repository:a/b/c:pull"),
        ("registry:catalog:*", True, "registry:catalog:*"),
        ("repository:redis", True, "repository:redis"),
        ("repository::pull", True, "repository::pull"),
        ("repository", True, "repository"),
        ("", True, ""),
        ("repository:localhost:5000/app:pull", True, "repository:localhost:5000/app:pull"),
    ],
)
def test_rewrite_scope(scope: str, prefix: bool, expected: str) -> None:
    assert rewrite_scope(scope, prefix) == expected


@pytest.mark.parametrize(
    ("scope", "prefix", "expected"),
    [
        ("repository:owner/img:pull", "ghcr.io", "repository:ghcr.io/owner/img:pull"),
        ("repository:img:pull,push", "lab.test", "repository:lab.test/img:pull,push"),
        ("registry:catalog:*", "ghcr.io", "registry:catalog:*"),
        ("repository:owner/img:pull", None, "repository:owner/img:pull"),
    ],
)
def test_prefix_scope(scope: str, prefix: str | None, expected: str) -> None:
    assert prefix_scope(scope, prefix) == expected
    if prefix is not None and expected != scope:
        assert unprefix_scope(expected, prefix) == scope


@pytest.mark.parametrize(
    "scope",
    [
        "repository:quay.io/owner/img:pull",  # another upstream's prefix stays
        "repository:ghcr.iox/img:pull",
        "repository:ghcr.io:pull",
        "registry:catalog:*",
    ],
)
def test_unprefix_scope_leaves_other_names(scope: str) -> None:
    assert unprefix_scope(scope, "ghcr.io") == scope


def test_rewrite_challenge_with_a_prefix() -> None:
    header = 'Bearer realm="https://up/token",service="s",scope="repository:redis:pull"'
    rewritten = parse_challenge(
        rewrite_challenge(header, MIRROR_REALM, library_prefix=True, prefix="docker.io")
    )
    assert rewritten is not None
    assert rewritten.params["scope"] == "repository:docker.io/library/redis:pull"


@pytest.mark.parametrize(
    ("header", "kept"),
    [
        # RFC 9110 §11.6.1: one header may list several challenges
        (
            'Bearer realm="https://auth.example/token",service="registry.example", '
            'Basic realm="https://auth.example/basic"',
            {"service": "registry.example"},
        ),
        # a parameter name with a dot is a legal token
        (
            'Bearer realm="https://auth.example/token",service="s",x.y="1"',
            {"service": "s"},
        ),
        ('Bearer realm="https://auth.example/token', {}),  # cut off
    ],
)
def test_a_bearer_challenge_never_keeps_the_upstream_realm(
    header: str, kept: dict[str, str]
) -> None:
    """A Bearer challenge the parser could not read to the end was relayed as the upstream
    wrote it: the client then took the mirror host's login to the upstream's own realm. Now
    the realm is always the mirror's, with what could be read kept."""
    rewritten = rewrite_challenge(header, MIRROR_REALM, library_prefix=True)
    assert "auth.example" not in rewritten
    parsed = parse_challenge(rewritten)
    assert parsed is not None and parsed.scheme == "Bearer"
    assert parsed.params == {"realm": MIRROR_REALM, **kept}


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ('Basic realm="r"', ['Basic realm="r"']),
        (
            'Basic realm="r", Bearer realm="https://a/t",service="s"',
            ['Basic realm="r"', 'Bearer realm="https://a/t",service="s"'],
        ),
        (
            'Bearer realm="https://a/t",service="s", Basic realm="r"',
            ['Bearer realm="https://a/t",service="s"', 'Basic realm="r"'],
        ),
        ('Bearer realm="a, b",service="s"', ['Bearer realm="a, b",service="s"']),
        ("Negotiate", ["Negotiate"]),
        ('Bearer realm="x" "junk', ['Bearer realm="x"']),  # an unreadable tail is dropped
        ("", []),
    ],
)
def test_split_challenges(header: str, expected: list[str]) -> None:
    assert split_challenges(header) == expected


@pytest.mark.parametrize(
    "values",
    [
        ['Basic realm="r"', 'Bearer realm="https://auth.example/token",service="s"'],
        ['Basic realm="r", Bearer realm="https://auth.example/token",service="s"'],
        ['Bearer realm="https://auth.example/token",service="s"', 'Basic realm="r"'],
    ],
)
def test_beside_basic_only_the_bearer_challenge_is_relayed_with_the_mirrors_realm(
    values: list[str],
) -> None:
    relayed = rewrite_challenges(values, MIRROR_REALM, library_prefix=True)
    assert relayed == [f'Bearer realm="{MIRROR_REALM}",service="s"']
    found = bearer_challenge(values)
    assert found is not None and found.realm == "https://auth.example/token"


def test_without_a_bearer_challenge_the_values_pass_unchanged() -> None:
    values = ['Basic realm="lab"', 'Digest realm="x", nonce="y"']
    assert rewrite_challenges(values, MIRROR_REALM, library_prefix=True) == values
    assert bearer_challenge(values) is None
    assert bearer_challenge(['Bearer service="no-realm"']) is None


def test_a_bearer_challenge_after_a_scheme_with_no_parameters_is_found() -> None:
    """RFC 9110 lets a challenge with no parameters be followed by the next at once: the
    Bearer one after ``Negotiate,`` was missed (no token fetched by the mirror, and the
    upstream's realm relayed to clients as it came)."""
    value = 'Negotiate, Bearer realm="https://auth.up.test/token",service="registry.test"'
    assert split_challenges(value) == [
        "Negotiate",
        'Bearer realm="https://auth.up.test/token",service="registry.test"',
    ]
    found = bearer_challenge([value])
    assert found is not None and found.service == "registry.test"
    relayed = rewrite_challenges([value], "https://mirror.test/auth/token", True)
    assert relayed == ['Bearer realm="https://mirror.test/auth/token",service="registry.test"']


def test_empty_list_elements_in_a_challenge_are_skipped() -> None:
    found = bearer_challenge(['Bearer realm="https://auth.up.test/token", , service="reg"'])
    assert found is not None and found.service == "reg"
