"""Authentication: HMAC-signed webhooks for machines, JWTs with role and scopes for people and screens.

Scopes name a place in the organisation: `system:QXN`, `site:RXN01`, `ward:RXN01-AMU`. A scope
covers everything beneath it, so a site manager's `site:RXN01` covers its wards.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import jwt

from shared.organisation import Organisation

SIGNATURE_HEADER = "X-ICC-Signature"
TIMESTAMP_HEADER = "X-ICC-Timestamp"
SOURCE_HEADER = "X-ICC-Source"
API_KEY_HEADER = "X-ICC-Api-Key"
JWT_ALGORITHM = "HS256"
JWT_ISSUER = "icc"


class Role(StrEnum):
    wall_display = "wall_display"
    site_manager = "site_manager"
    ward_nurse = "ward_nurse"
    icb_analyst = "icb_analyst"
    # the ICB's system coordination centre, which declares the system's OPEL level
    system_coordinator = "system_coordinator"
    admin = "admin"


class Tier(StrEnum):
    system = "system"
    site = "site"
    ward = "ward"


@dataclass(frozen=True, order=True)
class Scope:
    tier: Tier
    id: str

    @classmethod
    def parse(cls, text: str) -> Scope:
        tier, sep, ident = text.partition(":")
        if not sep or not ident or tier not in Tier.__members__:
            raise ValueError(f"scope {text!r} is not of the form system:ID, site:ID or ward:ID")
        return cls(Tier(tier), ident)

    def __str__(self) -> str:
        return f"{self.tier.value}:{self.id}"


def covers(granted: Scope, wanted: Scope, org: Organisation) -> bool:
    """Whether a granted scope includes the wanted one (a place covers everything beneath it)."""
    if granted == wanted:
        return True
    if granted.tier is Tier.system:
        return granted.id == org.system.id and exists(wanted, org)
    if granted.tier is Tier.site and wanted.tier is Tier.ward:
        ward = org.wards.get(wanted.id)
        return ward is not None and ward.site_id == granted.id
    return False


def exists(scope: Scope, org: Organisation) -> bool:
    """Whether the scope names a place in the organisation model."""
    if scope.tier is Tier.system:
        return scope.id == org.system.id
    if scope.tier is Tier.site:
        return scope.id in org.sites_by_id
    return scope.id in org.wards


@dataclass(frozen=True)
class Principal:
    subject: str
    role: Role
    scopes: tuple[Scope, ...]

    def may_see(self, wanted: Scope, org: Organisation) -> bool:
        return any(covers(granted, wanted, org) for granted in self.scopes)


class AuthError(Exception):
    """Credentials missing or wrong; `detail` is safe to show the caller."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


def mint_token(
    secret: str,
    *,
    subject: str,
    role: Role,
    scopes: list[str],
    ttl_seconds: int = 12 * 3600,
    auth_time: int | None = None,
) -> str:
    """A signed token; `auth_time` is when its session began (now, unless a refresh carries it over)."""
    for scope in scopes:
        Scope.parse(scope)
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": JWT_ISSUER,
        "sub": subject,
        "role": role.value,
        "scopes": scopes,
        "iat": now,
        "exp": now + ttl_seconds,
        "auth_time": now if auth_time is None else auth_time,
    }
    return jwt.encode(claims, secret, algorithm=JWT_ALGORITHM)


