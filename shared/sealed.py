"""Raw messages at rest: sealed with AES-GCM, opened only to replay them.

Ingest keeps every message as received (`raw_message`) and every refusal (`quarantine`), so that
nothing is lost and a refused message can be run again after a fix. A PAS message carries what the
events never do: names, addresses, dates of birth, NHS numbers in clear. So the stored body is
sealed with a key of its own (`raw_store_key` in the secrets file, apart from the pseudonymisation
key): a database dump or backup holds ciphertext only, and the listing endpoints never return bodies.

A sealed body is `MAGIC`, the key's fingerprint (4 bytes), a random 96-bit nonce, then the
ciphertext with its tag; the magic and fingerprint are authenticated too. Rows written before
sealing (no magic) read back as they are.
"""

from __future__ import annotations

import base64
import hashlib
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

MAGIC = b"ICC\x01"
_NONCE = 12
_HEAD = len(MAGIC) + 4


class SealError(ValueError):
    """A sealed body that this key cannot open (another key, or the bytes were altered)."""


class Sealer:
    def __init__(self, key: str) -> None:
        """`key`: 32 random bytes, URL-safe base64 (as `secrets_store.generate` writes it)."""
        raw = base64.urlsafe_b64decode(key + "=" * (-len(key) % 4))
        if len(raw) != 32:
            raise ValueError("raw_store_key must be 32 bytes, URL-safe base64 encoded")
        self._aead = AESGCM(raw)
        self._head = MAGIC + hashlib.sha256(raw).digest()[:4]

    def seal(self, body: bytes) -> bytes:
        nonce = os.urandom(_NONCE)
        return self._head + nonce + self._aead.encrypt(nonce, body, self._head)

    def open(self, stored: bytes) -> bytes:
        """The body as received. A row from before sealing is returned unchanged."""
        if not stored.startswith(MAGIC):
            return stored
        head = stored[:_HEAD]
        if head != self._head:
            raise SealError("sealed with another raw_store_key (fingerprint differs)")
        nonce = stored[_HEAD : _HEAD + _NONCE]
        try:
            return self._aead.decrypt(nonce, stored[_HEAD + _NONCE :], head)
        except InvalidTag as exc:
            raise SealError("sealed body does not authenticate: altered or truncated") from exc


def new_key() -> str:
    return base64.urlsafe_b64encode(os.urandom(32)).decode().rstrip("=")
