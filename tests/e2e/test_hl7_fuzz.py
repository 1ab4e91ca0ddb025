"""Arbitrary bytes over HTTP and MLLP never crash ingest: every one gets an ACK AR/AE or a 4xx."""

from __future__ import annotations

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from icc.stack import Stack
from shared.secrets_store import Secrets
from tests.hl7_samples import MllpClient, adt, pid, pv1, segments_of, signed_headers

pytestmark = pytest.mark.e2e

SEEDS = [
    adt("A01", "SEED1"),
    adt("A17", "SEED2", pid(), pv1(), pid("1"), pv1(visit="V2")),
    adt("A20", "SEED3"),
]


@st.composite
def bodies(draw: st.DrawFn) -> bytes:
    """Random bytes, or a real message cut, spliced and sprinkled with random bytes (reaching deeper)."""
    if draw(st.booleans()):
        return draw(st.binary(max_size=2000))
    data = bytearray(draw(st.sampled_from(SEEDS)).encode())
    for _ in range(draw(st.integers(1, 8))):
        at = draw(st.integers(0, len(data)))
        action = draw(st.sampled_from(["insert", "delete", "replace"]))
        chunk = draw(st.binary(min_size=1, max_size=8))
        if action == "insert":
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
        assert body.count(b"MSH|^~\\&|PAS|") >= 1
