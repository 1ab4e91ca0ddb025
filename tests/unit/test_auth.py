"""Webhook HMAC signatures, JWTs with role and scopes, and scope coverage over the organisation."""

from __future__ import annotations

import secrets
import time
from pathlib import Path

import jwt
import pytest

from shared.auth import (
    JWT_ALGORITHM,
    SIGNATURE_HEADER,
    SOURCE_HEADER,
    TIMESTAMP_HEADER,
    AuthError,
    Principal,
    Role,
    Scope,
    Tier,
    covers,
    mint_token,
    sign_webhook,
    verify_token,
    verify_webhook,
)
from shared.organisation import Organisation, load_organisation

pytestmark = pytest.mark.unit

SAMPLE_ORG = Path(__file__).resolve().parents[2] / "deploy/org/sample-icb.yaml"
BODY = b'{"site_id":"RXN01","ward_id":"RXN01-AMU","bed_id":"RXN01-AMU-B1-1","status":"occupied"}'
SKEW = 300


@pytest.fixture(scope="module")
def sample_org() -> Organisation:
    return load_organisation(SAMPLE_ORG)


@pytest.fixture
def secret() -> str:
    return secrets.token_urlsafe(32)


# --- webhooks ---------------------------------------------------------------------------------------


def _verify(
    secrets_by_source: dict[str, str],
    headers: dict[str, str],
    *,
    source: str | None = "bedmgmt",
    body: bytes = BODY,
    now: float | None = None,
) -> str:
    return verify_webhook(
        secrets_by_source,
        source=source,
        timestamp=headers.get(TIMESTAMP_HEADER),
        signature=headers.get(SIGNATURE_HEADER),
        body=body,
        max_skew_seconds=SKEW,
        now=now,
    )


def test_sign_webhook_headers(secret: str) -> None:
    headers = sign_webhook(secret, BODY, timestamp=1_700_000_000)
    assert headers[TIMESTAMP_HEADER] == "1700000000"
    assert headers[SIGNATURE_HEADER].startswith("sha256=")
    assert len(headers[SIGNATURE_HEADER]) == len("sha256=") + 64
    # Deterministic for the same inputs, different for another timestamp.
    assert sign_webhook(secret, BODY, timestamp=1_700_000_000) == headers
    assert sign_webhook(secret, BODY, timestamp=1_700_000_001)[SIGNATURE_HEADER] != headers[SIGNATURE_HEADER]


def test_valid_signature_is_accepted(secret: str) -> None:
    headers = sign_webhook(secret, BODY)
    assert _verify({"bedmgmt": secret}, headers) == "bedmgmt"


def test_valid_signature_within_skew_is_accepted(secret: str) -> None:
    ts = 1_700_000_000
    headers = sign_webhook(secret, BODY, timestamp=ts)
    assert _verify({"bedmgmt": secret}, headers, now=ts + SKEW) == "bedmgmt"
    assert _verify({"bedmgmt": secret}, headers, now=ts - SKEW) == "bedmgmt"


def test_wrong_secret_is_rejected(secret: str) -> None:
    headers = sign_webhook(secrets.token_urlsafe(32), BODY)
    with pytest.raises(AuthError) as err:
        _verify({"bedmgmt": secret}, headers)
    assert err.value.detail == "signature does not match"


def test_secret_of_another_source_is_rejected(secret: str) -> None:
    other = secrets.token_urlsafe(32)
    headers = sign_webhook(other, BODY)
    with pytest.raises(AuthError, match="signature does not match"):
        _verify({"bedmgmt": secret, "pas": other}, headers, source="bedmgmt")


def test_tampered_body_is_rejected(secret: str) -> None:
    headers = sign_webhook(secret, BODY)
    tampered = BODY.replace(b"occupied", b"closed")
    with pytest.raises(AuthError) as err:
        _verify({"bedmgmt": secret}, headers, body=tampered)
    assert err.value.detail == "signature does not match"


def test_tampered_timestamp_is_rejected(secret: str) -> None:
    ts = int(time.time())
    headers = sign_webhook(secret, BODY, timestamp=ts)
    headers[TIMESTAMP_HEADER] = str(ts + 1)
    with pytest.raises(AuthError, match="signature does not match"):
        _verify({"bedmgmt": secret}, headers)


def test_unknown_source_is_rejected(secret: str) -> None:
    headers = sign_webhook(secret, BODY)
    with pytest.raises(AuthError) as err:
        _verify({"bedmgmt": secret}, headers, source="intruder")
    assert err.value.detail == "unknown source 'intruder'"


@pytest.mark.parametrize("source", [None, ""])
def test_missing_source_header_is_rejected(secret: str, source: str | None) -> None:
    headers = sign_webhook(secret, BODY)
    with pytest.raises(AuthError) as err:
        _verify({"bedmgmt": secret}, headers, source=source)
    assert SOURCE_HEADER in err.value.detail
    assert "missing" in err.value.detail


