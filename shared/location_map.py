"""Maps source locations (HL7 PV1-3 `point of care^room^bed^facility`, FHIR codes) onto wards and beds.

The organisation model already names each ward's PAS code and each site's facility, so most
locations map without configuration. A mapping file adds aliases (old or alternative codes).
A location that does not map is returned unmapped — never guessed — so it can be counted and listed.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from shared.events import Location
from shared.organisation import Organisation


class LocationMapFile(BaseModel):
    """`wards`: facility → {PAS point-of-care code → ward id}; `facilities`: alias → site id."""

    model_config = ConfigDict(extra="forbid")
    facilities: dict[str, str] = Field(default_factory=dict)
    wards: dict[str, dict[str, str]] = Field(default_factory=dict)


class LocationMapError(ValueError):
    pass


class LocationMapper:
    def __init__(self, org: Organisation, extra: LocationMapFile | None = None) -> None:
        self.org = org
        self.facilities: dict[str, str] = {s.pas_facility.upper(): s.id for s in org.sites}
        self.wards: dict[tuple[str, str], str] = {
            (site.id, ward.pas_code.upper()): ward.id for site in org.sites for ward in site.wards
        }
        if extra is not None:
            for alias, site_id in extra.facilities.items():
                if site_id not in org.sites_by_id:
                    raise LocationMapError(f"facilities.{alias}: unknown site {site_id!r}")
                self.facilities[alias.upper()] = site_id
            for facility, codes in extra.wards.items():
                facility_site = self.facilities.get(facility.upper())
                if facility_site is None:
                    raise LocationMapError(f"wards.{facility}: unknown facility")
                for code, ward_id in codes.items():
                    ward = org.wards.get(ward_id)
                    if ward is None or ward.site_id != facility_site:
                        raise LocationMapError(
                            f"wards.{facility}.{code}: {ward_id!r} is not a ward of {facility_site}"
                        )
                    self.wards[(facility_site, code.upper())] = ward_id

    def site_for_facility(self, facility: str) -> str | None:
        return self.facilities.get(facility.strip().upper())

    def map(
        self,
        point_of_care: str,
        room: str = "",
        bed: str = "",
        facility: str = "",
        *,
        default_site: str | None = None,
    ) -> Location:
        """Map one location; the raw form is kept in `pas_code` whatever the outcome."""
        raw = "^".join([point_of_care, room, bed, facility]).rstrip("^")
        site_id = self.site_for_facility(facility) if facility else default_site
        if site_id is None or not point_of_care:
            return Location(pas_code=raw)
        ward_id = self.wards.get((site_id, point_of_care.strip().upper()))
        if ward_id is None:
            return Location(pas_code=raw)
        bed_id = None
        if room and bed:
            candidate = f"{ward_id}-{room.strip()}-{bed.strip()}"
            bed_id = candidate if candidate in self.org.beds else None
            if bed_id is None:
                # the ward is known but its bed is not: keep the ward, flag the location as partly unmapped
                return Location(ward_id=ward_id, bed_id=None, pas_code=raw)
        return Location(ward_id=ward_id, bed_id=bed_id, pas_code=raw)


def load_location_map(org: Organisation, path: Path | None) -> LocationMapper:
    if path is None or not path.exists():
        return LocationMapper(org)
    try:
        extra = LocationMapFile.model_validate(yaml.safe_load(path.read_text(encoding="utf-8")) or {})
        return LocationMapper(org, extra)
    except (yaml.YAMLError, ValidationError, LocationMapError) as exc:
        raise LocationMapError(f"{path}: {exc}") from exc
