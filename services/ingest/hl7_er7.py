"""HL7 v2 ER7 (pipe-and-hat) messages → typed ADT messages. Pure: no I/O.

python-hl7 does the parsing (delimiters from MSH-1/MSH-2, repetitions, components, escape
sequences). It builds a Python object per field, repetition and component, which costs about
0.5 ms for a typical ADT^A01, so before handing a message over we *project* it: only the segments
the ADT mapping reads are kept, within them only the fields it reads (in a compact layout, trailing
empty ones dropped), and within those only the components and repetitions it reads. Names,
addresses and free text therefore never even enter the parse tree. `read_message(...,
project_first=False)` parses the whole message instead; a property test shows both give the same
`AdtMessage`.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta, timezone, tzinfo
from enum import StrEnum
from functools import lru_cache
from itertools import islice
from typing import Any
from zoneinfo import ZoneInfo

from hl7 import parser as hl7_parser
from hl7.exceptions import HL7Exception
from hl7.util import unescape

LONDON = ZoneInfo("Europe/London")
SUPPORTED_VERSIONS = ("2.3", "2.3.1", "2.4", "2.5", "2.5.1")
ACCEPTED_PROCESSING_IDS = ("P",)
BOM = b"\xef\xbb\xbf"
# MSH-18 values (HL7 table 0211) this interface decodes; anything else must be UTF-8.
CHARSETS = {
    "": "utf-8",
    "UNICODE UTF-8": "utf-8",
    "UNICODE": "utf-8",
    "ASCII": "ascii",
    "8859/1": "latin-1",
    "8859/15": "iso8859-15",
}
# Every standard ADT trigger: those ICC maps to events, and the rest, which are acknowledged
# (they are valid ADT) but change nothing a command centre counts.
MAPPED_TRIGGERS = frozenset(f"A{n:02d}" for n in (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 17, 20, 21, 22))
KNOWN_TRIGGERS = frozenset(f"A{n:02d}" for n in range(1, 63))


class AckCode(StrEnum):
    accept = "AA"
    error = "AE"  # the content is wrong: fix the message before sending it again
    reject = "AR"  # the message could not be taken at all (envelope, type, version, or ICC itself)


class ErrorCode(StrEnum):
    """HL7 table 0357 (message error condition codes); the value is the code, the name the text."""

    segment_sequence = "100"
    required_field_missing = "101"
    data_type_error = "102"
    table_value_not_found = "103"
    unsupported_message_type = "200"
    unsupported_event_code = "201"
    unsupported_processing_id = "202"
    unsupported_version_id = "203"
    internal_error = "207"

    @property
    def text(self) -> str:
        return _ERROR_TEXT[self]


_ERROR_TEXT = {
    ErrorCode.segment_sequence: "Segment sequence error",
    ErrorCode.required_field_missing: "Required field missing",
    ErrorCode.data_type_error: "Data type error",
    ErrorCode.table_value_not_found: "Table value not found",
    ErrorCode.unsupported_message_type: "Unsupported message type",
    ErrorCode.unsupported_event_code: "Unsupported event code",
    ErrorCode.unsupported_processing_id: "Unsupported processing id",
    ErrorCode.unsupported_version_id: "Unsupported version id",
    ErrorCode.internal_error: "Application internal error",
}


@dataclass(frozen=True)
class ErrorLocation:
    segment: str
    sequence: int = 1
    field: int = 0
    component: int = 0

    def __str__(self) -> str:
        text = self.segment if self.sequence == 1 else f"{self.segment}({self.sequence})"
        if self.field:
            text += f"-{self.field}"
        if self.component:
            text += f".{self.component}"
        return text


@dataclass(frozen=True)
class Hl7Problem:
    """What was wrong, in the terms of an HL7 ERR segment."""

    code: ErrorCode
    message: str
    location: ErrorLocation | None = None
    severity: str = "E"  # E error, W warning (HL7 table 0516)


class Hl7Error(Exception):
    """A message ICC answers with AE or AR; `header` (when MSH was readable) addresses the ACK."""

    def __init__(self, ack: AckCode, problem: Hl7Problem, header: MessageHeader | None = None) -> None:
        super().__init__(problem.message)
        self.ack = ack
        self.problem = problem
        self.header = header


def reject(code: ErrorCode, message: str, location: ErrorLocation | None = None) -> Hl7Error:
    return Hl7Error(AckCode.reject, Hl7Problem(code, message, location))


def error(code: ErrorCode, message: str, location: ErrorLocation | None = None) -> Hl7Error:
    return Hl7Error(AckCode.error, Hl7Problem(code, message, location))


# ── text, segments and batches ──────────────────────────────────────────────────────────────


def decode(body: bytes) -> str:
    """Bytes → text: a UTF-8 byte-order mark is dropped; non-UTF-8 needs a charset in MSH-18."""
    if body.startswith(BOM):
        body = body[len(BOM) :]
    nul = body.find(b"\x00")
    if nul >= 0:
        # ER7 is text and has no use for NUL; nothing that holds one could be stored as text either
        raise reject(
            ErrorCode.data_type_error, f"the message contains a NUL byte (byte {nul})", ErrorLocation("MSH")
        )
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError as exc:
        declared = _declared_charset(body)
        codec = CHARSETS.get(declared.upper()) if declared is not None else None
        if codec is None or codec == "utf-8":
            raise reject(
                ErrorCode.data_type_error,
                f"the message is not valid UTF-8 (byte {exc.start}) and MSH-18 declares no supported "
                f"character set ({', '.join(c for c in CHARSETS if c)})",
                ErrorLocation("MSH", field=18),
            ) from exc
        try:
            return body.decode(codec)
        except UnicodeDecodeError as inner:
            raise reject(
                ErrorCode.data_type_error,
                f"the message is not valid {declared} (byte {inner.start})",
                ErrorLocation("MSH", field=18),
            ) from inner


def _declared_charset(body: bytes) -> str | None:
    """MSH-18 as sent, read without knowing the encoding (every byte is a latin-1 character)."""
    for segment in split_segments(body.decode("latin-1")):
        if segment.startswith("MSH") and len(segment) >= 8:
            fields = segment.split(segment[3])  # fields[k] is MSH-(k+1)
            return fields[17].split(segment[4])[0].strip() if len(fields) > 17 else ""
    return None


def split_segments(text: str) -> list[str]:
    """Segments separated by CR (the standard), LF or CRLF; blank lines are dropped."""
    return [s for s in text.replace("\r\n", "\r").replace("\n", "\r").split("\r") if s.strip()]


@dataclass(frozen=True)
class Er7Body:
    """One message, or a batch (`FHS`/`BHS` … `BTS`/`FTS`, or several `MSH` in a row)."""

    messages: tuple[str, ...]
    batch: bool = False
    file_header: str | None = None
    batch_header: str | None = None


def split_body(text: str) -> Er7Body:
    """Split a body into messages (each its segments joined by CR). Batch counts are checked."""
    segments = split_segments(text.lstrip("\ufeff"))
    if not segments:
        raise reject(ErrorCode.segment_sequence, "the body holds no HL7 segments", ErrorLocation("MSH"))
    messages: list[list[str]] = []
    file_header = batch_header = None
    batch_start = 0
    batched = False
    for segment in segments:
        head = segment[:3]
        if head == "FHS":
            file_header = segment
            batched = True
        elif head == "BHS":
            batch_header = batch_header or segment
            batch_start, batched = len(messages), True
        elif head == "BTS":
            declared = _first_field(segment)
            found = len(messages) - batch_start
            if declared.isdigit() and int(declared) != found:
                raise reject(
                    ErrorCode.segment_sequence,
                    f"BTS-1 declares {declared} messages but the batch holds {found}",
                    ErrorLocation("BTS", field=1),
                )
        elif head == "FTS":
            continue
        elif head == "MSH":
            messages.append([segment])
        elif not messages:
            raise reject(
                ErrorCode.segment_sequence,
                f"segment {segment[:3]!r} before the first MSH",
                ErrorLocation(head if _SEGMENT_ID.fullmatch(head) else "MSH"),
            )
        else:
            messages[-1].append(segment)
    if not messages:
        raise reject(ErrorCode.segment_sequence, "no MSH segment", ErrorLocation("MSH"))
    return Er7Body(
        messages=tuple("\r".join(m) for m in messages),
        batch=batched or len(messages) > 1,
        file_header=file_header,
        batch_header=batch_header,
    )


_SEGMENT_ID = re.compile(r"[A-Z][A-Z0-9]{2}")


def _first_field(segment: str) -> str:
    if len(segment) < 5:
        return ""
    return segment[4:].split(segment[3], 1)[0].strip()


def content_sha256(message: str) -> bytes:
    return hashlib.sha256(message.encode("utf-8")).digest()


# ── projection: what python-hl7 is given ────────────────────────────────────────────────────

# The HL7 field numbers the mapping reads, per segment. A projected segment holds just these, in
# this order; MSH is kept whole up to MSH-12.
READ_FIELDS: dict[str, tuple[int, ...]] = {
    "EVN": (1, 2, 6),
    "PID": (3, 30),
    "PV1": (2, 3, 6, 10, 11, 19, 40, 44, 45),
    "PV2": (8, 9, 38),
    "NPU": (1, 2),
}
MSH_FIELDS = 12
_PROJECTED = {name: {n: i for i, n in enumerate(numbers, 1)} for name, numbers in READ_FIELDS.items()}
# Within those fields, how many components are read (one where not listed), and of which
# repetitions: PID-3, the patient's identifiers, in every repetition; any other, in the first.
COMPONENTS_READ: dict[tuple[str, int], int] = {
    ("PID", 3): 5,
    ("PV1", 3): 4,
    ("PV1", 6): 4,
    ("PV1", 11): 4,
    ("PV1", 19): 4,
    ("NPU", 1): 4,
}
EVERY_REPETITION = frozenset({("PID", 3)})
_EXTENTS = {
    name: tuple((COMPONENTS_READ.get((name, n), 1), (name, n) in EVERY_REPETITION) for n in numbers)
    for name, numbers in READ_FIELDS.items()
}


def project(message: str) -> str:
    """The message reduced to MSH and the fields `read_message` looks at, each segment compacted
    (trailing empty fields dropped) and each field cut to the components and repetitions read."""
    segments = message.split("\r")
    msh = segments[0]
    if len(msh) < 4 or not msh.startswith("MSH"):
        return msh
    separator = msh[3]
    components, repetitions = (msh[4], msh[5]) if len(msh) > 5 else ("^", "~")  # MSH-2 as declared
    out = [separator.join(msh.split(separator, MSH_FIELDS)[:MSH_FIELDS])]
    for segment in segments[1:]:
        name = segment[:3]
        numbers = READ_FIELDS.get(name)
        if numbers is None or (len(segment) > 3 and segment[3] != separator):
            continue
        parts = segment.split(separator, numbers[-1] + 1)
        kept = [name]
        for n, (wanted, every) in zip(numbers, _EXTENTS[name], strict=True):
            text = parts[n] if n < len(parts) else ""
            if every:  # worth cutting when the repetitions hold more components than are read
                cut = text.count(components) >= wanted * (text.count(repetitions) + 1)
            else:
                cut = repetitions in text or text.count(components) >= wanted
            kept.append(_cut(text, wanted, every, components, repetitions) if cut else text)
        # a missing field reads as an empty one, and python-hl7 builds a container for each
        out.append(separator.join(kept).rstrip(separator))
    return "\r".join(out)


def _cut(text: str, wanted: int, every: bool, components: str, repetitions: str) -> str:
    """A field without the components (past `wanted`) and repetitions (past the first, unless
    `every`) that nothing reads: python-hl7 would build a container for each. Escape sequences
    hold no delimiters, so cutting at one never splits a sequence."""
    reps = text.split(repetitions) if every else [text.split(repetitions, 1)[0]]
    return repetitions.join([components.join(r.split(components, wanted)[:wanted]) for r in reps])


# a field as plain strings: its repetitions, each its components
_Values = tuple[tuple[str, ...], ...]


class _Segment:
    """Reads one parsed segment by HL7 field number, whichever layout (projected or whole) it has.

    Values come from python-hl7's tree: a field holds either one string or repetitions, a
    repetition strings or components, a component sub-components; escape sequences are resolved
    with python-hl7's `unescape`. A unit test checks this agrees with `Segment.extract_field`.
    Each field is turned into plain strings once, when first read: several values of a message
    come from one field (MSH-9, PV1-19), and the mapping reads every field a projection keeps.
    """

    __slots__ = ("fields", "name", "positions", "read", "segment", "sequence")

    def __init__(self, segment: Any, positions: dict[int, int] | None, name: str | None = None) -> None:
        self.segment = segment
        self.fields = list(segment)  # a plain list: indexing a python-hl7 container runs Python code
        self.positions = positions
        self.name = _text(self.fields[0]) if name is None else name
        self.sequence = 1  # which occurrence of its name in the message, for error locations
        self.read: dict[int, _Values] = {}

    def _field(self, number: int) -> Any:
        index = number if self.positions is None else self.positions.get(number, 0)
        if index <= 0 or index >= len(self.fields):
            return None
        return self.fields[index]

    def _repetitions(self, number: int) -> _Values:
        """Field `number` as its repetitions, each its components (unescaped and stripped)."""
        found = self.read.get(number)
        if found is None:
            field = self._field(number)
            try:
                found = () if field is None else _plain(field, self.segment)
            except _NulCharacter:
                found = self._refuse_a_nul_read(number, _plain(field, self.segment, strict=False))
            self.read[number] = found
        return found

    def _refuse_a_nul_read(self, number: int, values: _Values) -> _Values:
        """Field `number` holds a NUL character once unescaped: refused if it is in a value read (in
        the components and repetitions a projection keeps, so both layouts agree; MSH is kept whole),
        else `values`, as nothing reads where it is."""
        if self.name == "MSH":
            wanted: int | None = None
            every = True
        else:
            wanted = COMPONENTS_READ.get((self.name, number), 1)
            every = (self.name, number) in EVERY_REPETITION
        for rep in values if every else values[:1]:
            if any("\x00" in value for value in rep[:wanted]):
                where = ErrorLocation(self.name, self.sequence, number)
                # MSH is the envelope: AR, as for its other faults; elsewhere the content is wrong (AE)
                refuse = reject if self.name == "MSH" else error
                raise refuse(
                    ErrorCode.data_type_error,
                    f"{where}: an escape sequence in it stands for a NUL character (hex 00), which ICC "
                    "cannot store",
                    where,
                )
        return values

    def repetitions(self, number: int) -> int:
        return len(self._repetitions(number))

    def components(self, number: int, repetition: int = 1) -> list[str]:
        """The components of one repetition (first sub-component of each), unescaped and stripped."""
        reps = self._repetitions(number)
        return list(reps[repetition - 1]) if repetition <= len(reps) else []

    def value(self, number: int, repetition: int = 1, component: int = 1) -> str:
        reps = self._repetitions(number)
        if repetition > len(reps):
            return ""
        parts = reps[repetition - 1]
        return parts[component - 1] if component <= len(parts) else ""

    def location(self, number: int) -> PatientLocation:
        parts = [*self.components(number), "", "", "", ""]
        return PatientLocation(point_of_care=parts[0], room=parts[1], bed=parts[2], facility=parts[3])

    def time(self, number: int, sequence: int = 1, zone: tzinfo = LONDON) -> datetime | None:
        """A DTM/TS field as an aware UTC datetime (see `parse_ts`); empty → None."""
        text = self.value(number)
        if not text:
            return None
        try:
            return _utc_time(text, zone)
        except _BadTimestamp:  # said again by parse_ts, with where
            return parse_ts(text, ErrorLocation(self.name, sequence, number), zone)


def _text(node: Any) -> str:
    """A parsed node as its text, still escaped (`str(node)`, without the recursion for the usual
    node: a field or component holding one plain string)."""
    if len(node) == 1:
        (only,) = node  # unpacking iterates in C; python-hl7's indexing runs Python code
        if isinstance(only, str):
            return only
    return str(node)


def _plain(field: Any, segment: Any, *, strict: bool = True) -> _Values:
    """A parsed field as plain strings: per repetition, the first sub-component of each component,
    unescaped (python-hl7's `unescape`, for text holding the escape character) and stripped.
    `strict`: a value holding a NUL character raises `_NulCharacter` (see `_unescaped`)."""
    esc = segment.esc
    reps = []
    for rep in field:
        if isinstance(rep, str):
            parts = [rep]
        else:
            parts = [c if isinstance(c, str) else next(iter(c)) for c in rep]
        reps.append(tuple([_unescaped(segment, p, strict) if esc in p else p.strip() for p in parts]))
    return tuple(reps)


class _NulCharacter(ValueError):
    """An unescaped value holds a NUL character: `_Segment` looks at whether it is in a value read."""


def _unescaped(segment: Any, text: str, strict: bool) -> str:
    """python-hl7's `unescape`, stripped, refusing a NUL character (`\\X00\\`): it is the one character
    a PostgreSQL text or JSON value cannot hold (in a UTF-8 database), so a message whose events or
    bookkeeping carried one would fail its whole group commit. An escape is the only way one gets
    here: `decode` refuses a NUL byte, and `\\Xhh\\` gives no surrogates."""
    value: str = unescape(segment, text).strip()
    if strict and "\x00" in value:
        raise _NulCharacter
    return value


# ── the typed message ───────────────────────────────────────────────────────────────────────


@dataclass(frozen=True)
class PatientLocation:
    """HL7 PL: `point of care^room^bed^facility` (facility is an HD; its namespace id is used)."""

    point_of_care: str = ""
    room: str = ""
    bed: str = ""
    facility: str = ""

    @property
    def empty(self) -> bool:
        return not (self.point_of_care or self.room or self.bed or self.facility)


@dataclass(frozen=True)
class Identifier:
    value: str
    type_code: str
    authority: str


@dataclass(frozen=True)
class Visit:
    """One PID (with its PV1/PV2): a patient and their visit. An A17 carries two."""

    identifiers: tuple[Identifier, ...] = ()
    died: bool = False
    patient_class: str = ""
    location: PatientLocation = PatientLocation()
    prior_location: PatientLocation = PatientLocation()
    temporary_location: PatientLocation = PatientLocation()
    hospital_service: str = ""
    visit_number: str = ""
    visit_authority: str = ""
    bed_status: str = ""
    admitted_at: datetime | None = None
    discharged_at: datetime | None = None
    expected_admit_at: datetime | None = None
    expected_discharge: date | None = None
    arrival_mode: str = ""
    has_pid: bool = False
    has_pv1: bool = False
    sequence: int = 1  # which PID/PV1 group this is (1-based), for error locations


@dataclass(frozen=True)
class MessageHeader:
    """MSH: who sent it, what it is, and what an ACK must echo (`raw`: fields as sent, still escaped)."""

    field_separator: str
    encoding_characters: str
    sending_application: str
    sending_facility: str
    receiving_application: str
    receiving_facility: str
    message_type: str
    trigger: str
    control_id: str
    processing_id: str
    version: str
    sent_at: datetime | None = None
    raw: dict[int, str] = field(default_factory=dict, compare=False)
    # what the message's times without an offset are read in (`sender_zone`)
    zone: tzinfo = LONDON


@dataclass(frozen=True)
class AdtMessage:
    header: MessageHeader
    trigger: str
    recorded_at: datetime | None
    event_occurred_at: datetime | None
    visits: tuple[Visit, ...]
    npu_bed: PatientLocation | None = None
    npu_bed_status: str = ""
    has_evn: bool = False


def read_message(message: str, *, project_first: bool = True) -> AdtMessage:
    """Parse one message (segments joined by CR) into an `AdtMessage`.

    Raises Hl7Error saying what is wrong; its `header` is set whenever MSH could be read, so the
    ACK can be addressed to the sender. `project_first=False` hands python-hl7 the whole message.
    """
    check_delimiters(message)
    parsed = _parse(project(message) if project_first else message)
    header = _header(_Segment(parsed[0], None, "MSH"))
    try:
        return _read(parsed, header, project_first)
    except Hl7Error as exc:
        exc.header = header
        raise


def read_header(message: str) -> MessageHeader:
    """MSH alone, validated (for addressing an answer when the rest of the message is unreadable)."""
    check_delimiters(message)
    msh = message.split("\r", 1)[0]
    separator = msh[3]
    parsed = _parse(separator.join(msh.split(separator, MSH_FIELDS)[:MSH_FIELDS]))
    return _header(_Segment(parsed[0], None, "MSH"))


def check_delimiters(message: str) -> None:
    if not message.startswith("MSH") or len(message) < 8:
        raise reject(
            ErrorCode.segment_sequence,
            "the message does not start with an MSH segment",
            ErrorLocation("MSH"),
        )
    separator, encoding = message[3], message[4:8]
    if (
        len(set(separator + encoding)) != 5
        or any(c.isalnum() or c.isspace() for c in separator + encoding)
        or (len(message) > 8 and message[8] not in (separator, "\r"))
    ):
        raise reject(
            ErrorCode.data_type_error,
            "MSH-1 and MSH-2 must declare five distinct delimiter characters, e.g. MSH|^~\\&|",
            ErrorLocation("MSH", field=2),
        )
    if len(message) == 8 or message[8] == "\r":
        # python-hl7 misreads an MSH that stops after MSH-2 (it looks for the end of MSH-2 at a
        # separator that is not there), and such a message has no type, control id or version
        raise reject(
            ErrorCode.required_field_missing,
            "MSH ends after MSH-2: no message type (MSH-9), control id (MSH-10) or version (MSH-12)",
            ErrorLocation("MSH", field=9),
        )


def _without_checks(
    self: list[Any],
    separator: str | None = None,
    sequence: Sequence[Any] = (),
    esc: str = "\\",
    separators: str = "",
    factory: Any = None,
) -> None:
    """`Container.__init__` for a node whose class already holds its separators and escape."""
    list.__init__(self, sequence)


class _Plan(hl7_parser._ParsePlan):  # type: ignore[misc]
    """python-hl7's parse plan, made once per set of delimiters, building the same tree for less.

    `hl7.parse` splits with `_split`, which asks the plan for the next level's plan for every field,
    repetition and component it makes (`_ParsePlan.next` builds a new one each time), and each
    `applies` looks up its place in the separators again. This plan keeps its next level and its
    separators. Its nodes are python-hl7's own classes, subclassed once per level with that level's
    separator, the separators, the escape and the factory as class attributes: every node of a level
    has the same ones, so nothing is stored per node, and `Container.__init__`'s assertion and
    chain of `super().__init__` calls are not repeated some 60 times per projected ADT message.
    Together, a projected message parses about three times faster than with `hl7.parse`. The
    splitting is still python-hl7's own `_split`; property tests check that the tree has
    python-hl7's classes, separators, escape and items, and that any text is refused where
    `hl7.parse` refuses it.
    """

    def __init__(
        self, separator: str, separators: str, containers: list[Any], esc: str, factory: Any
    ) -> None:
        super().__init__(separator, separators, containers, esc, factory)
        self.own_and_deeper = separators[separators.find(separator) :]
        base = containers[0]
        self.make = type(
            base.__name__,
            (base,),
            {
                "__module__": __name__,
                "__init__": _without_checks,
                "separator": separator,
                "separators": separators,
                "esc": esc,
                "factory": factory,
            },
        )
        self.following: _Plan | None = None  # below the last level there is none
        self.followed = False

    def next(self) -> _Plan | None:
        if not self.followed:  # made when first needed, as python-hl7 does (it may refuse then)
            self.following, self.followed = super().next(), True
        return self.following

    def applies(self, text: str) -> bool:
        for separator in self.own_and_deeper:
            if separator in text:
                return True
        return False

    def container(self, data: list[Any]) -> Any:
        return self.make(None, data)


@lru_cache(maxsize=64)
def _plan(head: str) -> _Plan:
    """The plan for messages whose MSH starts with `head` (up to MSH-2: it declares the delimiters)."""
    plan = hl7_parser.create_parse_plan(head)
    return _Plan(plan.separator, plan.separators, plan.containers, plan.esc, plan.factory)


def _parse(text: str) -> Any:
    """`hl7.parse(text)`, with the plan made once per set of delimiters (see `_Plan`)."""
    try:
        text = text.strip()
        end = text.find(text[3], 4)  # the end of MSH-2
        return hl7_parser._split(text, _plan(text[: end + 1] if end >= 0 else text))
    except (HL7Exception, ValueError, IndexError, AssertionError) as exc:
        raise reject(
            ErrorCode.segment_sequence, f"not an HL7 v2 message: {exc}", ErrorLocation("MSH")
        ) from exc


def _header(msh: _Segment) -> MessageHeader:
    """MSH, validated: message type, trigger, control id, processing id, version."""
    raw = {}
    unstorable: Hl7Error | None = None
    for number in (3, 4, 5, 6, 9, 10, 11, 12):
        field_ = msh._field(number)
        raw[number] = "" if field_ is None else _text(field_)
        try:
            msh._repetitions(number)
        except Hl7Error as exc:
            # a NUL: the answer names the field, and the header keeps it as sent (still escaped),
            # so the ACK is addressed as usual and the refusal can be stored
            unstorable = unstorable or exc
            msh.read[number] = ((raw[number],),)
    problem: Hl7Error | None = None
    zone: tzinfo = LONDON
    try:
        sent_at = msh.time(7)
        if sent_at is not None:
            zone = sender_zone(msh.value(7), sent_at)
    except Hl7Error as exc:
        sent_at, problem = None, exc
    header = MessageHeader(
        field_separator=_text(msh.fields[1]),
        encoding_characters=_text(msh.fields[2]),
        sending_application=msh.value(3),
        sending_facility=msh.value(4),
        receiving_application=msh.value(5),
        receiving_facility=msh.value(6),
        message_type=msh.value(9).upper(),
        trigger=msh.value(9, 1, 2).upper(),
        control_id=msh.value(10),
        processing_id=msh.value(11).upper(),
        version=msh.value(12),
        sent_at=sent_at,
        raw=raw,
        zone=zone,
    )
    if unstorable is not None:
        problem = unstorable
    elif not header.control_id:
        problem = reject(
            ErrorCode.required_field_missing,
            "MSH-10 (message control id) is empty",
            ErrorLocation("MSH", field=10),
        )
    elif header.version not in SUPPORTED_VERSIONS:
        problem = reject(
            ErrorCode.unsupported_version_id,
            f"version {header.version or '(none)'} in MSH-12 is not supported "
            f"({', '.join(SUPPORTED_VERSIONS)})",
            ErrorLocation("MSH", field=12),
        )
    elif header.processing_id not in ACCEPTED_PROCESSING_IDS:
        problem = reject(
            ErrorCode.unsupported_processing_id,
            f"processing id {header.processing_id or '(none)'} in MSH-11 is not accepted: "
            "only production (P) messages change the live picture",
            ErrorLocation("MSH", field=11),
        )
    elif header.message_type != "ADT":
        problem = reject(
            ErrorCode.unsupported_message_type,
            f"message type {header.message_type or '(none)'} in MSH-9 is not accepted here: only ADT",
            ErrorLocation("MSH", field=9, component=1),
        )
    if problem is not None:
        problem.header = header
        raise problem
    return header


def _read(parsed: Any, header: MessageHeader, projected: bool) -> AdtMessage:
    evn: _Segment | None = None
    npu: _Segment | None = None
    groups: list[dict[str, _Segment]] = []
    occurrences: dict[str, int] = {}
    for segment in islice(parsed, 1, None):
        read = _Segment(segment, None)
        name = read.name
        if name not in _PROJECTED:
            continue
        read.sequence = occurrences[name] = occurrences.get(name, 0) + 1
        if projected:
            read.positions = _PROJECTED[name]
        if name == "EVN" and evn is None:
            evn = read
        elif name == "NPU" and npu is None:
            npu = read
        elif name == "PID":
            groups.append({"PID": read})
        elif name in ("PV1", "PV2"):
            if not groups or name in groups[-1]:
                groups.append({})
            groups[-1][name] = read
    trigger = header.trigger or (evn.value(1).upper() if evn is not None else "")
    if not trigger:
        raise reject(
            ErrorCode.required_field_missing,
            "no trigger event in MSH-9.2 or EVN-1",
            ErrorLocation("MSH", field=9, component=2),
        )
    if trigger not in KNOWN_TRIGGERS:
        raise reject(
            ErrorCode.unsupported_event_code,
            f"trigger event {trigger} is not an ADT trigger event (A01–A62)",
            ErrorLocation("MSH", field=9, component=2),
        )
    return AdtMessage(
        header=header,
        trigger=trigger,
        recorded_at=evn.time(2, zone=header.zone) if evn else None,
        event_occurred_at=evn.time(6, zone=header.zone) if evn else None,
        visits=tuple(_visit(group, n, header.zone) for n, group in enumerate(groups, 1)),
        npu_bed=npu.location(1) if npu else None,
        npu_bed_status=npu.value(2).upper() if npu else "",
        has_evn=evn is not None,
    )


def _visit(group: dict[str, _Segment], sequence: int, zone: tzinfo) -> Visit:
    pid, pv1, pv2 = group.get("PID"), group.get("PV1"), group.get("PV2")
    fields: dict[str, Any] = {"sequence": sequence}
    if pid is not None:
        identifiers = []
        for rep in range(1, pid.repetitions(3) + 1):
            parts = [*pid.components(3, rep), "", "", "", "", ""]
            if parts[0]:
                identifiers.append(Identifier(parts[0], parts[4].upper(), parts[3]))
        fields.update(has_pid=True, identifiers=tuple(identifiers), died=pid.value(30).upper() == "Y")
    if pv1 is not None:
        fields.update(
            has_pv1=True,
            patient_class=pv1.value(2).upper(),
            location=pv1.location(3),
            prior_location=pv1.location(6),
            temporary_location=pv1.location(11),
            hospital_service=pv1.value(10),
            visit_number=pv1.value(19),
            visit_authority=pv1.value(19, 1, 4),
            bed_status=pv1.value(40).upper(),
            admitted_at=pv1.time(44, sequence, zone),
            discharged_at=pv1.time(45, sequence, zone),
        )
    if pv2 is not None:
        expected_discharge = pv2.time(9, sequence, zone)
        fields.update(
            expected_admit_at=pv2.time(8, sequence, zone),
            expected_discharge=expected_discharge.astimezone(LONDON).date() if expected_discharge else None,
            arrival_mode=pv2.value(38).upper(),
        )
    return Visit(**fields)


# ── time stamps ─────────────────────────────────────────────────────────────────────────────


def sender_zone(msh7: str, sent_at: datetime) -> tzinfo:
    """The zone a message's times without an offset are read in.

    In HL7 v2 a time without an offset is in the sender's local zone, and a sender states its offset,
    if at all, on MSH-7 (`sent_at` is MSH-7 read). An offset that is London's at that moment (GMT in
    winter, BST in summer) means a sender on UK time: Europe/London applies, so a time on the other
    side of a clock change gets its own offset. Another offset (a PAS whose clock keeps UTC all year,
    say) applies as it is. MSH-7 without an offset: Europe/London.
    """
    match = _DTM.fullmatch(msh7.split("^", 1)[0].strip())
    offset = match.group(8) if match else None
    if not offset:
        return LONDON
    stated = sent_at.astimezone(LONDON).utcoffset()
    sign = -1 if offset[0] == "-" else 1
    fixed = sign * timedelta(hours=int(offset[1:3]), minutes=int(offset[3:5]))
    return LONDON if fixed == stated else timezone(fixed)


# A time is used in London's zone too (a day's figures, an expected discharge date): on the first day
# of the calendar, with London's local mean time (-0:01:15), that would fall before the year 1. The
# end needs no margin (London is on GMT in December), so 99991231, sent for "not known", still reads.
_EARLIEST = datetime(1, 1, 2, tzinfo=UTC)
_DTM = re.compile(r"(\d{4})(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\d{2})?(?:\.(\d{1,4}))?([+-]\d{4})?")


def parse_ts(text: str, where: ErrorLocation, zone: tzinfo = LONDON) -> datetime | None:
    """HL7 DTM `YYYY[MM[DD[HH[MM[SS[.S…]]]]]][±ZZZZ]` → aware UTC datetime; '' → None.

    Without an offset the time is local to `zone` (Europe/London, so BST applies in summer; in the
    repeated autumn hour the first, BST, reading is taken). A TS `time^precision` uses the time.
    """
    if not text:
        return None
    try:
        return _utc_time(text, zone)
    except _BadTimestamp as exc:
        raise error(ErrorCode.data_type_error, f"{where}: {exc.detail}", where) from exc


class _BadTimestamp(ValueError):
    """What is wrong with a time stamp, said without where it was: `parse_ts` adds the location."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