@pytest.mark.parametrize("drop", [TIMESTAMP_HEADER, SIGNATURE_HEADER])
def test_missing_timestamp_or_signature_header_is_rejected(secret: str, drop: str) -> None:
    headers = sign_webhook(secret, BODY)
    del headers[drop]
    with pytest.raises(AuthError) as err:
        _verify({"bedmgmt": secret}, headers)
    assert "missing" in err.value.detail
    assert drop in err.value.detail


def test_non_numeric_timestamp_is_rejected(secret: str) -> None:
    headers = sign_webhook(secret, BODY)
    headers[TIMESTAMP_HEADER] = "yesterday"
    with pytest.raises(AuthError) as err:
        _verify({"bedmgmt": secret}, headers)
    assert "Unix seconds" in err.value.detail


@pytest.mark.parametrize("offset", [SKEW + 1, -(SKEW + 1), 86_400])
def test_timestamp_outside_skew_is_rejected_as_replay(secret: str, offset: int) -> None:
    ts = 1_700_000_000
    headers = sign_webhook(secret, BODY, timestamp=ts)  # correctly signed, just old (or future)
    with pytest.raises(AuthError) as err:
        _verify({"bedmgmt": secret}, headers, now=ts + offset)
    assert "timestamp outside" in err.value.detail
    assert f"{SKEW}s" in err.value.detail
    assert "replayed" in err.value.detail


def test_auth_error_message_is_the_detail() -> None:
    err = AuthError("nope")
    assert str(err) == "nope"
    assert err.detail == "nope"


# --- tokens -----------------------------------------------------------------------------------------


def test_token_round_trip_keeps_subject_role_and_scopes(secret: str) -> None:
    token = mint_token(
        secret, subject="nurse.jones", role=Role.ward_nurse, scopes=["ward:RXN01-AMU", "ward:RXN01-SAU"]
    )

    principal = verify_token(secret, token)

    assert principal == Principal(
        subject="nurse.jones",
        role=Role.ward_nurse,
        scopes=(Scope(Tier.ward, "RXN01-AMU"), Scope(Tier.ward, "RXN01-SAU")),
    )


def test_token_claims(secret: str) -> None:
    before = int(time.time())
    token = mint_token(
        secret, subject="wall-1", role=Role.wall_display, scopes=["site:RXN01"], ttl_seconds=60
    )
    claims = jwt.decode(token, secret, algorithms=[JWT_ALGORITHM], issuer="icc")
    assert claims["role"] == "wall_display"
    assert claims["scopes"] == ["site:RXN01"]
    assert claims["exp"] - claims["iat"] == 60
    assert before <= claims["iat"] <= int(time.time())


def test_expired_token_is_rejected(secret: str) -> None:
    token = mint_token(secret, subject="a", role=Role.admin, scopes=["system:QXN"], ttl_seconds=-10)
    with pytest.raises(AuthError) as err:
        verify_token(secret, token)
    assert err.value.detail == "token expired"


def test_token_signed_with_another_key_is_rejected(secret: str) -> None:
    token = mint_token(secrets.token_urlsafe(32), subject="a", role=Role.admin, scopes=["system:QXN"])
    with pytest.raises(AuthError) as err:
        verify_token(secret, token)
    assert err.value.detail.startswith("invalid token")


def test_token_from_another_issuer_is_rejected(secret: str) -> None:
    now = int(time.time())
    token = jwt.encode(
        {"iss": "someone-else", "sub": "a", "role": "admin", "scopes": [], "iat": now, "exp": now + 60},
        secret,
        algorithm=JWT_ALGORITHM,
    )
    with pytest.raises(AuthError, match="invalid token"):
        verify_token(secret, token)


def test_token_without_expiry_is_rejected(secret: str) -> None:
    token = jwt.encode(
        {"iss": "icc", "sub": "a", "role": "admin", "scopes": []}, secret, algorithm=JWT_ALGORITHM
    )
    with pytest.raises(AuthError, match="invalid token"):
        verify_token(secret, token)


@pytest.mark.parametrize(
    "claims",
    [
        {"role": "overlord", "scopes": ["system:QXN"]},
        {"role": "admin", "scopes": ["planet:earth"]},
        {"role": "admin"},
    ],
    ids=["unknown-role", "bad-scope", "no-scopes"],
)
def test_token_with_bad_claims_is_rejected(secret: str, claims: dict[str, object]) -> None:
    now = int(time.time())
    token = jwt.encode(
        {"iss": "icc", "sub": "a", "iat": now, "exp": now + 60, **claims}, secret, algorithm=JWT_ALGORITHM
    )
    with pytest.raises(AuthError, match="invalid token"):
        verify_token(secret, token)


def test_garbage_token_is_rejected(secret: str) -> None:
    with pytest.raises(AuthError, match="invalid token"):
        verify_token(secret, "not-a-jwt")


