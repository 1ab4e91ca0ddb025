"""The organisation model: the sample ICB, and errors that name the file and the bad field."""

from __future__ import annotations

import copy
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml

from shared.organisation import Organisation, OrganisationError, Ward, WardType, load_organisation

pytestmark = pytest.mark.unit

SAMPLE_ORG = Path(__file__).resolve().parents[2] / "deploy/org/sample-icb.yaml"


@pytest.fixture(scope="module")
def sample_org() -> Organisation:
    return load_organisation(SAMPLE_ORG)


# --- the sample -------------------------------------------------------------------------------------


def test_sample_is_big_enough(sample_org: Organisation) -> None:
    assert sample_org.system.id == "QXN"
    assert len(sample_org.sites) >= 2
    assert len(sample_org.wards) >= 20
    assert sample_org.bed_count >= 500


def test_sample_bed_count_matches_the_ward_layouts(sample_org: Organisation) -> None:
    raw = yaml.safe_load(SAMPLE_ORG.read_text(encoding="utf-8"))
    expected = sum(
        w.get("bays", 0) * w.get("beds_per_bay", 0) + w.get("side_rooms", 0) + w.get("escalation_beds", 0)
        for s in raw["sites"]
        for w in s["wards"]
    )
    assert sample_org.bed_count == expected
    assert sum(len(w.bed_list) for w in sample_org.wards.values()) == expected


def test_sample_bed_ids_are_unique(sample_org: Organisation) -> None:
    ids = [b.id for w in sample_org.wards.values() for b in w.bed_list]
    assert len(ids) == len(set(ids))
    assert set(ids) == set(sample_org.beds)


def test_sample_ward_pas_codes_unique_per_site(sample_org: Organisation) -> None:
    for site in sample_org.sites:
        codes = Counter(w.pas_code for w in site.wards)
        assert [c for c, n in codes.items() if n > 1] == [], site.id


def test_sample_beds_know_their_ward_and_site(sample_org: Organisation) -> None:
    for site in sample_org.sites:
        for ward in site.wards:
            assert ward.site_id == site.id
            assert sample_org.site_of_ward(ward.id) is site
            for bed in ward.bed_list:
                assert bed.ward_id == ward.id
                assert bed.site_id == site.id
                assert bed.id == f"{ward.id}-{bed.room}-{bed.bed}"


def test_sample_escalation_beds_are_flagged(sample_org: Organisation) -> None:
    amu = sample_org.wards["RXN01-AMU"]
    escalation = [b for b in amu.bed_list if b.escalation]
    assert [b.id for b in escalation] == [f"RXN01-AMU-ESC-{i}" for i in range(1, 5)]
    assert all(b.room == "ESC" for b in escalation)
    for ward in sample_org.wards.values():
        flagged = [b for b in ward.bed_list if b.escalation]
        assert len(flagged) == ward.escalation_beds, ward.id
        assert all(b.room == "ESC" for b in flagged)
        assert not any(b.escalation for b in ward.bed_list if b.room != "ESC")


def test_sample_compact_layout_expands_to_bays_side_rooms_and_escalation(sample_org: Organisation) -> None:
    ccu = sample_org.wards["RXN01-CCU"]  # 1 bay x 6 beds, 2 side rooms
    assert ccu.type is WardType.critical_care
    assert [b.pas_location for b in ccu.bed_list] == [
        "B1^1", "B1^2", "B1^3", "B1^4", "B1^5", "B1^6", "SR1^1", "SR2^1",
    ]  # fmt: skip


def test_explicit_bed_list() -> None:
    ward = Ward.model_validate(
        {
            "id": "X-W",
            "name": "x",
            "pas_code": "W",
            "specialty": "x",
            "type": "paediatric",
            "site_id": "X",
            "beds": [{"room": "R1", "bed": "A"}, {"room": "R1", "bed": "B", "escalation": True}],
        }
    )
    assert [(b.id, b.escalation) for b in ward.bed_list] == [("X-W-R1-A", False), ("X-W-R1-B", True)]


# --- invalid files ----------------------------------------------------------------------------------


def _ward(ward_id: str, pas_code: str, **layout: Any) -> dict[str, Any]:
    return {
        "id": ward_id,
        "name": ward_id,
        "pas_code": pas_code,
        "specialty": "general medicine",
        "type": "general_acute",
        **(layout or {"bays": 1, "beds_per_bay": 2}),
    }


BASE: dict[str, Any] = {
    "system": {"id": "QXT", "name": "Test ICB"},
    "sites": [
        {
            "id": "S1",
            "name": "Site One",
            "pas_facility": "S1",
            "wards": [_ward("S1-A", "A"), _ward("S1-B", "B")],
        },
        {"id": "S2", "name": "Site Two", "pas_facility": "S2", "wards": [_ward("S2-A", "A")]},
    ],
}


