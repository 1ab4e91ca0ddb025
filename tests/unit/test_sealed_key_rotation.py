"""Rotating the raw store key: the sealed format names its key, and the secrets file holds several."""

from __future__ import annotations

import json
import multiprocessing
import stat
from pathlib import Path
from typing import Any

import pytest

from shared.sealed import Sealer, SealError, key_id, new_key, sealed_by
from shared.secrets_store import (
    KeyNotRetirable,
    generate,
    load,
    load_or_create,
    retire_raw_store_key,
    rotate_raw_store_key,
)

pytestmark = pytest.mark.unit

ADT = (
    b"MSH|^~\\&|PAS|RXN01|ICC|QXN|20250203140500||ADT^A01|1|P|2.4\rPID|1||9434765919^^^NHS^NH||SURNAME^GIVEN"
)
# A body sealed by the first release that sealed raw messages (one key, no rotation), kept byte for
# byte: whatever the format grows into, bodies already in the database must still open.
FIRST_RELEASE_KEY = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8"
FIRST_RELEASE_SEALED = bytes.fromhex(
    "49434301630dcd293bb6867e3753c98580c72880db27fe4983cc895cf1708637d1b4605f3d6443c920ffc901"
    "94e74af8bf970362d005d66f06611fdaa5968dbca65593cc02d9ed4e128617b4d6c03e814eeea8d902001e50"
    "3d6ba40b43c824c63a7b3cc91365bd1bd4bfe692f314b22f927c1ad1a121178949e773df58086d09fa478061"
    "a9561253"
)
# Two different keys whose ids (first 4 bytes of the SHA-256 of the key) are the same: 626cc801.
SAME_ID = ("E9s25eqVk2LKx8qxWOFGG1yB0-xrkId30UXuKb_eTAs", "RNp26B598PZk5v5YLLqoYzVUEZ2VJpgOyMRImwlBixs")


def test_a_body_sealed_before_rotation_existed_opens_after_a_rotation() -> None:
    assert sealed_by(FIRST_RELEASE_SEALED) == key_id(FIRST_RELEASE_KEY) == "630dcd29"
    rotated = Sealer(new_key(), [FIRST_RELEASE_KEY])
    assert rotated.open(FIRST_RELEASE_SEALED) == ADT
    assert sealed_by(rotated.seal(ADT)) == rotated.key_id != key_id(FIRST_RELEASE_KEY)


def test_the_current_key_seals_and_every_held_key_opens_by_the_id_in_the_head() -> None:
    oldest, older, current = new_key(), new_key(), new_key()
    by_oldest, by_older = Sealer(oldest).seal(ADT), Sealer(older).seal(b"A08")
    sealer = Sealer(current, [older, oldest])
    assert sealer.key_ids == [key_id(current), key_id(older), key_id(oldest)]
    assert sealer.open(by_oldest) == ADT and sealer.open(by_older) == b"A08"
    sealed = sealer.seal(ADT)
    assert sealed.startswith(Sealer(current).head) and sealer.is_current(sealed)
    assert not sealer.is_current(by_older) and not sealer.is_current(ADT)
    assert sealed_by(ADT) is None  # stored before sealing
    assert sealer.open(ADT) == ADT


def test_a_body_whose_key_is_not_held_is_refused_naming_the_key() -> None:
    stranger = new_key()
    sealed = Sealer(stranger).seal(ADT)
    with pytest.raises(SealError, match=f"another raw_store_key \\(key id {key_id(stranger)}\\)"):
        Sealer(new_key(), [new_key()]).open(sealed)
    # the head is authenticated: a body relabelled with a held key's id does not open either
    held = Sealer(new_key())
    relabelled = held.head + sealed[len(held.head) :]
    with pytest.raises(SealError, match="does not authenticate"):
        held.open(relabelled)


def test_two_keys_with_one_id_cannot_be_held_together() -> None:
    assert key_id(SAME_ID[0]) == key_id(SAME_ID[1])
    with pytest.raises(ValueError, match="share the key id 626cc801"):
        Sealer(SAME_ID[0], [SAME_ID[1]])
    Sealer(SAME_ID[0], [SAME_ID[0]])  # the same key twice is harmless


