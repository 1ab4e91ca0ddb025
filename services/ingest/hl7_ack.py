"""HL7 original-mode acknowledgements (ACK): MSH + MSA [+ ERR]. Pure: no I/O.

The ACK is written with the sender's own delimiters (MSH-1/MSH-2), so whatever parser the sender
uses reads it. The ERR segment follows the sender's version: v2.3–2.4 put location and code in
ERR-1; v2.5 and later use ERR-2 (location), ERR-3 (code, HL7 table 0357), ERR-4 (severity) and
ERR-8 (the explanation for a person).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from functools import lru_cache

import hl7

from services.ingest.hl7_er7 import (
    LONDON,
    AckCode,
    Er7Body,
    Hl7Problem,
    MessageHeader,
)

CONTENT_TYPE = "x-application/hl7-v2+er7"
DEFAULT_DELIMITERS = ("|", "^~\\&")
APPLICATION = "ICC"
_MSA_TEXT_LIMIT = 80


def ack_control_id() -> str:
    """MSH-10 of an ACK: 20 characters, unique."""
    return "ICC" + uuid.uuid4().hex[:17].upper()


def _timestamp(now: datetime) -> str:
    return _local_second(now.replace(microsecond=0))


@lru_cache(maxsize=64)
def _local_second(second: datetime) -> str:
    """MSH-7 of an ACK, to the second: every ACK sent within one second carries the same text."""
    return second.astimezone(LONDON).strftime("%Y%m%d%H%M%S%z")


class _Writer:
    """Builds segments with one sender's delimiters, escaping text with python-hl7."""

    def __init__(self, field_separator: str, encoding: str) -> None:
        self.fs = field_separator
        self.cs, self.rs, self.esc, self.ss = encoding[0], encoding[1], encoding[2], encoding[3]
        self._container = hl7.Message(esc=self.esc, separators="\r" + self.fs + self.rs + self.cs + self.ss)

    def text(self, value: str) -> str:
        if not value or (value.isascii() and value.isalnum()):
            return value  # delimiters are never letters or digits: nothing to escape (a trigger, say)
        ascii_only = "".join(c if " " <= c <= "~" else "?" for c in value)
        return str(self._container.escape(ascii_only))

    def segment(self, *fields: str) -> str:
        return self.fs.join(fields).rstrip(self.fs)


@lru_cache(maxsize=16)
def _writer(field_separator: str, encoding: str) -> _Writer:
    """One writer per set of delimiters (a PAS keeps its own): it holds no state of a message."""
    return _Writer(field_separator, encoding)


def build_ack(
    header: MessageHeader | None,
    code: AckCode,
    problems: Sequence[Hl7Problem] = (),
    *,
    now: datetime,
    text: str = "",
    control_id: str | None = None,
) -> str:
    """One ACK message, segments separated by CR (with a final CR)."""
    fs, encoding = (header.field_separator, header.encoding_characters) if header else DEFAULT_DELIMITERS
    w = _writer(fs, encoding)
    raw = header.raw if header else {}
    version = header.version if header and header.version in _KNOWN_VERSIONS else "2.5.1"
    trigger = header.trigger if header else ""
    if trigger and version != "2.3":
        message_type = w.cs.join(("ACK", w.text(trigger), "ACK"))
    elif trigger:
        message_type = w.cs.join(("ACK", w.text(trigger)))
    else:
        message_type = "ACK"
    msh = fs.join(
        (
            "MSH",
            encoding,
            APPLICATION,
            raw.get(6, "") or APPLICATION,
            raw.get(3, ""),
            raw.get(4, ""),
            _timestamp(now),
            "",
            message_type,
            control_id or ack_control_id(),
            raw.get(11, "") or "P",
            raw.get(12, "") if header and header.version in _KNOWN_VERSIONS else version,
        )
    )
    summary = text or (problems[0].message if problems else "")
    msa = w.segment("MSA", code.value, raw.get(10, ""), w.text(summary[:_MSA_TEXT_LIMIT]))
    segments = [msh, msa]
    modern = version not in ("2.3", "2.3.1", "2.4")
    # warnings (severity W) need ERR-4, which only v2.5 has; older senders get them in MSA-3 alone
    segments += [_err(w, p, modern=modern) for p in problems if modern or p.severity != "W"]
    return "\r".join(segments) + "\r"


_KNOWN_VERSIONS = ("2.3", "2.3.1", "2.4", "2.5", "2.5.1")


def _err(w: _Writer, problem: Hl7Problem, *, modern: bool) -> str:
    where = problem.location
    if modern:
        location = (
            w.cs.join(
                (
                    where.segment,
                    str(where.sequence),
                    str(where.field) if where.field else "",
                    "1" if where.field else "",
                    str(where.component) if where.component else "",
                )
            ).rstrip(w.cs)
            if where
            else ""
        )
        code = w.cs.join((problem.code.value, w.text(problem.code.text), "HL70357"))
        return w.segment("ERR", "", location, code, problem.severity, "", "", "", w.text(problem.message))
    coded = w.ss.join((problem.code.value, w.text(problem.message), "HL70357"))
    if where is None:
        return w.segment("ERR", w.cs.join(("", "", "", coded)))
    eld = w.cs.join((where.segment, str(where.sequence), str(where.field) if where.field else "", coded))
    return w.segment("ERR", eld)


def build_batch_ack(body: Er7Body, acks: Sequence[str], *, now: datetime) -> str:
    """A batch of ACKs answering a batch: [FHS] BHS, one ACK per message in order, BTS [FTS]."""
    stamp = _timestamp(now)
    lines: list[str] = []
    if body.file_header is not None:
        lines.append(_header_reply("FHS", body.file_header, stamp))
    lines.append(_header_reply("BHS", body.batch_header, stamp))
    for ack in acks:
        lines.extend(s for s in ack.split("\r") if s)
    lines.append(f"BTS|{len(acks)}")
    if body.file_header is not None:
        lines.append("FTS|1")
    return "\r".join(lines) + "\r"


def _header_reply(name: str, original: str | None, stamp: str) -> str:
    """FHS/BHS of the reply: ours, addressed back, naming the original batch's control id (-11)."""
    fs, encoding = DEFAULT_DELIMITERS
    fields: list[str] = []
    if original and len(original) >= 8 and original[3] == fs and original[4:8] == encoding:
        fields = original.split(fs)  # fields[k] is BHS-(k+1)

    def get(number: int) -> str:
        return fields[number - 1] if len(fields) >= number else ""

    return fs.join((name, encoding, APPLICATION, get(6), get(3), get(4), stamp, "", "", "", "", get(11)))
