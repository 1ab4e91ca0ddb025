"""The organisation model: system (ICB) → site (hospital) → ward → bed, loaded from YAML.

Ward layouts are written compactly (bays × beds, side rooms, escalation beds) or as explicit bed
lists; both expand into `Bed`s whose PAS codes follow HL7 PV1-3 `point of care^room^bed^facility`.
"""

from __future__ import annotations

from collections.abc import Iterator
from enum import StrEnum
from functools import cached_property
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

_CODE = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"


class WardType(StrEnum):
    general_acute = "general_acute"
    critical_care = "critical_care"
    paediatric = "paediatric"
    assessment = "assessment"


class BedSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    room: str = Field(pattern=_CODE)
    bed: str = Field(pattern=_CODE)
    escalation: bool = False


class Bed(BaseModel):
    model_config = ConfigDict(frozen=True)
    id: str
    ward_id: str
    site_id: str
    room: str
    bed: str
    escalation: bool

    @property
    def pas_location(self) -> str:
        """The HL7 PV1-3 form of this bed without the facility component."""
        return f"{self.room}^{self.bed}"


class Ward(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str = Field(pattern=_CODE)
    name: str
    pas_code: str = Field(pattern=_CODE, description="PV1-3.1 point of care as the PAS sends it")
    specialty: str
    type: WardType
    bays: int = Field(default=0, ge=0, le=50)
    beds_per_bay: int = Field(default=0, ge=0, le=20)
    side_rooms: int = Field(default=0, ge=0, le=100)
    escalation_beds: int = Field(default=0, ge=0, le=50)
    beds: list[BedSpec] = Field(default_factory=list, description="explicit beds, instead of the counts")
    site_id: str = ""

    @model_validator(mode="after")
    def _has_beds(self) -> Ward:
        if self.beds and (self.bays or self.side_rooms or self.escalation_beds):
            raise ValueError(
                "give either an explicit `beds` list or bay/side-room/escalation counts, not both"
            )
        if not self.beds and self.bays * self.beds_per_bay + self.side_rooms + self.escalation_beds == 0:
            raise ValueError("a ward needs at least one bed")
        return self

    def bed_specs(self) -> Iterator[BedSpec]:
        if self.beds:
            yield from self.beds
            return
        for bay in range(1, self.bays + 1):
            for bed in range(1, self.beds_per_bay + 1):
                yield BedSpec(room=f"B{bay}", bed=str(bed))
        for room in range(1, self.side_rooms + 1):
            yield BedSpec(room=f"SR{room}", bed="1")
        for bed in range(1, self.escalation_beds + 1):
            yield BedSpec(room="ESC", bed=str(bed), escalation=True)

    @cached_property
    def bed_list(self) -> list[Bed]:
        beds = [
            Bed(
                id=f"{self.id}-{spec.room}-{spec.bed}",
                ward_id=self.id,
                site_id=self.site_id,
                room=spec.room,
                bed=spec.bed,
                escalation=spec.escalation,
            )
            for spec in self.bed_specs()
        ]
        seen: set[str] = set()
        for bed in beds:
            if bed.id in seen:
                raise ValueError(f"ward {self.id}: bed {bed.room}^{bed.bed} appears twice")
            seen.add(bed.id)
        return beds


class EdConfig(BaseModel):
    """The emergency department's physical capacity, for occupancy metrics."""

    model_config = ConfigDict(extra="forbid")
    majors_resus_spaces: int = Field(default=0, ge=0, le=500, description="majors and resus cubicles")


class Site(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str = Field(pattern=_CODE)
    name: str
    pas_facility: str = Field(pattern=_CODE, description="PV1-3.4 facility as the PAS sends it")
    ed: EdConfig | None = None
    wards: list[Ward] = Field(min_length=1)

    @model_validator(mode="after")
    def _own_wards(self) -> Site:
        for ward in self.wards:
            ward.site_id = self.id
        codes = [w.pas_code for w in self.wards]
        duplicates = sorted({c for c in codes if codes.count(c) > 1})
        if duplicates:
            raise ValueError(f"site {self.id}: PAS ward codes used twice: {', '.join(duplicates)}")
        return self


class System(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str = Field(pattern=_CODE)
    name: str


class Organisation(BaseModel):
    model_config = ConfigDict(extra="forbid")
    system: System
    sites: list[Site] = Field(min_length=1)

    @field_validator("sites")
    @classmethod
    def _unique_ids(cls, sites: list[Site]) -> list[Site]:
        ids: list[str] = [s.id for s in sites] + [w.id for s in sites for w in s.wards]
        duplicates = sorted({i for i in ids if ids.count(i) > 1})
        if duplicates:
            raise ValueError(f"ids used more than once: {', '.join(duplicates)}")
        return sites

    @cached_property
    def wards(self) -> dict[str, Ward]:
        return {w.id: w for s in self.sites for w in s.wards}

    @cached_property
    def sites_by_id(self) -> dict[str, Site]:
        return {s.id: s for s in self.sites}

    @cached_property
    def beds(self) -> dict[str, Bed]:
        beds: dict[str, Bed] = {}
        for ward in self.wards.values():
            for bed in ward.bed_list:
                if bed.id in beds:
                    raise ValueError(
                        f"bed id {bed.id} arises in both ward {beds[bed.id].ward_id} and ward {ward.id}"
                    )
                beds[bed.id] = bed
        return beds

    def site_of_ward(self, ward_id: str) -> Site:
        return self.sites_by_id[self.wards[ward_id].site_id]

    @property
    def bed_count(self) -> int:
        return len(self.beds)


class OrganisationError(ValueError):
    """The organisation file is invalid; the message names the file and the field."""


def load_organisation(path: Path) -> Organisation:
    try:
        raw: Any = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise OrganisationError(f"{path}: cannot read organisation file: {exc}") from exc
    try:
        org = Organisation.model_validate(raw)
        _ = org.beds  # expands layouts, so duplicate beds are reported at load time
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '<root>'}: {err['msg']}" for err in exc.errors()
        )
        raise OrganisationError(f"{path}: {problems}") from exc
    except ValueError as exc:
        raise OrganisationError(f"{path}: {exc}") from exc
    return org