def _write(tmp_path: Path, doc: Any, name: str = "org.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return path


def _load_error(path: Path) -> str:
    with pytest.raises(OrganisationError) as err:
        load_organisation(path)
    message = str(err.value)
    assert str(path) in message
    return message


def test_base_document_is_valid(tmp_path: Path) -> None:
    org = load_organisation(_write(tmp_path, BASE))
    assert org.bed_count == 6
    assert org.site_of_ward("S2-A").id == "S2"


def test_unknown_ward_type(tmp_path: Path) -> None:
    doc = copy.deepcopy(BASE)
    doc["sites"][0]["wards"][1]["type"] = "spaceship"
    message = _load_error(_write(tmp_path, doc))
    assert "sites.0.wards.1.type" in message
    assert "general_acute" in message  # says what would have been valid


def test_unknown_field(tmp_path: Path) -> None:
    doc = copy.deepcopy(BASE)
    doc["sites"][0]["wards"][0]["colour"] = "blue"
    message = _load_error(_write(tmp_path, doc))
    assert "sites.0.wards.0.colour" in message


def test_missing_required_field(tmp_path: Path) -> None:
    doc = copy.deepcopy(BASE)
    del doc["sites"][1]["pas_facility"]
    message = _load_error(_write(tmp_path, doc))
    assert "sites.1.pas_facility" in message


def test_bad_code_pattern(tmp_path: Path) -> None:
    doc = copy.deepcopy(BASE)
    doc["sites"][0]["wards"][0]["pas_code"] = "WD 12"
    message = _load_error(_write(tmp_path, doc))
    assert "sites.0.wards.0.pas_code" in message


def test_duplicate_ward_id_across_sites(tmp_path: Path) -> None:
    doc = copy.deepcopy(BASE)
    doc["sites"][1]["wards"][0]["id"] = "S1-A"
    message = _load_error(_write(tmp_path, doc))
    assert "ids used more than once: S1-A" in message


def test_duplicate_ward_id_within_a_site(tmp_path: Path) -> None:
    doc = copy.deepcopy(BASE)
    doc["sites"][0]["wards"][1]["id"] = "S1-A"
    message = _load_error(_write(tmp_path, doc))
    assert "ids used more than once: S1-A" in message


def test_ward_with_no_beds(tmp_path: Path) -> None:
    doc = copy.deepcopy(BASE)
    doc["sites"][0]["wards"][1] = _ward("S1-B", "B", bays=2, beds_per_bay=0)
    message = _load_error(_write(tmp_path, doc))
    assert "sites.0.wards.1" in message
    assert "at least one bed" in message


def test_ward_with_both_bed_list_and_counts(tmp_path: Path) -> None:
    doc = copy.deepcopy(BASE)
    doc["sites"][0]["wards"][0]["beds"] = [{"room": "R1", "bed": "1"}]
    message = _load_error(_write(tmp_path, doc))
    assert "sites.0.wards.0" in message
    assert "not both" in message


def test_site_with_no_wards(tmp_path: Path) -> None:
    doc = copy.deepcopy(BASE)
    doc["sites"][1]["wards"] = []
    message = _load_error(_write(tmp_path, doc))
    assert "sites.1.wards" in message


def test_duplicate_pas_code_in_one_site(tmp_path: Path) -> None:
    doc = copy.deepcopy(BASE)
    doc["sites"][0]["wards"][1]["pas_code"] = "A"
    message = _load_error(_write(tmp_path, doc))
    assert "sites.0" in message
    assert "PAS ward codes used twice: A" in message


def test_same_pas_code_in_different_sites_is_fine(tmp_path: Path) -> None:
    org = load_organisation(_write(tmp_path, BASE))  # S1-A and S2-A are both "A"
    assert org.wards["S1-A"].pas_code == org.wards["S2-A"].pas_code == "A"


def test_duplicate_bed_in_one_ward(tmp_path: Path) -> None:
    doc = copy.deepcopy(BASE)
    doc["sites"][0]["wards"][0] = _ward(
        "S1-A", "A", beds=[{"room": "R1", "bed": "1"}, {"room": "R1", "bed": "1"}]
    )
    message = _load_error(_write(tmp_path, doc))
    assert "ward S1-A: bed R1^1 appears twice" in message


def test_bed_ids_clashing_across_wards_are_reported(tmp_path: Path) -> None:
    # Ward "S1-A" with room "B-B1" and ward "S1-A-B" with bay B1 both expand to bed id "S1-A-B-B1-1".
    doc = copy.deepcopy(BASE)
    doc["sites"][0]["wards"] = [
        _ward("S1-A", "A", beds=[{"room": "B-B1", "bed": "1"}]),
        _ward("S1-A-B", "AB", bays=1, beds_per_bay=1),
    ]
    message = _load_error(_write(tmp_path, doc))
    assert "S1-A-B-B1-1" in message


def test_malformed_yaml(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("system: {id: QXT, name: [unclosed\nsites:\n  - id: S1\n", encoding="utf-8")
    message = _load_error(path)
    assert "cannot read organisation file" in message


def test_missing_file(tmp_path: Path) -> None:
    message = _load_error(tmp_path / "absent.yaml")
    assert "cannot read organisation file" in message


@pytest.mark.parametrize("text", ["", "- just\n- a list\n"], ids=["empty", "list"])
def test_document_that_is_not_a_mapping(tmp_path: Path, text: str) -> None:
    path = tmp_path / "odd.yaml"
    path.write_text(text, encoding="utf-8")
    message = _load_error(path)
    assert "<root>" in message
