"""Credentials: the tokens file's format, and who may make which call."""

from __future__ import annotations

from pathlib import Path

import pytest

from serving.errors import ErrorCode, ServingError
from serving.security.auth import (
    Authenticator,
    CredentialsError,
    authenticator,
    bearer,
    client_token,
    digest,
    environment_credentials,
    hashed_lines,
    parse_credentials,
    read_credentials,
)

INFER = "infer-token-0123456789abcdef"
ADMIN = "admin-token-0123456789abcdef"
LAN = "10.1.2.3"


def test_a_tokens_file_keeps_only_digests_and_accepts_them_too() -> None:
    text = f"""
    # comment line
    infer        {INFER}   app
    infer,admin  sha256:{digest(ADMIN)}   # an inline comment
    """
    app, ops = parse_credentials(text, "tokens")
    assert (app.name, app.sha256, app.scopes) == ("app", digest(INFER), {"infer"})
    assert (ops.name, ops.sha256, ops.scopes) == ("token-2", digest(ADMIN), {"infer", "admin"})
    assert INFER not in repr((app, ops))
    # hashed lines read back as the same credentials
    assert parse_credentials("\n".join(hashed_lines((app, ops))), "again") == (app, ops)


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        (f"read {INFER}", "unknown scope 'read'"),
        ("infer short", "at least 16 characters"),
        (f"infer {INFER} name extra", "expected 'SCOPES TOKEN [NAME]'"),
        ("infer", "expected 'SCOPES TOKEN [NAME]'"),
    ],
)
def test_a_bad_line_is_named_without_its_token(line: str, problem: str) -> None:
    with pytest.raises(CredentialsError) as caught:
        parse_credentials(f"# header\n{line}\n", "tokens.txt")
    assert str(caught.value).startswith("tokens.txt line 2:")
    assert problem in str(caught.value)
    assert INFER not in str(caught.value)


def test_files_and_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(CredentialsError, match="cannot read the tokens file"):
        read_credentials(tmp_path / "missing")
    (tmp_path / "empty").write_text("# nothing\n")
    with pytest.raises(CredentialsError, match="holds no credential"):
        read_credentials(tmp_path / "empty")
    (tmp_path / "tokens").write_text(f"admin {ADMIN} ops\n")
    monkeypatch.setenv("SERVING_TOKENS", f"infer {INFER} app; admin {ADMIN}")
    hashed = environment_credentials()
    assert all(INFER not in line and ADMIN not in line for line in hashed)
    auth = authenticator(tmp_path / "tokens", hashed)
    assert [c.name for c in auth.credentials] == ["app", "token-2", "ops"]
    monkeypatch.setenv("SERVING_TOKEN", f" {ADMIN} ")
    assert client_token() == ADMIN
    monkeypatch.delenv("SERVING_TOKEN")
    (tmp_path / "mine").write_text(f"{INFER}\n")
    monkeypatch.setenv("SERVING_TOKEN_FILE", str(tmp_path / "mine"))
    assert client_token() == INFER


@pytest.mark.parametrize(
    ("value", "token"),
    [
        (f"Bearer {INFER}", INFER),
        (f"bearer   {INFER} ", INFER),
        (None, None),
        ("", None),
        ("Bearer", None),
        (f"Basic {INFER}", None),
        (INFER, None),
    ],
)
def test_bearer(value: str | None, token: str | None) -> None:
    assert bearer(value) == token


def outcome(auth: Authenticator, access: str, token: str | None, peer: str) -> str:
    header = None if token is None else f"Bearer {token}"
    try:
        auth.check(access, header, peer, protocol="http")  # type: ignore[arg-type]
    except ServingError as error:
        return {ErrorCode.UNAUTHENTICATED: "401", ErrorCode.PERMISSION_DENIED: "403"}[error.code]
    return "ok"


WRONG = "wrong-token-0123456789abcdef"


@pytest.mark.parametrize(
    ("access", "token", "peer", "none", "infer_only", "both"),
    [
        # (call, token, peer): with no credentials / an infer token only / infer and admin
        ("open", None, LAN, "ok", "ok", "ok"),
        ("local", None, "127.0.0.1", "ok", "ok", "ok"),
        ("local", ADMIN, LAN, "403", "403", "403"),
        ("infer", None, LAN, "ok", "401", "401"),
        ("infer", WRONG, LAN, "ok", "401", "401"),
        ("infer", INFER, LAN, "ok", "ok", "ok"),
        ("infer", ADMIN, LAN, "ok", "401", "ok"),
        ("admin", None, "127.0.0.1", "ok", "401", "401"),
        ("admin", None, LAN, "403", "401", "401"),
        ("admin", WRONG, "127.0.0.1", "ok", "401", "401"),
        ("admin", INFER, "127.0.0.1", "ok", "ok", "403"),
        ("admin", INFER, LAN, "403", "403", "403"),
        ("admin", ADMIN, LAN, "403", "401", "ok"),
        ("admin", ADMIN, "::ffff:127.0.0.1", "ok", "401", "ok"),
    ],
)
def test_who_may_call_what(
    access: str, token: str | None, peer: str, none: str, infer_only: str, both: str
) -> None:
    """Admin calls need an admin token once one is configured; until then they are taken from
    loopback only (with a valid token, when any is configured)."""
    configured = {
        "none": Authenticator(),
        "infer_only": Authenticator(parse_credentials(f"infer {INFER}", "t")),
        "both": Authenticator(parse_credentials(f"infer {INFER}\nadmin {ADMIN}", "t")),
    }
    got = {name: outcome(auth, access, token, peer) for name, auth in configured.items()}
    assert got == {"none": none, "infer_only": infer_only, "both": both}


def test_refusals_are_counted_by_reason() -> None:
    auth = Authenticator(parse_credentials(f"infer {INFER}\nadmin {ADMIN}", "t"))
    for access, token in (("infer", None), ("infer", WRONG), ("admin", INFER), ("admin", WRONG)):
        outcome(auth, access, token, LAN)
    outcome(auth, "infer", INFER, LAN)
    assert dict(auth.failures) == {
        ("http", "missing"): 1,
        ("http", "invalid"): 2,
        ("http", "scope"): 1,
    }
