"""Raw messages sealed at rest, and the key that seals them."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from shared.sealed import MAGIC, Sealer, SealError, new_key
from shared.secrets_store import generate, load_or_create

pytestmark = pytest.mark.unit

ADT = (
    b"MSH|^~\\&|PAS|RXN01|ICC|QXN|20250203140500||ADT^A01|1|P|2.4\rPID|1||9434765919^^^NHS^NH||SURNAME^GIVEN"
)


def test_a_sealed_body_opens_to_what_was_received_and_holds_nothing_readable() -> None:
    sealer = Sealer(new_key())
    sealed = sealer.seal(ADT)
    assert sealed.startswith(MAGIC)
    assert b"SURNAME" not in sealed and b"9434765919" not in sealed
    assert sealer.open(sealed) == ADT
    assert sealer.seal(ADT) != sealed  # a fresh nonce each time


def test_another_key_or_an_altered_body_is_refused_not_misread() -> None:
    sealed = Sealer(key := new_key()).seal(ADT)
    with pytest.raises(SealError, match="another raw_store_key"):
        Sealer(new_key()).open(sealed)
    altered = sealed[:-1] + bytes([sealed[-1] ^ 1])
    with pytest.raises(SealError, match="does not authenticate"):
        Sealer(key).open(altered)


def test_a_row_stored_before_sealing_reads_back_as_it_is() -> None:
    assert Sealer(new_key()).open(ADT) == ADT


def test_a_key_that_is_not_32_bytes_is_refused() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        Sealer("c2hvcnQ")


def test_a_secrets_file_without_a_raw_store_key_gets_one_kept_from_then_on(tmp_path: Path) -> None:
    path = tmp_path / "secrets.json"
    older = generate().model_dump()
    del older["raw_store_key"]
    path.write_text(json.dumps(older))
    path.chmod(0o600)

    first = load_or_create(path)
    assert first.raw_store_key
    assert first.pseudonymisation_key == older["pseudonymisation_key"]  # the rest is untouched
    assert load_or_create(path).raw_store_key == first.raw_store_key
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    Sealer(first.raw_store_key)  # a usable key