def _secrets_file(tmp_path: Path) -> Path:
    path = tmp_path / "secrets.json"
    load_or_create(path)
    return path


def test_rotation_makes_a_new_current_key_and_keeps_the_old_ones_to_open(tmp_path: Path) -> None:
    path = _secrets_file(tmp_path)
    first = load(path)
    sealed_first = first.raw_store_sealer().seal(ADT)

    second = rotate_raw_store_key(path)
    third = rotate_raw_store_key(path)
    assert load(path) == third
    assert third.raw_store_previous_keys == [second.raw_store_key, first.raw_store_key]  # newest first
    assert len({first.raw_store_key, second.raw_store_key, third.raw_store_key}) == 3
    assert third.model_dump(exclude={"raw_store_key", "raw_store_previous_keys"}) == first.model_dump(
        exclude={"raw_store_key", "raw_store_previous_keys"}
    )
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    sealer = third.raw_store_sealer()
    assert sealer.key_id == key_id(third.raw_store_key)
    assert sealer.open(sealed_first) == ADT
    assert load_or_create(path) == third  # a service starting afterwards takes the file as it is


def test_a_file_from_before_rotation_loads_and_rotates(tmp_path: Path) -> None:
    path = tmp_path / "secrets.json"
    older = generate().model_dump()
    del older["raw_store_previous_keys"]
    older["raw_store_key"] = FIRST_RELEASE_KEY
    path.write_text(json.dumps(older))
    assert load(path).raw_store_sealer().open(FIRST_RELEASE_SEALED) == ADT
    rotated = rotate_raw_store_key(path)
    assert rotated.raw_store_previous_keys == [FIRST_RELEASE_KEY]
    assert rotated.raw_store_sealer().open(FIRST_RELEASE_SEALED) == ADT


def test_only_a_previous_key_can_be_retired(tmp_path: Path) -> None:
    path = _secrets_file(tmp_path)
    first = load(path)
    rotated = rotate_raw_store_key(path)
    with pytest.raises(KeyNotRetirable, match="current raw store key"):
        retire_raw_store_key(path, key_id(rotated.raw_store_key))
    with pytest.raises(KeyNotRetirable, match="no previous raw store key has the id 00000000"):
        retire_raw_store_key(path, "00000000")
    assert load(path) == rotated  # refusals change nothing

    retired = retire_raw_store_key(path, key_id(first.raw_store_key))
    assert retired.raw_store_previous_keys == []
    assert retired.raw_store_key == rotated.raw_store_key
    assert load(path) == retired
    with pytest.raises(SealError, match="another raw_store_key"):
        retired.raw_store_sealer().open(first.raw_store_sealer().seal(ADT))


def _write_to_file(path: str, rotate: bool, start: Any, keys: Any) -> None:  # in a child process
    start.wait()
    found = rotate_raw_store_key(Path(path)) if rotate else load_or_create(Path(path))
    keys.put(found.raw_store_key)


def test_rotations_and_upgrades_at_once_lose_no_key(tmp_path: Path) -> None:
    """Rotations take the lock that services starting together take to add a missing key."""
    path = tmp_path / "secrets.json"
    older = generate().model_dump()
    del older["raw_store_key"], older["raw_store_previous_keys"]  # a file from before sealing
    path.write_text(json.dumps(older))
    context = multiprocessing.get_context("spawn")
    start, keys = context.Event(), context.Queue()
    writers = [
        context.Process(target=_write_to_file, args=(str(path), rotate, start, keys))
        for rotate in (True, False, True, False, True, True)
    ]
    for p in writers:
        p.start()
    start.set()
    got = [keys.get(timeout=60) for _ in writers]
    for p in writers:
        p.join(60)
        assert p.exitcode == 0
    final = load(path)
    held = [final.raw_store_key, *final.raw_store_previous_keys]
    # every key a writer saw is in the file; each rotation added one, the upgrades at most one
    assert set(got) <= set(held) and len(held) == len(set(held))
    assert len(held) in (4, 5) and final.raw_store_key in got
    final.raw_store_sealer()
