"""The mirror compares secrets in constant time: no ``==`` or ``!=`` on a secret in the source.

``a == b`` on strings stops at the first differing byte, so the time an answer takes tells an
attacker how much of a guessed password, token or signature was right. Wherever the mirror
checks a secret it must use ``hmac.compare_digest`` (or a password-hash library's ``verify``).
This test reads every module and fails on an equality test whose operand is named like a
secret, unless the other side is a literal (``token_type == "Bearer"`` compares no secret).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "docxy"
SECRET = re.compile(r"password|passwd|secret|token|signature|credential|api_?key|authoriz", re.I)
#: (module, name) pairs that look like secrets and are not, with the reason.
NOT_SECRETS = {
    ("tls/context.py", "_file_signature"),  # a certificate file's (mtime, size), not a MAC
    ("tls/context.py", "_signature"),
    ("tls/context.py", "signature"),  # reload's _file_signature taken before a read
    ("access/keys.py", "signature"),  # the key files' (mtime, size) pair: changed on disk?
    ("access/keys.py", "_signature"),
    ("access/users.py", "signature"),  # the users file's (mtime, size, inode): changed on disk?
    ("access/users.py", "_signature"),
    ("upstream/settings.py", "SECRET"),  # the name of the password key ("password"), no value
    ("upstream/settings.py", "SECRET_FILE"),  # the name of its file's key ("password_file")
}


def _name(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    if isinstance(node, ast.Subscript):  # headers["authorization"]: the key names it
        key = node.slice
        if isinstance(key, ast.Constant) and isinstance(key.value, str):
            return key.value
        return _name(node.value)
    if isinstance(node, ast.Call):
        return _name(node.func)
    return None


def secret_comparisons(source: str, module: str) -> list[str]:
    """``module:line: expression`` for every ``==``/``!=`` between a secret and a non-literal."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Compare):
            continue
        sides = [node.left, *node.comparators]
        for op, left, right in zip(node.ops, sides[:-1], sides[1:], strict=True):
            if not isinstance(op, ast.Eq | ast.NotEq):
                continue
            if isinstance(left, ast.Constant) or isinstance(right, ast.Constant):
                continue
            names = {_name(left), _name(right)} - {None}
            if any(SECRET.search(n) and (module, n) not in NOT_SECRETS for n in names if n):
                found.append(f"{module}:{node.lineno}: {ast.unparse(node)}")
    return found


def test_no_secret_is_compared_with_equality() -> None:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = path.relative_to(PACKAGE).as_posix()
        found += secret_comparisons(path.read_text(), module)
    assert found == [], "use hmac.compare_digest for secrets:\n" + "\n".join(found)


@pytest.mark.parametrize(
    "code",
    [
        "ok = password == stored",
        "ok = request.token != self.token",
        "ok = sig == expected_signature",
        "ok = header['authorization'] == basic(user, pw)",
        "ok = users[name].password_hash == hashed",
    ],
)
def test_the_check_finds_a_secret_compared_with_equality(code: str) -> None:
    assert secret_comparisons(code, "example.py")


@pytest.mark.parametrize(
    "code",
    [
        "ok = hmac.compare_digest(password, stored)",
        "ok = token_type == 'Bearer'",
        "ok = token is None",
        "ok = digest == expected",
        "ok = status == 401",
    ],
)
def test_the_check_leaves_what_is_no_secret_comparison(code: str) -> None:
    assert secret_comparisons(code, "example.py") == []
