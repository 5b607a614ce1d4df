"""Who may call what: bearer tokens with scopes, checked by both transports before a handler runs.

Credentials come from a tokens file (``ServerConfig.auth_file``, read by each replica, such as a
Kubernetes Secret mounted in every pod) or from the ``SERVING_TOKENS`` environment variable of
``serving serve`` (hashed there, so only hashes travel through Ray). Never from the command
line. Each line of either names the scopes and the credential, and optionally a name::

    # scopes      token (or sha256:<hex> of it)   name
    infer         3c1f...a long random string...  app
    infer,admin   sha256:9b71d224bd62f378...      ops

Only SHA-256 digests are kept; a presented token is hashed and compared with each digest in
constant time. Tokens are random strings of at least ``MIN_TOKEN_CHARS`` characters (not
passwords), so a plain digest is enough.

What each call needs (``Access``):

- ``open``: health and KubeRay's probe, always.
- ``local``: the drain hook, from loopback only.
- ``infer``: inference, metadata, config, statistics: any valid token once credentials are
  configured, else nothing.
- ``admin``: model control, traffic, rollouts: a token with the ``admin`` scope when one is
  configured; else a valid token (if any are configured) from loopback; with no credentials at
  all, loopback only.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, cast

from serving.errors import PermissionDeniedError, UnauthenticatedError

Scope = Literal["infer", "admin"]
Access = Literal["open", "local", "infer", "admin"]
SCOPES: tuple[Scope, ...] = ("infer", "admin")
TOKENS_ENV = "SERVING_TOKENS"
"""Credentials in the server's environment: the tokens file's lines (newlines or ``;``)."""
TOKEN_ENV = "SERVING_TOKEN"
"""The credential the CLI's client commands present."""
TOKEN_FILE_ENV = "SERVING_TOKEN_FILE"
"""A file holding the credential the CLI's client commands present."""
MIN_TOKEN_CHARS = 16
_DIGEST = re.compile(r"sha256:([0-9a-fA-F]{64})")


def is_loopback(host: str | None) -> bool:
    """Whether ``host`` (an address as the transport reports its peer) is this machine's
    loopback; ``unix`` sockets count as local."""
    if host == "unix":
        return True
    try:
        address = ipaddress.ip_address((host or "").strip("[]"))
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class Credential:
    name: str
    sha256: str
    scopes: frozenset[Scope]


class CredentialsError(ValueError):
    """A tokens file or variable that cannot be read; the message never contains a token."""


