"""Secrets: JWT signing key, per-source webhook keys, the pseudonymisation key and the raw store key.

`icc up` generates a development set in the data folder; production points ICC_SECRETS_FILE at
a file the operator manages. Nothing here is ever committed.
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
from pathlib import Path

from pydantic import BaseModel, Field

from shared.sealed import new_key

DEFAULT_SOURCES = ("pas", "ed", "bedmgmt", "simulator")


class Secrets(BaseModel):
    jwt_secret: str = Field(min_length=32)
    pseudonymisation_key: str = Field(min_length=32)
    # seals raw messages at rest (`shared.sealed`); a file from before it existed gets one added
    raw_store_key: str = Field(default="", description="32 random bytes, URL-safe base64")
    webhook_secrets: dict[str, str] = Field(description="source name → HMAC key")
    # An alternative to signing: a source may send its key in X-ICC-Api-Key. The value is the key
    # itself or only its digest (`sha256:<hex>`), which is all the server needs to check it.
    api_keys: dict[str, str] = Field(default_factory=dict, description="source name → API key or digest")


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
    with open(path.with_name(path.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if path.exists():
            found = Secrets.model_validate_json(path.read_bytes())
            if found.raw_store_key:
                return found
            completed = found.model_copy(update={"raw_store_key": new_key()})
            _write(path, completed, replace=True)
            return completed
        created = generate()
        _write(path, created, replace=False)
        return created


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
