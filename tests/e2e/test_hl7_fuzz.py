"""Arbitrary bytes over HTTP and MLLP never crash ingest: every one gets an ACK AR/AE or a 4xx.

Besides random bytes and mutated messages, real messages whose read fields hold what ICC must
refuse precisely: escape sequences (`\\X00\\` unescapes to a NUL, which PostgreSQL cannot store) and
time stamps at the ends of the calendar with an offset (out of range once read as UTC).
"""

from __future__ import annotations

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from icc.stack import Stack
from shared.secrets_store import Secrets
from tests.hl7_samples import MllpClient, adt, evn, msh, pid, pv1, segments_of, signed_headers

pytestmark = pytest.mark.e2e

SEEDS = [
    adt("A01", "SEED1"),
    adt("A17", "SEED2", pid(), pv1(), pid("1"), pv1(visit="V2")),
    adt("A20", "SEED3"),
]


ESCAPES = ["\\X00\\", "\\X0000\\", "\\X410042\\", "\\X41\\", "\\F\\", "\\E\\", "\\.br\\", "\\H\\"]
# the first and last days of the calendar, to the day, minute or second, then an offset or none
STAMPS = st.builds(
    str.__add__,
    st.sampled_from(
        ["00010101", "000101010000", "00010101000000", "99991231", "999912312359", "99991231235959"]
    ),
    st.sampled_from(["", "+0000", "+0100", "-0100", "+1400", "-1200"]),
)


@st.composite
def refusable(draw: st.DrawFn) -> bytes:
    """A real message with an escape sequence in a field ICC reads, or an extreme time stamp in one."""
    escape, stamp = draw(st.sampled_from(ESCAPES)), draw(STAMPS)
    messages = [
        adt("A01", f"ESC{escape}1"),
        adt("A01", "ESC2", pid(mrn=f"K{escape}1"), pv1()),
        adt("A02", "ESC3", pid(), pv1(f"WD10{escape}^B1^1^RXN01", prior="AMU^B1^1^RXN01")),
        adt("A01", "ESC4", pid(), pv1(visit=f"V{escape}9")),
        "\r".join([msh("A01", "TS1", sent=stamp), evn("A01"), pid(), pv1()]),
        "\r".join([msh("A01", "TS2"), evn("A01", stamp), pid(), pv1()]),
        "\r".join([msh("A01", "TS3"), evn("A01"), pid(), pv1(admitted=stamp)]),
    ]
    return draw(st.sampled_from(messages)).encode()


@st.composite
def bodies(draw: st.DrawFn) -> bytes:
    """Random bytes, a real message cut, spliced and sprinkled with random bytes (reaching deeper), or
    a real message with something in a field read that must be refused precisely."""
    kind = draw(st.sampled_from(["bytes", "mutated", "refusable"]))
    if kind == "bytes":
        return draw(st.binary(max_size=2000))
    if kind == "refusable":
        return draw(refusable())
    data = bytearray(draw(st.sampled_from(SEEDS)).encode())
    for _ in range(draw(st.integers(1, 8))):
        at = draw(st.integers(0, len(data)))
        action = draw(st.sampled_from(["insert", "delete", "replace", "escape"]))
        chunk = draw(st.binary(min_size=1, max_size=8))
        if action == "escape":
            data[at:at] = draw(st.sampled_from(ESCAPES)).encode()
        elif action == "insert":
            data[at:at] = chunk
        elif action == "delete":
            del data[at : at + len(chunk)]
        else:
            data[at : at + len(chunk)] = chunk
    return bytes(data)


FUZZ = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@FUZZ
@given(body=bodies())
def test_http_never_fails_on_arbitrary_bytes(stack: Stack, test_secrets: Secrets, body: bytes) -> None:
    with httpx.Client(timeout=30) as client:
        response = client.post(
            f"{stack.url_of('ingest')}/v1/pas/hl7v2",
            content=body,
            headers=signed_headers(test_secrets.webhook_secrets["pas"], body),
        )
        assert response.status_code in (200, 400, 422), response.text
        assert response.headers["content-type"] == "x-application/hl7-v2+er7"
        codes = {s[1] for s in segments_of(response.content)["MSA"]}
        if response.status_code == 200:
            assert codes == {"AA"} and b"MSH" in body  # a mutation may leave a valid message
        else:
            assert codes <= {"AA", "AE", "AR"} and codes & {"AE", "AR"}
        assert client.get(f"{stack.url_of('ingest')}/healthz").status_code == 200


@FUZZ
@given(body=bodies())
def test_mllp_never_fails_on_arbitrary_bytes(stack: Stack, body: bytes) -> None:
    address = stack.mllp_address
    assert address is not None
    sentinel = adt("A08", "SENTINEL").encode()
    with MllpClient(address) as client:
        client.send(body, sentinel)
        codes = []
        while True:
            reply = segments_of(client.receive())
            msa = reply["MSA"][0]
            if msa[2:3] == ["SENTINEL"]:
                break
            codes.append(msa[1])
    # at least the frame holding (the tail of) the bytes was answered, and nothing broke the connection
    assert codes and set(codes) <= {"AA", "AE", "AR"}
    if "AA" in codes:
        # a mutation may leave a valid message; the sending application (MSH-3) may be mutated too,
        # since an MLLP sender is known by its address, not by what its messages say
        assert b"MSH" in body
