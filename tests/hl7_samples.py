"""Real-world-shaped HL7 v2 ADT messages for the tests, built segment by segment.

Shaped like what English PAS feeds send: NHS number and MRN as PID-3 repetitions (types NH, MR),
PV1-3 `point of care^room^bed^facility`, visit number in PV1-19, Z-segments, names and addresses
(which ICC must never store in an event). Every identifier and name here is fictional.
"""

from __future__ import annotations

import socket
from collections.abc import Sequence

NHS_NUMBER = "9434765919"
MRN = "K123456"
VISIT = "V0001234"
SURNAME = "FICTIONALSURNAME"
ADDRESS = "1 IMAGINARY STREET"
STRUCTURES = {
    "A01": "ADT_A01",
    "A02": "ADT_A02",
    "A03": "ADT_A03",
    "A04": "ADT_A01",
    "A05": "ADT_A05",
    "A06": "ADT_A06",
    "A07": "ADT_A06",
    "A08": "ADT_A01",
    "A09": "ADT_A09",
    "A10": "ADT_A09",
    "A11": "ADT_A09",
    "A12": "ADT_A12",
    "A13": "ADT_A01",
    "A17": "ADT_A17",
    "A20": "ADT_A20",
    "A21": "ADT_A21",
    "A22": "ADT_A21",
}


def msh(
    trigger: str,
    control_id: str = "MSG00001",
    *,
    version: str = "2.4",
    sent: str = "20250203140500",
    sending_facility: str = "RXN01",
    processing: str = "P",
    message_type: str = "ADT",
    charset: str = "UNICODE UTF-8",
) -> str:
    structure = STRUCTURES.get(trigger, "ADT_A01")
    return (
        f"MSH|^~\\&|PAS|{sending_facility}|ICC|QXN|{sent}||{message_type}^{trigger}^{structure}|{control_id}|"
        f"{processing}|{version}|||AL|NE|GBR|{charset}"
    )


def evn(trigger: str, recorded: str = "20250203140500", occurred: str = "") -> str:
    return f"EVN|{trigger}|{recorded}|||C1234567^WHO^DOCTOR|{occurred}".rstrip("|")


def pid(nhs: str = NHS_NUMBER, mrn: str = MRN, *, surname: str = SURNAME, died: bool = False) -> str:
    identifiers = "~".join(
        x for x in (f"{nhs}^^^NHS^NH" if nhs else "", f"{mrn}^^^RXN01^MR" if mrn else "") if x
    )
    fields = [""] * 31
    fields[1] = "1"
    fields[3] = identifiers
    fields[5] = f"{surname}^JOHN^ALAN^^MR"
    fields[7] = "19450212"
    fields[8] = "M"
    fields[11] = f"{ADDRESS}^^NORTHTOWN^^NT1 1AA^GBR^H"
    fields[13] = "01234 567890^PRN^PH"
    fields[30] = "Y" if died else ""
    return "PID" + "|".join(fields).rstrip("|")


def pv1(
    location: str = "AMU^B1^1^RXN01",
    *,
    patient_class: str = "I",
    prior: str = "",
    temporary: str = "",
    service: str = "300",
    visit: str = VISIT,
    bed_status: str = "",
    admitted: str = "",
    discharged: str = "",
) -> str:
    fields = [""] * 46
    fields[1] = "1"
    fields[2] = patient_class
    fields[3] = location
    fields[4] = "21"
    fields[6] = prior
    fields[7] = "C1234567^WHO^DOCTOR^^^DR"
    fields[10] = service
    fields[11] = temporary
    fields[19] = f"{visit}^^^RXN01^VN" if visit else ""
    fields[40] = bed_status
    fields[44] = admitted
    fields[45] = discharged
    return "PV1" + "|".join(fields).rstrip("|")


def pv2(*, expected_admit: str = "", expected_discharge: str = "", arrival_mode: str = "") -> str:
    fields = [""] * 39
    fields[3] = "^Chest pain"
    fields[8] = expected_admit
    fields[9] = expected_discharge
    fields[38] = arrival_mode
    return "PV2" + "|".join(fields).rstrip("|")


def npu(bed: str, status: str) -> str:
    return f"NPU|{bed}|{status}"


def adt(trigger: str, control_id: str = "MSG00001", *body: str, version: str = "2.4", sep: str = "\r") -> str:
    """A whole message: MSH, EVN and the given segments (or a typical PID/PV1 with NK1/AL1/ZU1)."""
    segments = list(body) or [
        pid(),
        "PD1|||NORTHTOWN SURGERY^^B12345|G1234567^JONES^ANNE^^^DR",
        f"NK1|1|{SURNAME}^MARY|SPO|{ADDRESS}^^NORTHTOWN^^NT1 1AA|01234 567890",
        pv1(),
        pv2(),
        "AL1|1|DA|^PENICILLIN",
        "ZU1|Y|LOCAL DATA|NOT FOR ICC",
    ]
    return sep.join([msh(trigger, control_id, version=version), evn(trigger), *segments]) + sep


def batch(messages: Sequence[str], *, file: bool = False, count: int | None = None) -> str:
    lines = []
    if file:
        lines.append("FHS|^~\\&|PAS|RXN01|ICC|QXN|20250203140500||||F001")
    lines.append("BHS|^~\\&|PAS|RXN01|ICC|QXN|20250203140500||||B001")
    lines += [m.rstrip("\r") for m in messages]
    lines.append(f"BTS|{len(messages) if count is None else count}")
    if file:
        lines.append("FTS|1")
    return "\r".join(lines) + "\r"


def mllp_frame(payload: bytes) -> bytes:
    return b"\x0b" + payload + b"\x1c\x0d"


class MllpClient:
    """A blocking MLLP client that keeps what it read past a frame for the next one."""

    def __init__(self, address: tuple[str, int], timeout: float = 30.0) -> None:
        self.sock = socket.create_connection(address, timeout=timeout)
        self.buffer = b""

    def __enter__(self) -> MllpClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def send(self, *payloads: bytes) -> None:
        self.sock.sendall(b"".join(mllp_frame(p) for p in payloads))

    def receive(self) -> bytes:
        while b"\x1c\x0d" not in self.buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"connection closed after {self.buffer!r}")
            self.buffer += chunk
        end = self.buffer.index(b"\x1c\x0d")
        frame, self.buffer = self.buffer[:end], self.buffer[end + 2 :]
        return frame[frame.find(b"\x0b") + 1 :]


def segments_of(ack: str | bytes) -> dict[str, list[list[str]]]:
    """An ACK's segments by name, fields split on `|` (ICC's ACKs to these messages use `|^~\\&`)."""
    text = ack.decode() if isinstance(ack, bytes) else ack
    out: dict[str, list[list[str]]] = {}
    for segment in filter(None, text.replace("\n", "\r").split("\r")):
        fields = segment.split("|")
        out.setdefault(fields[0], []).append(fields)
    return out


def signed_headers(secret: str, body: bytes, source: str = "pas") -> dict[str, str]:
    from shared.auth import SOURCE_HEADER, sign_webhook

    return {"content-type": "x-application/hl7-v2+er7", SOURCE_HEADER: source, **sign_webhook(secret, body)}
