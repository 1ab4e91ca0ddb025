"""Patient identifiers at the edge: check an NHS number, then keep only its keyed pseudonym."""

from __future__ import annotations

import uuid

from shared.events import name_based_id
from shared.pseudonymise import IdKind, keyed_mac, normalise, pseudonymise


def nhs_number_valid(value: str) -> bool:
    """Ten digits whose last is the modulus-11 check digit of the first nine (NHS Data Dictionary)."""
    digits = normalise(value)
    if len(digits) != 10 or not digits.isdigit():
        return False
    total = sum(int(d) * w for d, w in zip(digits[:9], range(10, 1, -1), strict=True))
    check = 11 - total % 11
    if check == 11:
        check = 0
    return check != 10 and check == int(digits[9])


def patient_pseudonym(key: str, *, nhs_number: str | None, mrn: str | None, mrn_issuer: str) -> str | None:
    """The NHS number's pseudonym when there is one (it follows a patient across trusts), else the MRN's."""
    if nhs_number:
        return pseudonymise(key, IdKind.nhs_number, nhs_number)
    if mrn:
        return pseudonymise(key, IdKind.mrn, mrn, issuer=mrn_issuer)
    return None


def content_event_id(key: str, namespace: uuid.UUID, content: str) -> uuid.UUID:
    """An event id derived from a message's content, so a re-sent message is recognised.

    Keyed like the pseudonyms: the content may hold an NHS number, and a plain hash of it would be
    published in the event id.
    """
    return name_based_id(namespace, keyed_mac(key, content.encode()).hex())
