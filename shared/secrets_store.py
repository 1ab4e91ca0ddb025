"""Secrets: JWT signing key, per-source webhook keys and the pseudonymisation key.

`icc up` generates a development set in the data folder; production points ICC_SECRETS_FILE at
a file the operator manages. Nothing here is ever committed.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path

from pydantic import BaseModel, Field

DEFAULT_SOURCES = ("pas", "ed", "bedmgmt", "simulator")


class Secrets(BaseModel):
    jwt_secret: str = Field(min_length=32)
    pseudonymisation_key: str = Field(min_length=32)
    webhook_secrets: dict[str, str] = Field(description="source name → HMAC key")
    # An alternative to signing: a source may send its key in X-ICC-Api-Key. The value is the key
    # itself or only its digest (`sha256:<hex>`), which is all the server needs to check it.
    api_keys: dict[str, str] = Field(default_factory=dict, description="source name → API key or digest")


def generate() -> Secrets:
    return Secrets(
        jwt_secret=secrets.token_urlsafe(48),
        pseudonymisation_key=secrets.token_urlsafe(48),
        webhook_secrets={source: secrets.token_urlsafe(32) for source in DEFAULT_SOURCES},
        api_keys={source: secrets.token_urlsafe(32) for source in DEFAULT_SOURCES},
    )


def load_or_create(path: Path) -> Secrets:
    """Read the secrets file, creating a fresh development set (mode 0600) when there is none."""
    if path.exists():
        return Secrets.model_validate_json(path.read_bytes())
    path.parent.mkdir(parents=True, exist_ok=True)
    created = generate()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(created.model_dump(), fh, indent=2)
    return created


def load(path: Path) -> Secrets:
    return Secrets.model_validate_json(path.read_bytes())
