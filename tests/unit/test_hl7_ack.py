"""HL7 ACKs: addressing, version-shaped ERR segments, the sender's delimiters, batches; MLLP framing."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import hl7
import pytest

from services.ingest.hl7_ack import build_ack, build_batch_ack
from services.ingest.hl7_er7 import (
    AckCode,
    ErrorCode,
    ErrorLocation,
    Hl7Problem,
    MessageHeader,
    read_message,
    split_body,
)
from services.ingest.mllp import AllowListError, FrameTooLarge, frames, parse_allow_list, source_for
from tests.hl7_samples import adt, batch

pytestmark = pytest.mark.unit

NOW = datetime(2025, 7, 3, 13, 5, tzinfo=UTC)
MISSING_VISIT = Hl7Problem(
    ErrorCode.required_field_missing, "A01: PV1-19 (visit number) is empty", ErrorLocation("PV1", 1, 19)
)


def header(version: str = "2.4", text: str | None = None) -> MessageHeader:
    return read_message((text or adt("A01", "MSG00001", version=version)).rstrip("\r")).header


def test_accept_is_addressed_back_to_the_sender() -> None:
    ack = hl7.parse(build_ack(header(), AckCode.accept, now=NOW))
    msh = ack.segment("MSH")
    assert str(msh(3)) == "ICC" and str(msh(4)) == "QXN"  # we are the receiving app/facility
    assert str(msh(5)) == "PAS" and str(msh(6)) == "RXN01"
    assert str(msh(7)) == "20250703140500+0100"  # London time, with its offset
    assert str(msh(9)) == "ACK^A01^ACK" and str(msh(11)) == "P" and str(msh(12)) == "2.4"
    assert len(str(msh(10))) == 20
    assert [str(f) for f in ack.segment("MSA")[1:3]] == ["AA", "MSG00001"]
    with pytest.raises(KeyError):
        ack.segment("ERR")


def test_error_in_v2_5_uses_err_2_3_4_and_8() -> None:
    ack = hl7.parse(build_ack(header("2.5.1"), AckCode.error, [MISSING_VISIT], now=NOW))
    err = ack.segment("ERR")
    assert str(ack.segment("MSA")(1)) == "AE"
    assert str(err(2)) == "PV1^1^19^1"
    assert str(err(3)) == "101^Required field missing^HL70357"
    assert str(err(4)) == "E"
    assert ack.unescape(str(err(8))) == MISSING_VISIT.message


def test_error_in_v2_3_and_v2_4_uses_err_1() -> None:
    for version in ("2.3", "2.3.1", "2.4"):
        ack = hl7.parse(build_ack(header(version), AckCode.error, [MISSING_VISIT], now=NOW))
        err = ack.segment("ERR")
        assert str(err(1)(1)(1)) == "PV1" and str(err(1)(1)(3)) == "19"
        assert str(ack["ERR.F1.R1.C4.S1"]) == "101"
        assert len(err) == 2  # ERR-1 only
    assert str(hl7.parse(build_ack(header("2.3"), AckCode.accept, now=NOW)).segment("MSH")(9)) == "ACK^A01"


def test_warnings_appear_as_err_only_where_the_version_has_a_severity() -> None:
    warning = Hl7Problem(ErrorCode.table_value_not_found, "not mapped", ErrorLocation("PV1", 1, 3), "W")
    modern = hl7.parse(build_ack(header("2.5"), AckCode.accept, [warning], now=NOW, text="accepted; 1"))
    assert str(modern.segment("ERR")(4)) == "W" and str(modern.segment("MSA")(1)) == "AA"
    old = hl7.parse(build_ack(header("2.4"), AckCode.accept, [warning], now=NOW, text="accepted; 1"))
    assert str(old.segment("MSA")(3)) == "accepted; 1"
    with pytest.raises(KeyError):
        old.segment("ERR")


def test_ack_uses_the_senders_delimiters_and_escapes_text() -> None:
    table = str.maketrans({"|": "#", "^": "$", "~": "*", "\\": "@", "&": "%"})
    sender = header(text=adt("A01", "X1").translate(table))
    problem = Hl7Problem(ErrorCode.data_type_error, "bad # and $ and @ here", ErrorLocation("PV1", 1, 44))
    text = build_ack(sender, AckCode.error, [problem], now=NOW)
    assert text.startswith("MSH#$*@%#ICC#")
    parsed = hl7.parse(text)
    assert str(parsed.segment("MSA")(1)) == "AE"
    assert parsed.unescape(str(parsed.segment("MSA")(3))) == "bad # and $ and @ here"


def test_ack_without_a_readable_header_still_parses() -> None:
    ack = hl7.parse(
        build_ack(None, AckCode.reject, [Hl7Problem(ErrorCode.segment_sequence, "garbage")], now=NOW)
    )
    assert str(ack.segment("MSA")(1)) == "AR" and str(ack.segment("MSH")(9)) == "ACK"
    assert str(ack.segment("ERR")(3)(1)(1)) == "100"


def test_batch_ack_holds_one_ack_per_message_in_order() -> None:
    body = split_body(batch([adt("A01", "B1"), adt("A02", "B2")], file=True))
    acks = [build_ack(header(), AckCode.accept, now=NOW).replace("MSG00001", f"B{n}") for n in (1, 2)]
    text = build_batch_ack(body, acks, now=NOW)
    parsed = hl7.parse_file(text)
    (reply_batch,) = parsed
    assert [str(m.segment("MSA")(2)) for m in reply_batch] == ["B1", "B2"]
    assert str(reply_batch.header(12)) == "B001"  # names the batch it answers
    assert text.rstrip("\r").endswith("BTS|2\rFTS|1")


# ── MLLP framing and the allow-list ─────────────────────────────────────────────────────────


async def collect(data: bytes, limit: int = 1000) -> list[bytes]:
    reader = asyncio.StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    return [frame async for frame in frames(reader, limit)]


async def test_frames_are_cut_at_the_end_block_and_junk_between_is_skipped() -> None:
    data = b"junk\x0bone\x1c\x0d\r\n\x0btwo\x1c\x0d\x0b\x1c\x0dtrailing"
    assert await collect(data) == [b"one", b"two", b""]


async def test_a_new_start_block_abandons_an_unfinished_frame() -> None:
    assert await collect(b"\x0bhalf a mess\x0bwhole\x1c\x0d") == [b"whole"]


async def test_a_frame_over_the_limit_is_refused() -> None:
    with pytest.raises(FrameTooLarge):
        await collect(b"\x0b" + b"x" * 2000, limit=1000)


def test_allow_list_maps_addresses_and_networks_to_sources() -> None:
    rules = parse_allow_list("127.0.0.1=pas, 10.20.0.0/16=pas-north, 10.20.5.7=pas-special, ::1=pas")
    assert source_for("127.0.0.1", rules) == "pas"
    assert source_for("10.20.9.9", rules) == "pas-north"
    assert source_for("10.20.5.7", rules) == "pas-special"  # the most specific rule wins
    assert source_for("::ffff:127.0.0.1", rules) == "pas"
    assert source_for("::1", rules) == "pas"
    assert source_for("192.0.2.1", rules) is None
    assert source_for("not-an-address", rules) is None
    for bad in ("127.0.0.1", "nonsense=pas", "127.0.0.1="):
        with pytest.raises(AllowListError):
            parse_allow_list(bad)