def parse_credentials(text: str, source: str) -> tuple[Credential, ...]:
    """The credentials in ``text`` (a tokens file's content), or CredentialsError naming the
    line (never its token)."""
    credentials: list[Credential] = []
    for number, raw in enumerate(re.split(r"[\n;]", text), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        fields = line.split()
        if len(fields) not in (2, 3):
            raise CredentialsError(f"{source} line {number}: expected 'SCOPES TOKEN [NAME]'")
        scopes = fields[0].split(",")
        unknown = [s for s in scopes if s not in SCOPES]
        if unknown or not scopes:
            raise CredentialsError(
                f"{source} line {number}: unknown scope {', '.join(unknown)!r} (infer, admin)"
            )
        secret = fields[1]
        hashed = _DIGEST.fullmatch(secret)
        if hashed is not None:
            sha = hashed.group(1).lower()
        elif len(secret) < MIN_TOKEN_CHARS:
            raise CredentialsError(
                f"{source} line {number}: a token must be at least {MIN_TOKEN_CHARS} characters "
                "(e.g. `openssl rand -hex 32`)"
            )
        else:
            sha = digest(secret)
        name = fields[2] if len(fields) == 3 else f"token-{len(credentials) + 1}"
        credentials.append(Credential(name, sha, frozenset(cast(list[Scope], scopes))))
    return tuple(credentials)


def read_credentials(path: Path) -> tuple[Credential, ...]:
    try:
        text = path.read_text()
    except OSError as error:
        raise CredentialsError(f"cannot read the tokens file {path}: {error.strerror}") from None
    credentials = parse_credentials(text, str(path))
    if not credentials:
        raise CredentialsError(f"the tokens file {path} holds no credential")
    return credentials


def hashed_lines(credentials: tuple[Credential, ...]) -> tuple[str, ...]:
    """``credentials`` as tokens-file lines with digests in place of tokens."""
    return tuple(f"{','.join(sorted(c.scopes))} sha256:{c.sha256} {c.name}" for c in credentials)


def environment_credentials() -> tuple[str, ...]:
    """``SERVING_TOKENS``, hashed: what the CLI passes on in ``ServerConfig.auth_tokens``."""
    text = os.environ.get(TOKENS_ENV, "")
    return hashed_lines(parse_credentials(text, TOKENS_ENV)) if text.strip() else ()


def client_token() -> str | None:
    """The credential the CLI presents: ``SERVING_TOKEN``, else the first line of the file
    that ``SERVING_TOKEN_FILE`` names."""
    token = os.environ.get(TOKEN_ENV, "").strip()
    if token:
        return token
    path = os.environ.get(TOKEN_FILE_ENV)
    if path:
        try:
            return Path(path).read_text().strip().splitlines()[0].strip() or None
        except (OSError, IndexError):
            return None
    return None


@dataclass
class Authenticator:
    """Checks a call's credential against the configured ones; counts what it refuses."""

    credentials: tuple[Credential, ...] = ()
    failures: Counter[tuple[str, str]] = field(default_factory=Counter)
    """Refused calls by (protocol, reason): ``missing``, ``invalid``, ``scope``, ``peer``."""

    @property
    def enabled(self) -> bool:
        return bool(self.credentials)

    @property
    def admin_configured(self) -> bool:
        return any("admin" in c.scopes for c in self.credentials)

    def identify(self, token: str | None) -> Credential | None:
        if token is None:
            return None
        presented = digest(token).encode()
        found = None
        for credential in self.credentials:  # every digest compared: no early exit to time
            if hmac.compare_digest(presented, credential.sha256.encode()):
                found = credential
        return found

    def check(self, access: Access, authorization: str | None, peer: str | None, *,
              protocol: str) -> Credential | None:  # fmt: skip
        """The caller's credential, or UnauthenticatedError / PermissionDeniedError saying
        what the call lacks. ``authorization`` is the ``Authorization`` header (or gRPC
        ``authorization`` metadata) as sent."""
        if access == "open":
            return None
        if access == "local":
            if not is_loopback(peer):
                self._refuse(protocol, "peer")
                raise PermissionDeniedError(
                    "this call is accepted only from loopback; refused for "
                    f"{peer or 'an unknown peer'}"
                )
            return None
        credential = None
        if self.enabled:
            token = bearer(authorization)
            if token is None:
                self._refuse(protocol, "missing")
                raise UnauthenticatedError(
                    "this server needs a credential: send 'Authorization: Bearer <token>'"
                )
            credential = self.identify(token)
            if credential is None:
                self._refuse(protocol, "invalid")
                raise UnauthenticatedError("the credential sent is not valid on this server")
        if access == "infer":
            return credential
        if credential is not None and "admin" in credential.scopes:
            return credential
        if self.admin_configured:
            self._refuse(protocol, "scope")
            name = credential.name if credential is not None else ""
            raise PermissionDeniedError(
                f"this is an admin call and the credential '{name}' has no admin scope"
            )
        if not is_loopback(peer):
            self._refuse(protocol, "peer")
            raise PermissionDeniedError(
                "admin calls (model control, traffic, rollouts) are accepted only from loopback "
                f"until an admin credential is configured; refused for {peer or 'an unknown peer'}"
            )
        return credential

    def _refuse(self, protocol: str, reason: str) -> None:
        self.failures[(protocol, reason)] += 1


def bearer(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` value; None for anything else."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    return token


def authenticator(auth_file: Path | None, auth_tokens: tuple[str, ...]) -> Authenticator:
    """The replica's authenticator: the tokens file's credentials and the hashed ones from the
    config."""
    credentials = parse_credentials("\n".join(auth_tokens), "auth_tokens")
    if auth_file is not None:
        credentials += read_credentials(auth_file)
    return Authenticator(credentials)