def refresh_token(secret: str, token: str, *, max_session_seconds: float) -> str:
    """A fresh token for the same subject, role and scopes, lasting as long as the one presented.

    The session's start (`auth_time`; a token minted without one began at its `iat`) carries over,
    so that refreshing, by its holder or by a thief, ends once the session is older than
    `max_session_seconds`.
    """
    principal = verify_token(secret, token)
    # verified just above: only read it again
    claims = jwt.decode(token, options={"verify_signature": False})
    try:
        lifetime = int(claims["exp"]) - int(claims["iat"])
        auth_time = int(claims.get("auth_time", claims["iat"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise AuthError(f"invalid token: {exc}") from exc
    if lifetime <= 0:
        raise AuthError("invalid token: it expires before it was issued")
    if time.time() - auth_time > max_session_seconds:
        raise AuthError(f"session older than {max_session_seconds / 3600:g} h: sign in again")
    return mint_token(
        secret,
        subject=principal.subject,
        role=principal.role,
        scopes=[str(s) for s in principal.scopes],
        ttl_seconds=lifetime,
        auth_time=auth_time,
    )


def verify_token(secret: str, token: str) -> Principal:
    try:
        claims = jwt.decode(
            token, secret, algorithms=[JWT_ALGORITHM], issuer=JWT_ISSUER, options={"require": ["exp", "sub"]}
        )
        return Principal(
            subject=str(claims["sub"]),
            role=Role(claims["role"]),
            scopes=tuple(Scope.parse(s) for s in claims["scopes"]),
        )
    except jwt.ExpiredSignatureError as exc:
        raise AuthError("token expired") from exc
    except (jwt.InvalidTokenError, KeyError, ValueError, TypeError) as exc:
        raise AuthError(f"invalid token: {exc}") from exc


def sign_webhook(secret: str, body: bytes, timestamp: int | None = None) -> dict[str, str]:
    """Headers a sender adds: HMAC-SHA256 over `timestamp.body`."""
    ts = str(int(time.time()) if timestamp is None else timestamp)
    mac = hmac.digest(secret.encode(), ts.encode() + b"." + body, hashlib.sha256).hex()
    return {TIMESTAMP_HEADER: ts, SIGNATURE_HEADER: f"sha256={mac}"}


def verify_webhook(
    secrets_by_source: dict[str, str],
    *,
    source: str | None,
    timestamp: str | None,
    signature: str | None,
    body: bytes,
    max_skew_seconds: int,
    now: float | None = None,
) -> str:
    """Return the authenticated source name, or raise AuthError saying what is wrong."""
    if not source:
        raise AuthError(f"missing {SOURCE_HEADER} header")
    secret = secrets_by_source.get(source)
    if secret is None:
        raise AuthError(f"unknown source {source!r}")
    if not timestamp or not signature:
        raise AuthError(f"missing {TIMESTAMP_HEADER} or {SIGNATURE_HEADER} header")
    try:
        ts = int(timestamp)
    except ValueError as exc:
        raise AuthError(f"{TIMESTAMP_HEADER} must be Unix seconds") from exc
    current = time.time() if now is None else now
    if abs(current - ts) > max_skew_seconds:
        raise AuthError(f"timestamp outside the {max_skew_seconds}s window (replayed or clock skew)")
    expected = sign_webhook(secret, body, ts)[SIGNATURE_HEADER]
    if not hmac.compare_digest(expected, signature):
        raise AuthError("signature does not match")
    return source


def api_key_digest(key: str) -> str:
    """What the server needs to keep of an API key: `sha256:` + the hex digest."""
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


def verify_api_key(keys_by_source: dict[str, str], *, presented: str, source: str | None) -> str:
    """Return the source whose API key was presented, or raise AuthError.

    Stored values are keys or their digests; every source is compared, in constant time, so the
    answer's timing says nothing about which source or how much of a key matched.
    """
    if not presented:
        raise AuthError(f"empty {API_KEY_HEADER} header")
    presented_digest = api_key_digest(presented).encode()
    found: str | None = None
    for name, stored in keys_by_source.items():
        stored_digest = stored if stored.startswith("sha256:") else api_key_digest(stored)
        if hmac.compare_digest(presented_digest, stored_digest.encode()):
            found = name
    if found is None:
        raise AuthError("API key not recognised")
    if source and source != found:
        raise AuthError(f"the API key does not belong to source {source!r}")
    return found
