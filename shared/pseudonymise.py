"""Pseudonymisation at the edge: patient and encounter identifiers become keyed HMACs.

The same identifier always gives the same pseudonym under one key (so a patient can be followed
through the system) and nothing in ICC can turn it back. The key lives with the other secrets.
"""

from __future__ import annotations

import hashlib
import hmac
from enum import StrEnum


class IdKind(StrEnum):
    nhs_number = "nhs"
    mrn = "mrn"
    encounter = "enc"
    attendance = "att"
    handover = "amb"


def normalise(value: str) -> str:
    """NHS numbers arrive as `943 476 5919`, `943-476-5919` or `9434765919`: one form for all."""
    text = value.strip().upper()
    if text.isalnum():  # the usual case, and a hot path of batch ingest: nothing to drop
        return text
    return "".join(ch for ch in text if ch.isalnum())


def pseudonymise(key: str, kind: IdKind, value: str, *, issuer: str = "") -> str:
    """`kind:` + 32 hex chars. `issuer` separates MRNs of different hospitals (MRNs are local)."""
    message = f"{kind.value}|{issuer.strip().upper()}|{normalise(value)}".encode()
    # one-shot `hmac.digest` (OpenSSL's HMAC in one call): the same MAC as `hmac.new(...).hexdigest()`
    digest = hmac.digest(key.encode(), message, hashlib.sha256).hex()[:32]
    return f"{kind.value}:{digest}"
