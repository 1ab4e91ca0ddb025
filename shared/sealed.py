"""Raw messages at rest: sealed with AES-GCM, opened only to replay them.

Ingest keeps every message as received (`raw_message`) and every refusal (`quarantine`), so that
nothing is lost and a refused message can be run again after a fix. A PAS message carries what the
events never do: names, addresses, dates of birth, NHS numbers in clear. So the stored body is
sealed with a key of its own (`raw_store_key` in the secrets file, apart from the pseudonymisation
key): a database dump or backup holds ciphertext only, and the listing endpoints never return bodies.

A sealed body is `MAGIC`, the sealing key's id (the first 4 bytes of the SHA-256 of the key), a
random 96-bit nonce, then the ciphertext with its tag; the magic and key id are authenticated too.
This has been the format since bodies were first sealed, so every sealed body names its key: a
`Sealer` holds the current key, which seals, and the previous ones, which only open (ADR 0008), and
opens a body with the key its head names, never by trying keys in turn. Rows written before sealing
(no magic) read back as they are.
"""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import Iterable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

MAGIC = b"ICC\x01"
KEY_ID_BYTES = 4
_NONCE = 12
_HEAD = len(MAGIC) + KEY_ID_BYTES


class SealError(ValueError):
    """A sealed body that these keys cannot open (another key, or the bytes were altered)."""


def _raw(key: str) -> bytes:
    raw = base64.urlsafe_b64decode(key + "=" * (-len(key) % 4))
    if len(raw) != 32:
        raise ValueError("raw_store_key must be 32 bytes, URL-safe base64 encoded")
    return raw


def _id_bytes(raw: bytes) -> bytes:
    return hashlib.sha256(raw).digest()[:KEY_ID_BYTES]


def key_id(key: str) -> str:
    """The id a body sealed with `key` carries in its head, as 8 hex digits (shown to operators)."""
    return _id_bytes(_raw(key)).hex()


def sealed_by(stored: bytes) -> str | None:
    """The id of the key a stored body was sealed with; None for a row from before sealing."""
    if not stored.startswith(MAGIC):
        return None
    return stored[len(MAGIC) : _HEAD].hex()


class Sealer:
    def __init__(self, key: str, previous: Iterable[str] = ()) -> None:
        """`key` seals (and opens); each of `previous` only opens what it sealed before a rotation.

        Keys are 32 random bytes, URL-safe base64 (as `new_key` writes them). Two different keys
        with the same id cannot be told apart in a sealed head, so they are refused together.
        """
        raw = _raw(key)
        self._head = MAGIC + _id_bytes(raw)
        self._aead = AESGCM(raw)
        self._opening: dict[bytes, tuple[bytes, AESGCM]] = {}
        for candidate in (raw, *(_raw(k) for k in previous)):
            head = MAGIC + _id_bytes(candidate)
            held = self._opening.get(head)
            if held is not None and held[0] != candidate:
                raise ValueError(f"two raw store keys share the key id {head[len(MAGIC) :].hex()}")
            self._opening[head] = (candidate, AESGCM(candidate))

    @property
    def key_id(self) -> str:
        """The id of the current key, the one `seal` uses."""
        return self._head[len(MAGIC) :].hex()

    @property
    def head(self) -> bytes:
        """The first bytes of every body this sealer seals: what a query can match stored rows by."""
        return self._head

    @property
    def key_ids(self) -> list[str]:
        """Every key this sealer can open with, the current one first."""
        return [head[len(MAGIC) :].hex() for head in self._opening]

    def seal(self, body: bytes) -> bytes:
        nonce = os.urandom(_NONCE)
        return self._head + nonce + self._aead.encrypt(nonce, body, self._head)

    def open(self, stored: bytes) -> bytes:
        """The body as received. A row from before sealing is returned unchanged."""
        if not stored.startswith(MAGIC):
            return stored
        head = stored[:_HEAD]
        held = self._opening.get(head)
        if held is None:
            raise SealError(
                f"sealed with another raw_store_key (key id {head[len(MAGIC) :].hex()}), "
                "not one of the keys held"
            )
        nonce = stored[_HEAD : _HEAD + _NONCE]
        try:
            return held[1].decrypt(nonce, stored[_HEAD + _NONCE :], head)
        except InvalidTag as exc:
            raise SealError("sealed body does not authenticate: altered or truncated") from exc

    def is_current(self, stored: bytes) -> bool:
        """Whether a stored body is already sealed with the current key (a reseal leaves it)."""
        return stored.startswith(self._head)


def new_key() -> str:
    return base64.urlsafe_b64encode(os.urandom(32)).decode().rstrip("=")
