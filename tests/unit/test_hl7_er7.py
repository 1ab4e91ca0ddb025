"""ER7 text → typed ADT message: encodings, separators, delimiters, escapes, batches, header checks, times."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from datetime import UTC, datetime

import hl7
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.ingest.hl7_ack import build_ack
from services.ingest.hl7_er7 import (
    AckCode,
    ErrorCode,
    ErrorLocation,
    Hl7Error,
    PatientLocation,
    _parse,
    _Segment,
    decode,
    project,
    read_message,
    split_body,
)
from services.ingest.hl7_er7 import parse_ts as _parse_ts
from tests.hl7_samples import MRN, NHS_NUMBER, SURNAME, VISIT, adt, batch, evn, msh, npu, pid, pv1, pv2

pytestmark = pytest.mark.unit

A01 = adt("A01")
NOW = datetime(2025, 7, 3, 13, 5, tzinfo=UTC)


def parse_ts(text: str) -> datetime | None:
    return _parse_ts(text, ErrorLocation("EVN", field=2))


def read(text: str) -> object:
    return read_message(split_body(decode(text.encode())).messages[0])


def test_a_typical_a01_reads_into_its_parts() -> None:
    message = read_message(A01.rstrip("\r"))
    assert message.trigger == "A01"
    assert message.header.control_id == "MSG00001"
    assert message.header.version == "2.4"
    assert message.header.sending_facility == "RXN01"
    assert message.recorded_at == datetime(2025, 2, 3, 14, 5, tzinfo=UTC)  # GMT in February
    (visit,) = message.visits
    assert [(i.value, i.type_code, i.authority) for i in visit.identifiers] == [
        (NHS_NUMBER, "NH", "NHS"),
        (MRN, "MR", "RXN01"),
    ]
    assert visit.location == PatientLocation("AMU", "B1", "1", "RXN01")
    assert visit.visit_number == VISIT and visit.visit_authority == "RXN01"
    assert visit.patient_class == "I" and visit.hospital_service == "300"


def test_projection_leaves_out_names_addresses_and_unread_segments() -> None:
    projected = project(A01.rstrip("\r"))
    assert SURNAME not in projected and "IMAGINARY" not in projected
    assert "NK1" not in projected and "ZU1" not in projected and "AL1" not in projected
    assert NHS_NUMBER in projected


@pytest.mark.parametrize("separator", ["\r", "\n", "\r\n"])
def test_cr_lf_and_crlf_separators_read_the_same(separator: str) -> None:
    assert read(adt("A01", sep=separator)) == read(A01)


def test_a_utf8_byte_order_mark_is_ignored() -> None:
    assert read_message(split_body(decode(b"\xef\xbb\xbf" + A01.encode())).messages[0]) == read(A01)


def test_latin1_is_read_when_msh18_declares_it() -> None:
    text = A01.replace("UNICODE UTF-8", "8859/1").replace("AMU^B1^1", "AMU^B1^1^RXN01^^^^^Salle \xe9")
    assert decode(text.encode("latin-1")).startswith("MSH")


def test_bytes_that_are_not_utf8_without_a_declared_charset_are_rejected() -> None:
    with pytest.raises(Hl7Error) as caught:
        decode(A01.replace("UNICODE UTF-8", "").encode() + b"\xff\xfe")
    assert caught.value.ack is AckCode.reject
    assert caught.value.problem.location == ErrorLocation("MSH", field=18)


def test_a_nul_byte_anywhere_is_rejected() -> None:
    # found by the HTTP fuzz test: a NUL in MSH-10 could not be stored and was answered as an outage
    body = A01.replace("|P|2.4", "|\x00SEED|P|2.4", 1).encode()
    with pytest.raises(Hl7Error) as caught:
        decode(body)
    assert caught.value.ack is AckCode.reject
    assert "NUL" in caught.value.problem.message


def test_non_default_delimiters_declared_in_msh1_and_msh2() -> None:
    # field #, component $, repetition *, escape @, sub-component %
    standard = adt("A02", "CTRL9", pid(), pv1("WD10^B2^3^RXN01", prior="AMU^B1^1^RXN01"))
    table = str.maketrans({"|": "#", "^": "$", "~": "*", "\\": "@", "&": "%"})
    unusual = standard.translate(table)
    assert unusual.startswith("MSH#$*@%#PAS")
    assert read(unusual).visits == read(standard).visits  # type: ignore[attr-defined]
    assert read(unusual).header.field_separator == "#"  # type: ignore[attr-defined]


@pytest.mark.parametrize("text", ["MSH|^~\\&", "MSH|^~\\&\rEVN|A01|20250203140500\rPV1||I|AMU"])
def test_an_msh_that_stops_after_msh2_is_rejected_and_answered(text: str) -> None:
    with pytest.raises(Hl7Error) as caught:
        read_message(text)
    assert caught.value.ack is AckCode.reject
    assert caught.value.problem.code is ErrorCode.required_field_missing
    ack = hl7.parse(build_ack(caught.value.header, caught.value.ack, [caught.value.problem], now=NOW))
    assert str(ack.segment("MSA")(1)) == "AR"


def test_escape_sequences_are_resolved() -> None:
    location = "WD\\F\\1^B\\S\\2^3\\T\\4^RX\\R\\N\\E\\01"
    message = read(adt("A08", "E1", pid(), pv1(location, visit="V\\F\\77")))
    visit = message.visits[0]  # type: ignore[attr-defined]
    assert visit.location == PatientLocation("WD|1", "B^2", "3&4", "RX~N\\01")
    assert visit.visit_number == "V|77"


def test_field_repetition_finds_the_nhs_number_wherever_it_is() -> None:
    pid_segment = "PID|1||X999^^^RXN01^PI~K555^^^RXN01^MR~9434765919^^^NHS^NH||NAME^GIVEN"
    visit = read(adt("A08", "R1", pid_segment, pv1())).visits[0]  # type: ignore[attr-defined]
    assert [i.type_code for i in visit.identifiers] == ["PI", "MR", "NH"]


def test_missing_optional_fields_and_a_missing_evn_segment() -> None:
    text = "\r".join([msh("A03", "NOEVN"), "PID|||K1^^^RXN01^MR", "PV1||I|AMU|||||||||||||||||V9"])
    message = read(text)
    assert message.has_evn is False  # type: ignore[attr-defined]
    assert message.trigger == "A03"  # type: ignore[attr-defined]
    assert message.recorded_at is None  # type: ignore[attr-defined]
    visit = message.visits[0]  # type: ignore[attr-defined]
    assert visit.location == PatientLocation("AMU")
    assert visit.prior_location.empty and visit.admitted_at is None and visit.expected_discharge is None


def test_trigger_is_taken_from_evn1_when_msh9_has_none() -> None:
    text = "\r".join(["MSH|^~\\&|PAS|RXN01|ICC|QXN|20250203140500||ADT|OLD1|P|2.3", evn("A08"), pid(), pv1()])
    assert read(text).trigger == "A08"  # type: ignore[attr-defined]


def test_z_segments_and_unknown_segments_are_ignored() -> None:
    with_z = adt("A01", "Z1", "ZPI|1|whatever^x~y", pid(), "ZXX|||", pv1(), "ZPV|free text \\F\\")
    assert read(with_z).visits == read(adt("A01", "Z1", pid(), pv1())).visits  # type: ignore[attr-defined]


def test_pv2_and_pv1_times() -> None:
    text = adt(
        "A05",
        "T1",
        pid(),
        pv1(admitted="20250701093000"),
        pv2(expected_admit="20250702080000+0100", expected_discharge="20250709", arrival_mode="A"),
    )
    visit = read(text).visits[0]  # type: ignore[attr-defined]
    assert visit.admitted_at == datetime(2025, 7, 1, 8, 30, tzinfo=UTC)  # BST
    assert visit.expected_admit_at == datetime(2025, 7, 2, 7, 0, tzinfo=UTC)
    assert str(visit.expected_discharge) == "2025-07-09"
    assert visit.arrival_mode == "A"


def test_a17_reads_two_pid_pv1_pairs_and_a20_reads_npu() -> None:
    swap = adt("A17", "S1", pid(), pv1("AMU^B1^1"), pid("9876543210", "K2"), pv1("AMU^B1^2", visit="V2"))
    assert [v.visit_number for v in read(swap).visits] == [VISIT, "V2"]  # type: ignore[attr-defined]
    bed = read(adt("A20", "B1", npu("AMU^B2^3^RXN01", "H")))
    assert bed.npu_bed == PatientLocation("AMU", "B2", "3", "RXN01")  # type: ignore[attr-defined]
    assert bed.npu_bed_status == "H"  # type: ignore[attr-defined]


# ── batches ─────────────────────────────────────────────────────────────────────────────────


def test_batch_with_file_and_batch_headers_splits_into_messages() -> None:
    body = split_body(batch([adt("A01", "B1"), adt("A02", "B2"), adt("A03", "B3")], file=True))
    assert body.batch and body.file_header and body.batch_header
    assert [m.split("\r")[0].split("|")[9] for m in body.messages] == ["B1", "B2", "B3"]


def test_batch_count_that_does_not_match_is_rejected() -> None:
    with pytest.raises(Hl7Error) as caught:
        split_body(batch([adt("A01", "B1"), adt("A02", "B2")], count=3))
    assert caught.value.problem.location == ErrorLocation("BTS", field=1)


def test_one_message_is_not_a_batch_but_two_msh_in_a_row_are() -> None:
    assert not split_body(A01).batch
    assert split_body(A01 + adt("A02", "X2")).batch


# ── what is refused ─────────────────────────────────────────────────────────────────────────


@pytest.mark.parametrize(
    ("text", "ack", "code", "location"),
    [
        ("", AckCode.reject, ErrorCode.segment_sequence, "MSH"),
        ("hello world", AckCode.reject, ErrorCode.segment_sequence, "MSH"),
        ("PID|1||123", AckCode.reject, ErrorCode.segment_sequence, "PID"),
        ("MSH|^^^^|x", AckCode.reject, ErrorCode.data_type_error, "MSH-2"),
        (adt("A01", version="2.2"), AckCode.reject, ErrorCode.unsupported_version_id, "MSH-12"),
        (adt("A01", version="2.6"), AckCode.reject, ErrorCode.unsupported_version_id, "MSH-12"),
        (A01.replace("|P|2.4", "|T|2.4"), AckCode.reject, ErrorCode.unsupported_processing_id, "MSH-11"),
        (A01.replace("ADT^A01", "ORU^R01"), AckCode.reject, ErrorCode.unsupported_message_type, "MSH-9.1"),
        (A01.replace("ADT^A01", "ADT^A99"), AckCode.reject, ErrorCode.unsupported_event_code, "MSH-9.2"),
        (A01.replace("|MSG00001|", "||"), AckCode.reject, ErrorCode.required_field_missing, "MSH-10"),
        (
            A01.replace("EVN|A01|20250203140500", "EVN|A01|2025-02-03"),
            AckCode.error,
            ErrorCode.data_type_error,
            "EVN-2",
        ),
    ],
)
def test_what_cannot_be_taken_says_why(text: str, ack: AckCode, code: ErrorCode, location: str) -> None:
    with pytest.raises(Hl7Error) as caught:
        read(text)
    assert (caught.value.ack, caught.value.problem.code) == (ack, code)
    assert str(caught.value.problem.location) == location


def test_a_rejected_message_with_a_readable_msh_carries_its_header_for_the_ack() -> None:
    with pytest.raises(Hl7Error) as caught:
        read(adt("A01", "V26", version="2.6"))
    assert caught.value.header is not None and caught.value.header.control_id == "V26"


def _strings(value: object) -> list[str]:
    """Every string a read message (or header) holds, however deep."""
    if isinstance(value, str):
        return [value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return [s for f in dataclasses.fields(value) for s in _strings(getattr(value, f.name))]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in (*_strings(k), *_strings(v))]
    if isinstance(value, tuple | list):
        return [s for item in value for s in _strings(item)]
    return []


@pytest.mark.parametrize(
    ("text", "ack", "location"),
    [
        # MSH is the envelope: refused (AR), as for its other faults
        (A01.replace("|MSG00001|", "|NUL\\X00\\ID|"), AckCode.reject, "MSH-10"),
        (A01.replace("|PAS|RXN01|", "|PAS\\X00\\|RXN01|"), AckCode.reject, "MSH-3"),
        (A01.replace("ADT^A01", "ADT^A\\X00\\01"), AckCode.reject, "MSH-9"),
        (A01.replace("|2.4|", "|2.4\\X0000\\|"), AckCode.reject, "MSH-12"),
        (adt("A01", "N1", pid(), pv1("AMU\\X00\\^B1^1^RXN01")), AckCode.error, "PV1-3"),
        (adt("A01", "N2", pid(mrn="K1\\X4100\\"), pv1()), AckCode.error, "PID-3"),
        (adt("A01", "N3", pid(), pv1(visit="V\\X00\\1")), AckCode.error, "PV1-19"),
        # the second PV1 of an A17 is PV1(2)
        (adt("A17", "N4", pid(), pv1(), pid("1"), pv1("AMU^\\X00\\^2")), AckCode.error, "PV1(2)-3"),
    ],
)
def test_an_escape_for_a_nul_character_in_a_field_read_is_refused_naming_the_field(
    text: str, ack: AckCode, location: str
) -> None:
    # python-hl7 unescapes \X00\ to a NUL, which no PostgreSQL text or JSON value may hold: such a
    # message once failed a whole group commit and was answered "send it again"
    for projected in (True, False):
        with pytest.raises(Hl7Error) as caught:
            read_message(text.rstrip("\r"), project_first=projected)
        assert (caught.value.ack, caught.value.problem.code) == (ack, ErrorCode.data_type_error)
        assert str(caught.value.problem.location) == location
        assert "NUL" in caught.value.problem.message
        # the ACK is addressed as usual, and nothing kept about the refusal holds the NUL
        header = caught.value.header
        assert header is not None and header.field_separator == "|"
        assert not any("\x00" in s for s in _strings(header) + _strings(caught.value.problem))
        ack_text = build_ack(header, caught.value.ack, [caught.value.problem], now=NOW)
        assert "\x00" not in ack_text


def test_the_control_id_of_a_message_refused_for_a_nul_is_echoed_as_sent() -> None:
    with pytest.raises(Hl7Error) as caught:
        read(A01.replace("|MSG00001|", "|NUL\\X00\\ID|"))
    assert caught.value.header is not None and caught.value.header.control_id == "NUL\\X00\\ID"
    ack = hl7.parse(build_ack(caught.value.header, caught.value.ack, [caught.value.problem], now=NOW))
    assert str(ack.segment("MSA")(2)) == "NUL\\X00\\ID"


def test_a_nul_escape_in_a_field_icc_does_not_read_changes_nothing() -> None:
    assert read(adt("A01", "N5", pid(surname="SMITH\\X00\\"), pv1())) == read(adt("A01", "N5", pid(), pv1()))


# ── times ───────────────────────────────────────────────────────────────────────────────────


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("20250203140500", datetime(2025, 2, 3, 14, 5, tzinfo=UTC)),  # GMT
        ("20250703140500", datetime(2025, 7, 3, 13, 5, tzinfo=UTC)),  # BST
        ("20250703140500+0000", datetime(2025, 7, 3, 14, 5, tzinfo=UTC)),  # stated zone wins
        ("20250703140500-0500", datetime(2025, 7, 3, 19, 5, tzinfo=UTC)),
        ("202507031405", datetime(2025, 7, 3, 13, 5, tzinfo=UTC)),
        ("20250703", datetime(2025, 7, 2, 23, 0, tzinfo=UTC)),  # local midnight in BST
        ("20250703140500.25", datetime(2025, 7, 3, 13, 5, 0, 250000, tzinfo=UTC)),
        ("20250703140500^S", datetime(2025, 7, 3, 13, 5, tzinfo=UTC)),  # TS with precision
        ("20251026013000", datetime(2025, 10, 26, 0, 30, tzinfo=UTC)),  # repeated hour: the BST reading
        ("20250330003000", datetime(2025, 3, 30, 0, 30, tzinfo=UTC)),  # just before the spring change
        ("20250330023000", datetime(2025, 3, 30, 1, 30, tzinfo=UTC)),  # just after it
        ("", None),
    ],
)
def test_times_are_read_in_the_stated_zone_or_london(text: str, expected: datetime | None) -> None:
    assert parse_ts(text) == expected


@pytest.mark.parametrize(
    ("sent", "recorded", "occurred", "expected_recorded", "expected_occurred"),
    [
        # MSH-7 without an offset: Europe/London (BST in July)
        ("20250703140500", "20250703140000", "", datetime(2025, 7, 3, 13, 0, tzinfo=UTC), None),
        # a sender stating UTC all year: its times without an offset are UTC, in summer too
        ("20250703140500+0000", "20250703140000", "", datetime(2025, 7, 3, 14, 0, tzinfo=UTC), None),
        ("20250703090500-0500", "20250703090000", "", datetime(2025, 7, 3, 14, 0, tzinfo=UTC), None),
        # a sender on UK time (+0100 in July): London applies, so an event from before the spring
        # change reads as GMT, not at the offset MSH-7 states
        (
            "20250703140500+0100",
            "20250703140000",
            "20250329120000",
            datetime(2025, 7, 3, 13, 0, tzinfo=UTC),
            datetime(2025, 3, 29, 12, 0, tzinfo=UTC),
        ),
        # a time with its own offset keeps it, whatever MSH-7 says
        ("20250703140500+0000", "20250703140000+0100", "", datetime(2025, 7, 3, 13, 0, tzinfo=UTC), None),
    ],
)
def test_times_without_an_offset_are_in_the_zone_the_sender_states_on_msh_7(
    sent: str,
    recorded: str,
    occurred: str,
    expected_recorded: datetime,
    expected_occurred: datetime | None,
) -> None:
    text = "\r".join([msh("A01", sent=sent), evn("A01", recorded, occurred), pid(), pv1()])
    for projected in (True, False):
        message = read_message(text, project_first=projected)
        assert message.recorded_at == expected_recorded
        assert message.event_occurred_at == expected_occurred


def test_a_visit_time_without_an_offset_is_in_the_senders_zone_too() -> None:
    text = "\r".join([msh("A01", sent="20250703140500+0000"), pid(), pv1(admitted="20250703120000")])
    assert read_message(text).visits[0].admitted_at == datetime(2025, 7, 3, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    "text",
    [
        "2025-02-03",
        "20251301",
        "20250230",
        "2025020314050",
        "20250203+2500",
        "x",
        # the ends of the calendar: out of range once read as UTC
        "00010101000000+0100",
        "99991231235959-0100",
        "00010101",
    ],
)
def test_malformed_times_are_content_errors(text: str) -> None:
    with pytest.raises(Hl7Error) as caught:
        parse_ts(text)
    assert caught.value.ack is AckCode.error and caught.value.problem.code is ErrorCode.data_type_error


def test_a_far_future_date_some_systems_send_for_unknown_is_still_read() -> None:
    assert parse_ts("99991231") == datetime(9999, 12, 31, tzinfo=UTC)


# every field read as a time, and where a problem with it is said to be
_TIME_FIELDS = {
    "MSH-7": lambda ts: [msh("A01", sent=ts), evn("A01"), pid(), pv1()],
    "EVN-2": lambda ts: [msh("A01"), evn("A01", ts), pid(), pv1()],
    "EVN-6": lambda ts: [msh("A01"), evn("A01", occurred=ts), pid(), pv1()],
    "PV1-44": lambda ts: [msh("A01"), evn("A01"), pid(), pv1(admitted=ts)],
    "PV1-45": lambda ts: [msh("A03"), evn("A03"), pid(), pv1(discharged=ts)],
    "PV2-8": lambda ts: [msh("A05"), evn("A05"), pid(), pv1(), pv2(expected_admit=ts)],
    "PV2-9": lambda ts: [msh("A05"), evn("A05"), pid(), pv1(), pv2(expected_discharge=ts)],
}
_NEAR_THE_ENDS = st.datetimes(max_value=datetime(1, 1, 3)) | st.datetimes(min_value=datetime(9999, 12, 29))


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(sorted(_TIME_FIELDS)),
    _NEAR_THE_ENDS | st.datetimes(),
    st.sampled_from([8, 12, 14]),  # digits kept: a date, to the minute, to the second
    st.sampled_from(["", "+0000", "+0100", "-0100", "+1400", "-1200", "+0530", "-0001"]),
)
def test_a_time_anywhere_in_the_calendar_with_any_offset_is_read_or_refused_naming_its_field(
    where: str, when: datetime, digits: int, offset: str
) -> None:
    stamp = f"{when.year:04d}{when:%m%d%H%M%S}"[:digits] + offset
    text = "\r".join(_TIME_FIELDS[where](stamp))
    for projected in (True, False):
        try:
            read_message(text, project_first=projected)
        except Hl7Error as exc:
            assert (exc.ack, exc.problem.code) == (AckCode.error, ErrorCode.data_type_error)
            assert str(exc.problem.location) == where


def test_projection_cuts_fields_to_the_components_and_repetitions_read() -> None:
    identifiers = "9434765919^^^NHS^NH^^20200101^^RXN01~K123456^^^RXN01^MR^RXN01~X7^^^OLD^PI^^2010^2015"
    text = "\r".join(
        [
            msh("A02", "CUT1"),
            evn("A02"),
            f"PID|1||{identifiers}||SURNAME^GIVEN",
            "PV1|1|I^X|WD10^B2^3^RXN01^^N^MAIN^2^Ward 10~OLD^1|||AMU^B1^1^RXN01^^N^MAIN^0^AMU|||"
            "|300^General Medicine^L|||||||||V0001234^^^RXN01^VN^RXN01^20250203"
            "|||||||||||||||||||||||||20250203140000^M",
        ]
    )
    projected = project(text).split("\r")
    assert projected[2] == "PID|9434765919^^^NHS^NH~K123456^^^RXN01^MR~X7^^^OLD^PI"
    assert projected[3] == "PV1|I|WD10^B2^3^RXN01|AMU^B1^1^RXN01|300||V0001234^^^RXN01||20250203140000"
    assert read_message(text) == read_message(text, project_first=False)


# ── the faster path agrees with python-hl7 on the whole message ─────────────────────────────

_DELIMITERS = st.sampled_from(["|^~\\&", "#$*@%", "|^~\\&", "!:;?/"])
_TEXT = st.text(alphabet="ABCXYZ019 .-", max_size=6)
_ESCAPES = ("\\F\\", "\\S\\", "\\T\\", "\\R\\", "\\E\\", "\\X41\\")
# and escapes python-hl7 unescapes to a NUL character, which ICC refuses wherever it reads one
_NUL_ESCAPES = ("\\X00\\", "\\X410042\\")


@st.composite
def _component(draw: st.DrawFn, escapes: tuple[str, ...] = _ESCAPES) -> str:
    value = draw(_TEXT)
    if draw(st.booleans()):
        value += draw(st.sampled_from(escapes))
    if draw(st.booleans()):
        value += "&" + draw(_TEXT)
    return value


@st.composite
def _field(draw: st.DrawFn, escapes: tuple[str, ...] = _ESCAPES) -> str:
    reps = draw(st.lists(st.lists(_component(escapes), min_size=1, max_size=5), min_size=0, max_size=3))
    return "~".join("^".join(rep) for rep in reps)


@st.composite
def _segment(draw: st.DrawFn, name: str) -> str:
    fields = draw(st.lists(_field(_ESCAPES + _NUL_ESCAPES), min_size=0, max_size=50))
    return "|".join([name, *fields])


@st.composite
def _messages(draw: st.DrawFn) -> str:
    trigger = draw(st.sampled_from(["A01", "A02", "A03", "A08", "A17", "A20"]))
    names = draw(
        st.lists(st.sampled_from(["PID", "PV1", "PV2", "NPU", "ZPI", "NK1", "AL1", "OBX"]), max_size=8)
    )
    control_id = draw(st.text(alphabet="ABC123", min_size=1, max_size=8))
    segments = [msh(trigger, control_id + draw(st.sampled_from(["", "", "", "\\X00\\"])))]
    if draw(st.booleans()):
        segments.append(evn(trigger))
    segments += [draw(_segment(name)) for name in names]
    text = "\r".join(segments)
    delimiters = draw(_DELIMITERS)
    return text.translate(str.maketrans(dict(zip("|^~\\&", delimiters, strict=True))))


def _outcome(text: str, projected: bool) -> object:
    try:
        return read_message(text, project_first=projected)
    except Hl7Error as exc:
        return (exc.ack, exc.problem)


@settings(max_examples=300, deadline=None)
@given(_messages())
def test_projected_parse_agrees_with_a_full_python_hl7_parse(text: str) -> None:
    assert _outcome(text, True) == _outcome(text, False)


@settings(max_examples=300, deadline=None)
@given(_messages())
def test_a_message_reads_into_values_without_a_nul_character_or_is_refused(text: str) -> None:
    # PostgreSQL text and JSON hold no NUL: what is read (or said about a refusal) is stored
    for projected in (True, False):
        try:
            message = read_message(text, project_first=projected)
        except Hl7Error as exc:
            assert not any("\x00" in s for s in _strings(exc.problem) + _strings(exc.header))
        else:
            assert not any("\x00" in s for s in _strings(message))


def _tree(node: object) -> object:
    """A parsed node as python-hl7's class, its separators and escape, and its items, recursively."""
    if isinstance(node, str):
        return node
    assert isinstance(node, hl7.Container)
    cls = next(c for c in type(node).__mro__ if c.__module__ == "hl7.containers")
    return (cls, node.separator, node.esc, node.separators, [_tree(item) for item in node])


