"""ADT semantics → canonical events: every mapped trigger, locations, sites, identifiers and times."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime
from pathlib import Path

import pytest

from services.ingest.hl7_adt import UNMAPPED_SITE, MappedAdt, map_adt, topic_for
from services.ingest.hl7_er7 import AckCode, ErrorCode, ErrorLocation, Hl7Error, content_sha256, read_message
from shared.events import (
    AdmissionCancelled,
    BedStatus,
    BedStatusChanged,
    DischargeCancelled,
    EdArrived,
    LeaveOfAbsence,
    Location,
    PatientAdmitted,
    PatientDischarged,
    PatientPreadmitted,
    PatientsSwapped,
    PatientTransferred,
    PatientUpdated,
    TemporaryMove,
    TransferCancelled,
)
from shared.location_map import LocationMapper, load_location_map
from shared.organisation import load_organisation
from shared.pseudonymise import IdKind, pseudonymise
from tests.hl7_samples import ADDRESS, MRN, NHS_NUMBER, SURNAME, VISIT, adt, evn, msh, npu, pid, pv1, pv2

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
KEY = secrets.token_urlsafe(40)  # generated per run


@pytest.fixture(scope="module")
def mapper() -> LocationMapper:
    org = load_organisation(ROOT / "deploy/org/sample-icb.yaml")
    return load_location_map(org, ROOT / "deploy/org/location-map.yaml")


def pseudo(kind: IdKind, value: str, issuer: str) -> str:
    return pseudonymise(KEY, kind, value, issuer=issuer)


def mapped(text: str, mapper: LocationMapper, source: str = "pas") -> MappedAdt:
    message = text.replace("\n", "\r").rstrip("\r")
    return map_adt(
        read_message(message),
        source=source,
        content_sha256=content_sha256(message),
        mapper=mapper,
        pseudonymise=pseudo,
    )


ENCOUNTER = pseudonymise(KEY, IdKind.encounter, VISIT, issuer="RXN01")
PATIENT = pseudonymise(KEY, IdKind.nhs_number, NHS_NUMBER)
AMU_B1_1 = Location(ward_id="RXN01-AMU", bed_id="RXN01-AMU-B1-1", pas_code="AMU^B1^1^RXN01")
WD10_B2_3 = Location(ward_id="RXN01-WD10", bed_id="RXN01-WD10-B2-3", pas_code="WD10^B2^3^RXN01")
RECORDED = datetime(2025, 2, 3, 14, 5, tzinfo=UTC)


def only(result: MappedAdt) -> object:
    assert len(result.envelopes) == 1, result.envelopes
    envelope = result.envelopes[0]
    assert envelope.source == "pas" and envelope.site_id == result.site_id
    return envelope.payload


def test_a01_admit(mapper: LocationMapper) -> None:
    result = mapped(adt("A01"), mapper)
    assert only(result) == PatientAdmitted(
        encounter_id=ENCOUNTER, patient_id=PATIENT, location=AMU_B1_1, specialty="300", from_ed=False
    )
    envelope = result.envelopes[0]
    assert (envelope.site_id, envelope.entity_id, envelope.occurred_at) == ("RXN01", ENCOUNTER, RECORDED)
    assert topic_for(envelope).name == "icc.beds.v1"
    assert result.unmapped == () and result.notes == ()


def test_a02_transfer_new_location_pv1_3_prior_pv1_6(mapper: LocationMapper) -> None:
    text = adt("A02", "T1", pid(), pv1("WD10^B2^3^RXN01", prior="AMU^B1^1^RXN01"))
    assert only(mapped(text, mapper)) == PatientTransferred(
        encounter_id=ENCOUNTER, patient_id=PATIENT, location=WD10_B2_3, previous=AMU_B1_1
    )


def test_a03_discharge_and_death(mapper: LocationMapper) -> None:
    assert only(mapped(adt("A03", "D1", pid(), pv1()), mapper)) == PatientDischarged(
        encounter_id=ENCOUNTER, patient_id=PATIENT, location=AMU_B1_1, reason="discharged"
    )
    died = only(mapped(adt("A03", "D2", pid(died=True), pv1()), mapper))
    assert isinstance(died, PatientDischarged) and died.reason == "died"


def test_a04_emergency_registration_is_an_ed_arrival_on_the_edflow_topic(mapper: LocationMapper) -> None:
    text = adt("A04", "R1", pid(), pv1("ED^MAJ^C3^RXN02", patient_class="E"), pv2(arrival_mode="A"))
    result = mapped(text, mapper)
    arrival = only(result)
    assert arrival == EdArrived(attendance_id=ENCOUNTER, patient_id=PATIENT, mode="ambulance")
    assert result.site_id == "RXN02"  # the ED's facility, not the sending facility
    assert topic_for(result.envelopes[0]).name == "icc.edflow.v1"
    assert result.unmapped == ()  # the ED is not a ward: nothing to list


def test_a04_for_an_outpatient_clinic_is_not_an_ed_arrival(mapper: LocationMapper) -> None:
    result = mapped(adt("A04", "R2", pid(), pv1("OPD^^^RXN01", patient_class="O")), mapper)
    assert result.envelopes == () and result.notes == ("registration_not_emergency",)


def test_a05_preadmit(mapper: LocationMapper) -> None:
    text = adt(
        "A05", "P1", pid(), pv1("WD20^^^RXN01", patient_class="P"), pv2(expected_admit="20250710073000")
    )
    assert only(mapped(text, mapper)) == PatientPreadmitted(
        encounter_id=ENCOUNTER,
        patient_id=PATIENT,
        location=Location(ward_id="RXN01-WD20", pas_code="WD20^^^RXN01"),
        expected_admit_at=datetime(2025, 7, 10, 6, 30, tzinfo=UTC),
        specialty="300",
    )


def test_a06_outpatient_or_ed_to_inpatient(mapper: LocationMapper) -> None:
    payload = only(mapped(adt("A06", "O1", pid(), pv1()), mapper))
    assert isinstance(payload, PatientAdmitted) and payload.from_ed is True and payload.location == AMU_B1_1


def test_a07_inpatient_to_outpatient_frees_the_prior_location(mapper: LocationMapper) -> None:
    text = adt("A07", "O2", pid(), pv1("OPD^^^RXN01", patient_class="O", prior="AMU^B1^1^RXN01"))
    assert only(mapped(text, mapper)) == PatientDischarged(
        encounter_id=ENCOUNTER, patient_id=PATIENT, location=AMU_B1_1, reason="changed_to_outpatient"
    )


def test_a08_update(mapper: LocationMapper) -> None:
    text = adt("A08", "U1", pid(), pv1(service="320"), pv2(expected_discharge="20250205"))
    payload = only(mapped(text, mapper))
    assert payload == PatientUpdated(
        encounter_id=ENCOUNTER,
        patient_id=PATIENT,
        location=AMU_B1_1,
        specialty="320",
        expected_discharge=datetime(2025, 2, 5).date(),
    )


@pytest.mark.parametrize(("trigger", "direction"), [("A09", "departed"), ("A10", "arrived")])
def test_a09_a10_temporary_moves(mapper: LocationMapper, trigger: str, direction: str) -> None:
    result = mapped(adt(trigger, "M1", pid(), pv1(temporary="THEATRE1^^^RXN01")), mapper)
    assert only(result) == TemporaryMove(
        encounter_id=ENCOUNTER,
        patient_id=PATIENT,
        direction=direction,  # type: ignore[arg-type]
        temporary_location=Location(pas_code="THEATRE1^^^RXN01"),
    )
    assert result.unmapped == ()  # a theatre is not a census location


def test_a11_cancel_admit(mapper: LocationMapper) -> None:
    assert only(mapped(adt("A11", "C1", pid(), pv1()), mapper)) == AdmissionCancelled(
        encounter_id=ENCOUNTER, patient_id=PATIENT, location=AMU_B1_1
    )


def test_a12_cancel_transfer_goes_back_to_pv1_3(mapper: LocationMapper) -> None:
    text = adt("A12", "C2", pid(), pv1("AMU^B1^1^RXN01", prior="WD10^B2^3^RXN01"))
    assert only(mapped(text, mapper)) == TransferCancelled(
        encounter_id=ENCOUNTER, patient_id=PATIENT, location=AMU_B1_1, cancelled_location=WD10_B2_3
    )


def test_a13_cancel_discharge(mapper: LocationMapper) -> None:
    assert only(mapped(adt("A13", "C3", pid(), pv1()), mapper)) == DischargeCancelled(
        encounter_id=ENCOUNTER, patient_id=PATIENT, location=AMU_B1_1
    )


def test_a17_swap_is_one_event_with_both_sides(mapper: LocationMapper) -> None:
    text = adt(
        "A17",
        "SW1",
        pid(),
        pv1("AMU^B1^2^RXN01"),
        pid("9876543210", "K999"),
        pv1("AMU^B1^1^RXN01", visit="V0009999"),
    )
    payload = only(mapped(text, mapper))
    assert isinstance(payload, PatientsSwapped)
    assert payload.first.encounter_id == ENCOUNTER and payload.first.location.bed_id == "RXN01-AMU-B1-2"
    assert payload.second.encounter_id == pseudonymise(KEY, IdKind.encounter, "V0009999", issuer="RXN01")
    assert payload.second.patient_id == pseudonymise(KEY, IdKind.nhs_number, "9876543210")
    assert payload.second.location == AMU_B1_1


def test_a17_with_one_pair_is_an_error(mapper: LocationMapper) -> None:
    with pytest.raises(Hl7Error) as caught:
        mapped(adt("A17", "SW2", pid(), pv1()), mapper)
    assert caught.value.ack is AckCode.error and caught.value.problem.code is ErrorCode.segment_sequence


@pytest.mark.parametrize("code", ["C", "H", "I", "K", "O", "U"])
def test_a20_bed_status_from_npu(mapper: LocationMapper, code: str) -> None:
    result = mapped(adt("A20", f"B{code}", npu("WD10^B2^3^RXN01", code)), mapper)
    assert only(result) == BedStatusChanged(
        ward_id="RXN01-WD10", bed_id="RXN01-WD10-B2-3", status=BedStatus.from_hl7(code)
    )
    assert result.envelopes[0].entity_id == "RXN01-WD10-B2-3"


def test_a20_bed_status_from_pv1_40_without_npu(mapper: LocationMapper) -> None:
    text = "\r".join([msh("A20", "BP1", version="2.3"), evn("A20"), pv1("WD10^B2^3^RXN01", bed_status="C")])
    payload = only(mapped(text, mapper))
    assert isinstance(payload, BedStatusChanged) and payload.status is BedStatus.closed


def test_a20_status_outside_table_0116_is_an_error_naming_the_field(mapper: LocationMapper) -> None:
    with pytest.raises(Hl7Error) as caught:
        mapped(adt("A20", "BX", npu("WD10^B2^3^RXN01", "Z")), mapper)
    assert caught.value.problem.code is ErrorCode.table_value_not_found
    assert caught.value.problem.location == ErrorLocation("NPU", 1, 2)


def test_a20_for_a_bed_not_in_the_mapping_is_accepted_listed_and_not_guessed(mapper: LocationMapper) -> None:
    result = mapped(adt("A20", "BU", npu("WD10^B9^9^RXN01", "C")), mapper)
    assert result.envelopes == () and "bed_status_unmapped" in result.notes
    assert [(u.kind, u.code, u.site_id) for u in result.unmapped] == [("bed", "WD10^B9^9", "RXN01")]


@pytest.mark.parametrize(("trigger", "state"), [("A21", "started"), ("A22", "ended")])
def test_a21_a22_leave_of_absence(mapper: LocationMapper, trigger: str, state: str) -> None:
    assert only(mapped(adt(trigger, "L1", pid(), pv1()), mapper)) == LeaveOfAbsence(
        encounter_id=ENCOUNTER,
        patient_id=PATIENT,
        state=state,  # type: ignore[arg-type]
        location=AMU_B1_1,
    )


@pytest.mark.parametrize("trigger", ["A28", "A31", "A40", "A60"])
def test_other_adt_triggers_are_accepted_without_events(mapper: LocationMapper, trigger: str) -> None:
    result = mapped(adt(trigger, "N1", pid(), pv1()), mapper)
    assert result.envelopes == () and result.notes == ("trigger_not_mapped",)


# ── locations and sites ─────────────────────────────────────────────────────────────────────


def test_unknown_ward_is_kept_as_sent_flagged_and_the_site_still_known(mapper: LocationMapper) -> None:
    result = mapped(adt("A01", "W1", pid(), pv1("WD99^B1^1^RXN01")), mapper)
    payload = only(result)
    assert isinstance(payload, PatientAdmitted)
    assert payload.location == Location(pas_code="WD99^B1^1^RXN01") and not payload.location.mapped
    assert result.site_id == "RXN01"
    (unmapped,) = result.unmapped
    assert (unmapped.site_id, unmapped.kind, unmapped.code, unmapped.example, unmapped.field) == (
        "RXN01",
        "ward",
        "WD99",
        "WD99^B1^1^RXN01",
        "PV1-3",
    )


def test_known_ward_unknown_bed_keeps_the_ward(mapper: LocationMapper) -> None:
    result = mapped(adt("A01", "W2", pid(), pv1("AMU^B9^9^RXN01")), mapper)
    payload = only(result)
    assert isinstance(payload, PatientAdmitted) and payload.location.ward_id == "RXN01-AMU"
    assert payload.location.bed_id is None
    assert [(u.kind, u.code) for u in result.unmapped] == [("bed", "AMU^B9^9")]


def test_aliases_from_the_location_map_file(mapper: LocationMapper) -> None:
    payload = only(mapped(adt("A01", "W3", pid(), pv1("EAU^B1^1^NGH")), mapper))
    assert isinstance(payload, PatientAdmitted) and payload.location.bed_id == "RXN01-AMU-B1-1"


def test_location_without_facility_takes_the_sending_facility_site(mapper: LocationMapper) -> None:
    result = mapped(adt("A01", "W4", pid(), pv1("MAU^B1^1")).replace("|PAS|RXN01|", "|PAS|RXN02|"), mapper)
    payload = only(result)
    assert isinstance(payload, PatientAdmitted) and payload.location.bed_id == "RXN02-MAU-B1-1"
    assert result.notes == ()


def test_unknown_facility_falls_back_to_the_sending_facility_and_is_counted(mapper: LocationMapper) -> None:
    result = mapped(adt("A01", "W5", pid(), pv1("AMU^B1^1^ZZZ99")), mapper)
    payload = only(result)
    assert isinstance(payload, PatientAdmitted) and not payload.location.mapped  # never guessed
    assert result.site_id == "RXN01" and result.notes == ("site_from_sending_facility",)
    assert [(u.kind, u.code, u.site_id) for u in result.unmapped] == [("facility", "ZZZ99", "RXN01")]


def test_nothing_tells_the_site_keys_by_the_unmapped_site(mapper: LocationMapper) -> None:
    text = adt("A01", "W6", pid(), pv1("AMU^B1^1^ZZZ99")).replace("|PAS|RXN01|", "|PAS|UNKNOWNTRUST|")
    result = mapped(text, mapper)
    assert result.site_id == UNMAPPED_SITE and result.envelopes[0].site_id == UNMAPPED_SITE
    assert result.notes == ("site_unmapped",)
    assert [(u.kind, u.code, u.site_id) for u in result.unmapped] == [("facility", "ZZZ99", None)]


# ── identifiers, data minimisation, ids and times ───────────────────────────────────────────


def test_only_pseudonyms_reach_the_event(mapper: LocationMapper) -> None:
    result = mapped(adt("A01"), mapper)
    raw = result.envelopes[0].to_json().decode()
    for secret_value in (NHS_NUMBER, MRN, VISIT, SURNAME, ADDRESS, "19450212", "JOHN", "PENICILLIN"):
        assert secret_value not in raw


def test_mrn_is_used_when_there_is_no_nhs_number_and_untyped_ids_are_not(mapper: LocationMapper) -> None:
    payload = only(mapped(adt("A01", "I1", pid(nhs=""), pv1()), mapper))
    assert payload.patient_id == pseudonymise(KEY, IdKind.mrn, MRN, issuer="RXN01")  # type: ignore[attr-defined]
    untyped = only(mapped(adt("A01", "I2", "PID|1||12345", pv1()), mapper))
    assert untyped.patient_id is None  # type: ignore[attr-defined]


def test_pseudonyms_depend_on_the_key(mapper: LocationMapper) -> None:
    other = map_adt(
        read_message(adt("A01").rstrip("\r")),
        source="pas",
        content_sha256=b"x",
        mapper=mapper,
        pseudonymise=lambda kind, value, issuer: pseudonymise("another-key", kind, value, issuer=issuer),
    )
    assert other.envelopes[0].entity_id != ENCOUNTER


def test_missing_visit_number_is_an_error_at_pv1_19(mapper: LocationMapper) -> None:
    with pytest.raises(Hl7Error) as caught:
        mapped(adt("A01", "V1", pid(), pv1(visit="")), mapper)
    assert caught.value.ack is AckCode.error
    assert caught.value.problem.location == ErrorLocation("PV1", 1, 19)
    assert caught.value.header is not None and caught.value.header.control_id == "V1"


def test_missing_required_location_is_an_error(mapper: LocationMapper) -> None:
    with pytest.raises(Hl7Error) as caught:
        mapped(adt("A02", "L1", pid(), pv1("")), mapper)
    assert caught.value.problem.location == ErrorLocation("PV1", 1, 3)


def test_event_ids_are_stable_for_the_same_message_and_differ_for_another(mapper: LocationMapper) -> None:
    first, again = mapped(adt("A01"), mapper), mapped(adt("A01"), mapper)
    assert first.envelopes[0].event_id == again.envelopes[0].event_id
    other = mapped(adt("A01").replace("AMU^B1^1", "AMU^B1^2"), mapper)
    assert other.envelopes[0].event_id != first.envelopes[0].event_id
    from_elsewhere = mapped(adt("A01"), mapper, source="pas2")
    assert from_elsewhere.envelopes[0].event_id != first.envelopes[0].event_id


def test_occurred_at_prefers_evn6_then_evn2_then_pv1_44_then_msh7(mapper: LocationMapper) -> None:
    def occurred(*segments: str) -> datetime:
        text = "\r".join([msh("A01", "OC", sent="20250101000000"), *segments])
        return mapped(text, mapper).envelopes[0].occurred_at

    admitted = pv1(admitted="20250601090000")
    assert occurred(evn("A01", "20250601100000", "20250601093000"), pid(), admitted) == datetime(
        2025, 6, 1, 8, 30, tzinfo=UTC
    )
    assert occurred(evn("A01", "20250601100000"), pid(), admitted) == datetime(2025, 6, 1, 9, 0, tzinfo=UTC)
    assert occurred(pid(), admitted) == datetime(2025, 6, 1, 8, 0, tzinfo=UTC)  # no EVN: PV1-44
    assert occurred(pid(), pv1()) == datetime(2025, 1, 1, 0, 0, tzinfo=UTC)  # MSH-7
