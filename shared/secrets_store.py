"""Secrets: JWT signing key, per-source webhook keys, the pseudonymisation key and the raw store keys.

`icc up` generates a development set in the data folder; production points ICC_SECRETS_FILE at
a file the operator manages. Nothing here is ever committed.

Every change to the file (adding a missing raw store key when the services start together,
`icc secrets rotate-raw-key`, `icc secrets retire-raw-key`) is made under one lock beside the file
and written to a new file renamed over the old one, so a reader sees the old file or the new one and
two writers never lose each other's change.
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pydantic import BaseModel, Field

from shared.sealed import Sealer, key_id, new_key

DEFAULT_SOURCES = ("pas", "ed", "bedmgmt", "simulator")


class Secrets(BaseModel):
    jwt_secret: str = Field(min_length=32)
    pseudonymisation_key: str = Field(min_length=32)
    # seals raw messages at rest (`shared.sealed`); a file from before it existed gets one added
    raw_store_key: str = Field(default="", description="32 random bytes, URL-safe base64")
    # keys rotated out, newest first: they open what they sealed and never seal again (ADR 0008)
    raw_store_previous_keys: list[str] = Field(default_factory=list)
    webhook_secrets: dict[str, str] = Field(description="source name → HMAC key")
    # An alternative to signing: a source may send its key in X-ICC-Api-Key. The value is the key
    # itself or only its digest (`sha256:<hex>`), which is all the server needs to check it.
    api_keys: dict[str, str] = Field(default_factory=dict, description="source name → API key or digest")

    def raw_store_sealer(self) -> Sealer:
        """Seals with the current raw store key, opens with it and with every previous one."""
        return Sealer(self.raw_store_key, self.raw_store_previous_keys)


def generate() -> Secrets:
    return Secrets(
        jwt_secret=secrets.token_urlsafe(48),
        pseudonymisation_key=secrets.token_urlsafe(48),
        raw_store_key=new_key(),
        webhook_secrets={source: secrets.token_urlsafe(32) for source in DEFAULT_SOURCES},
        api_keys={source: secrets.token_urlsafe(32) for source in DEFAULT_SOURCES},
    )


def load_or_create(path: Path) -> Secrets:
    """Read the secrets file, creating a fresh development set (mode 0600) when there is none.

    A file without a raw store key (written before raw messages were sealed) gets one added. The
    services start together and each calls this: a lock beside the file makes one of them write.
    """
    if path.exists() and (found := Secrets.model_validate_json(path.read_bytes())).raw_store_key:
        return found  # nothing to write: a read-only secrets file is fine
    path.parent.mkdir(parents=True, exist_ok=True)
    with _locked(path):
        if path.exists():
            found = load(path)
            if found.raw_store_key:
                return found
            completed = found.model_copy(update={"raw_store_key": _key_unlike(found)})
            _write(path, completed, replace=True)
            return completed
        created = generate()
        _write(path, created, replace=False)
        return created


def rotate_raw_store_key(path: Path) -> Secrets:
    """Make a new raw store key the current one; the one it replaces is kept, to open only.

    Running services go on sealing with the key they started with until they restart (ADR 0008).
    """
    with _locked(path):
        found = load(path)
        previous = [found.raw_store_key] if found.raw_store_key else []
        rotated = found.model_copy(
            update={
                "raw_store_key": _key_unlike(found),
                "raw_store_previous_keys": previous + found.raw_store_previous_keys,
            }
        )
        _write(path, rotated, replace=True)
        return rotated


class KeyNotRetirable(ValueError):
    """The key asked for is the current one, or not in the file."""


def retire_raw_store_key(path: Path, retired: str) -> Secrets:
    """Drop a previous raw store key (by key id) from the file. The current key cannot be retired.

    Whether a stored body still needs the key is the caller's to check first (`raw_store_keys`).
    """
    with _locked(path):
        found = load(path)
        if found.raw_store_key and key_id(found.raw_store_key) == retired:
            raise KeyNotRetirable(f"{retired} is the current raw store key; rotate first")
        kept = [k for k in found.raw_store_previous_keys if key_id(k) != retired]
        if len(kept) == len(found.raw_store_previous_keys):
            raise KeyNotRetirable(f"no previous raw store key has the id {retired}")
        updated = found.model_copy(update={"raw_store_previous_keys": kept})
        _write(path, updated, replace=True)
        return updated


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold the lock beside the secrets file: every writer of the file takes it."""
    with open(path.with_name(path.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _key_unlike(found: Secrets) -> str:
    """A new raw store key whose id no key in the file has (a sealed head names its key by id)."""
    held = {key_id(k) for k in (found.raw_store_key, *found.raw_store_previous_keys) if k}
    while key_id(key := new_key()) in held:
        pass  # one chance in 2**32 per key held
    return key


def _write(path: Path, value: Secrets, *, replace: bool) -> None:
    """Write mode 0600; replacing goes through a new file renamed over the old one."""
    target = path.with_name(path.name + ".new") if replace else path
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if replace else os.O_EXCL)
    fd = os.open(target, flags, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(value.model_dump(), fh, indent=2)
    if replace:
        os.replace(target, path)


def load(path: Path) -> Secrets:
    return Secrets.model_validate_json(path.read_bytes())