@settings(max_examples=300, deadline=None)
@given(_messages())
def test_the_parse_tree_is_the_one_python_hl7_builds_by_default(text: str) -> None:
    assert _tree(_parse(text)) == _tree(hl7.parse(text))


def _tree_or_refusal(parse: Callable[[str], object], text: str) -> object:
    try:
        return _tree(parse(text))
    except Exception:  # what matters is that both refuse
        return "refused"


@settings(max_examples=500, deadline=None)
@given(st.text(alphabet="MSHBF|^~\\&#!\r\n ABC12", max_size=60).map(lambda t: "MSH" + t))
def test_any_text_parses_to_python_hl7s_tree_or_is_refused_as_python_hl7_refuses_it(text: str) -> None:
    ours = _tree_or_refusal(_parse, text)
    assert ours == _tree_or_refusal(hl7.parse, text)


@settings(max_examples=300, deadline=None)
@given(st.lists(_field(), min_size=1, max_size=6), st.integers(1, 6), st.integers(1, 3), st.integers(1, 5))
def test_reading_the_tree_agrees_with_python_hl7_extract_field(
    fields: list[str], number: int, repetition: int, component: int
) -> None:
    segment = hl7.parse("MSH|^~\\&|X\rZZZ|" + "|".join(fields)).segment("ZZZ")
    try:
        expected = str(segment.extract_field(1, number, repetition, component, 1)).strip()
    except IndexError:
        expected = ""
    assert _Segment(segment, None).value(number, repetition, component) == expected