def test_mint_token_refuses_bad_scopes(secret: str) -> None:
    with pytest.raises(ValueError, match="is not of the form"):
        mint_token(secret, subject="a", role=Role.admin, scopes=["site:RXN01", "hospital:RXN01"])


# --- scopes -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("system:QXN", Scope(Tier.system, "QXN")),
        ("site:RXN01", Scope(Tier.site, "RXN01")),
        ("ward:RXN01-AMU", Scope(Tier.ward, "RXN01-AMU")),
    ],
)
def test_scope_parse_and_str(text: str, expected: Scope) -> None:
    assert Scope.parse(text) == expected
    assert str(Scope.parse(text)) == text


@pytest.mark.parametrize("text", ["", "site", "site:", ":RXN01", "hospital:RXN01", "SITE:RXN01", "RXN01"])
def test_scope_parse_rejects_bad_strings(text: str) -> None:
    with pytest.raises(ValueError, match="is not of the form"):
        Scope.parse(text)


SYSTEM = Scope(Tier.system, "QXN")
SITE1 = Scope(Tier.site, "RXN01")
SITE2 = Scope(Tier.site, "RXN02")
AMU = Scope(Tier.ward, "RXN01-AMU")
SAU = Scope(Tier.ward, "RXN01-SAU")
MAU = Scope(Tier.ward, "RXN02-MAU")


@pytest.mark.parametrize("wanted", [SYSTEM, SITE1, SITE2, AMU, SAU, MAU])
def test_system_scope_covers_everything_in_the_system(sample_org: Organisation, wanted: Scope) -> None:
    assert covers(SYSTEM, wanted, sample_org)


def test_system_scope_covers_every_site_and_ward_of_the_sample(sample_org: Organisation) -> None:
    assert all(covers(SYSTEM, Scope(Tier.site, s.id), sample_org) for s in sample_org.sites)
    assert all(covers(SYSTEM, Scope(Tier.ward, w), sample_org) for w in sample_org.wards)


@pytest.mark.parametrize(
    "wanted",
    [Scope(Tier.site, "NOPE"), Scope(Tier.ward, "RXN01-NOPE"), Scope(Tier.system, "OTHER")],
)
def test_system_scope_does_not_cover_unknown_places(sample_org: Organisation, wanted: Scope) -> None:
    assert not covers(SYSTEM, wanted, sample_org)


def test_another_system_scope_covers_nothing_here(sample_org: Organisation) -> None:
    other = Scope(Tier.system, "QXX")
    assert not covers(other, SITE1, sample_org)
    assert not covers(other, AMU, sample_org)
    assert not covers(other, SYSTEM, sample_org)


def test_site_scope_covers_itself_and_its_own_wards(sample_org: Organisation) -> None:
    assert covers(SITE1, SITE1, sample_org)
    assert covers(SITE1, AMU, sample_org)
    assert covers(SITE1, SAU, sample_org)
    own = [w.id for w in sample_org.sites_by_id["RXN01"].wards]
    assert all(covers(SITE1, Scope(Tier.ward, w), sample_org) for w in own)


def test_site_scope_does_not_cover_other_sites_their_wards_or_the_system(sample_org: Organisation) -> None:
    assert not covers(SITE1, MAU, sample_org)
    assert not covers(SITE1, SITE2, sample_org)
    assert not covers(SITE1, SYSTEM, sample_org)
    assert not covers(SITE1, Scope(Tier.ward, "RXN01-NOPE"), sample_org)
    others = [w.id for w in sample_org.sites_by_id["RXN02"].wards]
    assert not any(covers(SITE1, Scope(Tier.ward, w), sample_org) for w in others)


def test_ward_scope_covers_only_itself(sample_org: Organisation) -> None:
    assert covers(AMU, AMU, sample_org)
    assert not covers(AMU, SAU, sample_org)
    assert not covers(AMU, MAU, sample_org)
    assert not covers(AMU, SITE1, sample_org)
    assert not covers(AMU, SYSTEM, sample_org)


def test_principal_may_see_what_any_of_its_scopes_covers(sample_org: Organisation) -> None:
    nurse = Principal("nurse", Role.ward_nurse, (AMU, MAU))
    assert nurse.may_see(AMU, sample_org)
    assert nurse.may_see(MAU, sample_org)
    assert not nurse.may_see(SAU, sample_org)
    assert not nurse.may_see(SITE1, sample_org)

    manager = Principal("manager", Role.site_manager, (SITE2,))
    assert manager.may_see(MAU, sample_org)
    assert manager.may_see(SITE2, sample_org)
    assert not manager.may_see(AMU, sample_org)
    assert not manager.may_see(SYSTEM, sample_org)

    analyst = Principal("analyst", Role.icb_analyst, (SYSTEM,))
    assert analyst.may_see(AMU, sample_org)
    assert analyst.may_see(SITE2, sample_org)

    nobody = Principal("nobody", Role.wall_display, ())
    assert not nobody.may_see(AMU, sample_org)
