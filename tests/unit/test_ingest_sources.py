"""Per-source authentication and limits, NHS number checks, and the reloading location map."""

from __future__ import annotations

import hashlib
import hmac
import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.ingest.location_source import LocationMapSource
from services.ingest.patient_ids import nhs_number_valid, patient_pseudonym
from services.ingest.source_auth import RateLimiter
from shared.auth import AuthError, api_key_digest, verify_api_key
from shared.organisation import Organisation
from shared.problems import Problem
from shared.pseudonymise import IdKind, keyed_mac, normalise, pseudonymise

pytestmark = pytest.mark.unit


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_token_bucket_allows_a_burst_then_refills_at_the_rate() -> None:
    clock = FakeClock()
    limiter = RateLimiter(rate=2.0, burst=3, clock=clock)
    for _ in range(3):
        limiter.check("pas")
    with pytest.raises(Problem) as refused:
        limiter.check("pas")
    assert refused.value.status == 429
    assert refused.value.headers["Retry-After"] == "1"
    limiter.check("ed")  # another source has its own bucket
    clock.now += 0.5  # one token back at 2/s
    limiter.check("pas")
    with pytest.raises(Problem):
        limiter.check("pas")


def test_retry_after_rounds_up_to_whole_seconds() -> None:
    clock = FakeClock()
    limiter = RateLimiter(rate=0.25, burst=1, clock=clock)
    limiter.check("pas")
    with pytest.raises(Problem) as refused:
        limiter.check("pas")
    assert refused.value.headers["Retry-After"] == "4"


def test_rate_zero_turns_limiting_off() -> None:
    limiter = RateLimiter(rate=0, burst=1, clock=FakeClock())
    for _ in range(100):
        limiter.check("pas")


def test_api_key_matches_plain_or_digest_and_names_its_source() -> None:
    keys = {"pas": "pas-key-" + "x" * 24, "ed": api_key_digest("ed-key-" + "y" * 24)}
    assert verify_api_key(keys, presented="pas-key-" + "x" * 24, source=None) == "pas"
    assert verify_api_key(keys, presented="ed-key-" + "y" * 24, source="ed") == "ed"
    with pytest.raises(AuthError, match="does not belong"):
        verify_api_key(keys, presented="ed-key-" + "y" * 24, source="pas")
    with pytest.raises(AuthError, match="not recognised"):
        verify_api_key(keys, presented="pas-key-" + "x" * 23, source=None)
    with pytest.raises(AuthError):
        verify_api_key(keys, presented="", source=None)


@pytest.mark.parametrize(
    ("number", "valid"),
    [
        ("9434765919", True),
        ("943 476 5919", True),
        ("943-476-5919", True),
        ("9434765918", False),  # wrong check digit
        ("943476591", False),  # nine digits
        ("94347659190", False),
        ("943476591A", False),
    ],
)
def test_nhs_number_check_digit(number: str, valid: bool) -> None:
    assert nhs_number_valid(number) is valid


def test_patient_pseudonym_prefers_the_nhs_number_and_scopes_mrns_by_issuer() -> None:
    key = "k" * 40
    by_nhs = patient_pseudonym(key, nhs_number="943 476 5919", mrn="M1", mrn_issuer="RXN01")
    assert by_nhs == patient_pseudonym(key, nhs_number="9434765919", mrn=None, mrn_issuer="")
    assert by_nhs is not None and by_nhs.startswith("nhs:") and "9434765919" not in by_nhs
    one = patient_pseudonym(key, nhs_number=None, mrn="M1", mrn_issuer="RXN01")
    other = patient_pseudonym(key, nhs_number=None, mrn="M1", mrn_issuer="RXN02")
    assert one != other and one is not None and one.startswith("mrn:")
    assert patient_pseudonym(key, nhs_number=None, mrn=None, mrn_issuer="") is None


def test_location_map_is_reloaded_when_its_file_changes(tmp_path: Path, org: Organisation) -> None:
    path = tmp_path / "map.yaml"
    clock = FakeClock()
    source = LocationMapSource(org, path, clock=clock)
    assert source.current().site_for_facility("RXNOLD") is None
    path.write_text("facilities:\n  RXNOLD: RXN01\n", encoding="utf-8")
    assert source.current().site_for_facility("RXNOLD") is None  # checked at most once a second
    assert source.current(force=True).site_for_facility("RXNOLD") == "RXN01"
    path.write_text("facilities:\n  RXNOLD: NOWHERE\n", encoding="utf-8")
    os.utime(path, ns=(1, 1))  # a different stamp even within the clock's resolution
    clock.now += 2
    assert source.current().site_for_facility("RXNOLD") == "RXN01"  # the bad file keeps the last good map
    assert source.error is not None and "NOWHERE" in source.error


@given(st.text())
def test_normalise_keeps_its_meaning_with_the_fast_path(value: str) -> None:
    assert normalise(value) == "".join(ch for ch in value.strip().upper() if ch.isalnum())


@given(st.lists(st.tuples(st.text(max_size=100), st.binary(max_size=300)), min_size=1, max_size=12))
def test_keyed_mac_is_hmac_sha256_under_each_key(cases: list[tuple[str, bytes]]) -> None:
    """Keys longer than SHA-256's block are hashed first by HMAC; the copied key state must agree."""
    for key, message in cases:
        assert keyed_mac(key, message) == hmac.digest(key.encode(), message, hashlib.sha256)


def test_pseudonyms_are_the_keyed_hmac_of_kind_issuer_and_normalised_value() -> None:
    """Stored pseudonyms must stay what they were: this is their definition."""
    key = "k" * 40
    expected = hmac.digest(key.encode(), b"mrn|RXN01|M12", hashlib.sha256).hex()[:32]
    assert pseudonymise(key, IdKind.mrn, " m-12 ", issuer=" rxn01") == f"mrn:{expected}"