@lru_cache(maxsize=4096)
def _utc_time(text: str, zone: tzinfo) -> datetime:
    """`parse_ts` without the error location, remembered: a feed's messages share their time stamps
    (MSH-7 and EVN-2 are often one value, and a busy PAS sends many messages a second)."""
    stamp = text.split("^", 1)[0].strip()
    match = _DTM.fullmatch(stamp)
    if match is None:
        raise _BadTimestamp(f"{text!r} is not an HL7 date/time (YYYYMMDDHHMMSS±ZZZZ)")
    year, month, day, hour, minute, second, fraction, offset = match.groups()
    try:
        local = datetime(
            int(year),
            int(month or 1),
            int(day or 1),
            int(hour or 0),
            int(minute or 0),
            int(second or 0),
            int((fraction or "0").ljust(6, "0")[:6]),
        )
    except ValueError as exc:
        raise _BadTimestamp(f"{text!r} is not a valid date/time ({exc})") from exc
    try:
        if offset:
            sign = -1 if offset[0] == "-" else 1
            hours, minutes = int(offset[1:3]), int(offset[3:5])
            if hours > 14 or minutes > 59:
                raise _BadTimestamp(f"{offset} is not a UTC offset")
            utc = (local - sign * timedelta(hours=hours, minutes=minutes)).replace(tzinfo=UTC)
        else:
            utc = local.replace(tzinfo=zone).astimezone(UTC)
    except OverflowError as exc:  # past either end of the calendar once read as UTC
        raise _BadTimestamp(f"{text!r} is out of range once read as UTC (years 0001 to 9999)") from exc
    if utc < _EARLIEST:
        raise _BadTimestamp(f"{text!r} is out of range: before 0001-01-02 UTC")
    return utc
